"""What a Ray cluster has now and what it can launch: the input of the job's plan.

A :class:`ClusterShape` is a list of node types, each with its resources, the nodes running now and
the most nodes the autoscaler may run. It comes from one of:

* the live cluster (:meth:`ClusterShape.from_ray`): alive nodes from ``ray.nodes()``, plus the
  autoscaler's node types where Ray exposes them, in this order:
  1. the cluster config the autoscaler publishes in the GCS (``ray._private.state.state
     .get_cluster_config()``: ``node_group_configs`` with resources and min/max counts; KubeRay
     and Ray's autoscaler v2 publish it);
  2. the cluster launcher's ``~/ray_bootstrap_config.yaml`` on the head node (where ``ray up``
     puts it and where ``ray job submit`` runs the driver): ``available_node_types`` with their
     ``resources`` and ``max_workers`` (give GPU node types explicit ``resources``, as
     ``cluster.yaml`` does, since the AWS provider fills them only at runtime);
  Without either, the cluster cannot grow and only its current nodes count.
* a description (:meth:`ClusterShape.parse`), for ``--dry-run`` and for clusters whose autoscaler
  Ray does not expose: ``16cpu`` (one node), ``2x16cpu+4gpu`` (two nodes of 4 GPUs),
  ``16cpu,0-8x8cpu+1gpu:24GB`` (a head plus 0 to 8 GPU workers of 24 GB GPUs), or the path of a
  cluster launcher YAML.

GPU memory is read from the ``accelerator_type:*`` resource Ray sets (A10G, A100, H100...) or a
description's ``:NNGB``; otherwise :data:`DEFAULT_GPU_MEMORY` is assumed (and the plan says so).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ClusterSpecError

__all__ = ["NodeType", "ClusterShape", "ClusterSpecError", "DEFAULT_GPU_MEMORY", "BOOTSTRAP_CONFIG"]

GIB = 1 << 30
DEFAULT_GPU_MEMORY = 16 * GIB  # assumed when neither Ray nor the description says
UNLIMITED_NODES = 64  # a node type with no maximum (max_count -1) is planned as this many nodes
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
# GPU memory by Ray's accelerator type (ray.util.accelerators); the smaller variant where two exist.
ACCELERATOR_MEMORY = {
    "H200": 141, "H100": 80, "H20": 96, "A100": 40, "A100-80G": 80, "A100-40G": 40, "A10G": 24, "A10": 24,
    "L40S": 48, "L40": 48, "L4": 24, "T4": 16, "V100": 16, "P100": 16, "K80": 12, "A40": 48, "RTX": 24,
    "B200": 180, "GH200": 96,
}

# GPU memory (GB per GPU) of AWS instance families, for cluster launcher YAMLs that name them.
INSTANCE_GPU_MEMORY = {"g4dn": 16, "g5": 24, "g6": 24, "g6e": 48, "p3": 16, "p3dn": 32, "p4d": 40, "p4de": 80,
                       "p5": 80, "p5e": 141, "p5en": 141}


@dataclass(frozen=True)
class NodeType:
    """Nodes of one shape: resources per node, how many run now, how many may run."""

    name: str
    cpus: float
    gpus: float = 0.0
    gpu_memory: int = 0  # bytes per GPU; 0: unknown
    memory: int = 0  # bytes of RAM Ray may use on the node; 0: unknown
    count: int = 1  # running now
    max_count: int = 1  # the most the autoscaler may run (== count without an autoscaler)

    @property
    def can_grow(self) -> bool:
        return self.max_count > self.count


@dataclass(frozen=True)
class ClusterShape:
    """The node types of a cluster, where they came from, and totals now and at most."""

    node_types: tuple[NodeType, ...]
    source: str  # where the shape was read: "ray", "ray + <autoscaler source>", "described: ..."

    # -- totals ------------------------------------------------------------------------------
    def total(self, resource: str, now: bool) -> float:
        key = "count" if now else "max_count"
        return float(sum(getattr(t, resource) * getattr(t, key) for t in self.node_types))

    @property
    def cpus_now(self) -> float:
        return self.total("cpus", now=True)

    @property
    def cpus_max(self) -> float:
        return self.total("cpus", now=False)

    @property
    def gpus_now(self) -> float:
        return self.total("gpus", now=True)

    @property
    def gpus_max(self) -> float:
        return self.total("gpus", now=False)

    @property
    def nodes_max(self) -> int:
        return sum(t.max_count for t in self.node_types)

    @property
    def autoscaling(self) -> bool:
        return any(t.can_grow for t in self.node_types)

    def gpu_types(self) -> list[NodeType]:
        return [t for t in self.node_types if t.gpus > 0 and t.max_count > 0]

    def gpu_memory(self) -> int:
        """Memory of the smallest GPU the job may get (bytes); DEFAULT_GPU_MEMORY when unknown."""
        known = [t.gpu_memory for t in self.gpu_types() if t.gpu_memory]
        return min(known) if known else DEFAULT_GPU_MEMORY

    def gpu_memory_known(self) -> bool:
        return all(t.gpu_memory for t in self.gpu_types())

    def cpus_per_gpu(self) -> float:
        """CPUs that come with one GPU on the leanest GPU node type."""
        types = self.gpu_types()
        return min(t.cpus / t.gpus for t in types) if types else 0.0

    def smallest_cpu_node(self) -> float:
        sizes = [t.cpus for t in self.node_types if t.max_count > 0 and t.cpus > 0]
        return min(sizes) if sizes else 1.0

    def node_memory(self) -> int:
        """RAM of the smallest node with known memory (bytes), 0 when unknown."""
        sizes = [t.memory for t in self.node_types if t.max_count > 0 and t.memory]
        return min(sizes) if sizes else 0

    # -- text --------------------------------------------------------------------------------
    def describe(self) -> str:
        """'2 nodes now (4 CPU, 0 GPU); can grow to 10 nodes (68 CPU, 8 GPU) [source]'."""
        def node(t: NodeType) -> str:
            count = f"{t.count}" if not t.can_grow else f"{t.count}-{t.max_count}"
            gpu = f"+{t.gpus:g}gpu" + (f":{t.gpu_memory // GIB}GB" if t.gpu_memory else "") if t.gpus else ""
            return f"{count}x{t.cpus:g}cpu{gpu}"
        now = f"{sum(t.count for t in self.node_types)} node(s) now ({self.cpus_now:g} CPU, {self.gpus_now:g} GPU)"
        grow = (f"; can grow to {self.nodes_max} ({self.cpus_max:g} CPU, {self.gpus_max:g} GPU)" if self.autoscaling
                else "; fixed size")
        return f"{now}{grow} [{', '.join(node(t) for t in self.node_types)}; from {self.source}]"

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "node_types": [asdict(t) for t in self.node_types],
                "now": {"cpus": self.cpus_now, "gpus": self.gpus_now},
                "max": {"cpus": self.cpus_max, "gpus": self.gpus_max}}

    # -- sources -----------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> "ClusterShape":
        """A described cluster: ``16cpu,0-8x8cpu+1gpu:24GB`` or the path of a cluster launcher YAML."""
        text = str(text).strip()
        if text.endswith((".yaml", ".yml")):
            path = Path(text).expanduser()
            if not path.is_file():
                raise ClusterSpecError(f"--cluster: no such cluster config '{text}'")
            return cls(tuple(_launcher_types(path, running={})), f"described: {text}")
        types = [_parse_group(part, i) for i, part in enumerate(p for p in text.split(",") if p.strip())]
        if not types:
            raise ClusterSpecError("--cluster is empty; e.g. '16cpu' or '16cpu,0-8x8cpu+1gpu:24GB'")
        return cls(tuple(types), f"described: {text}")

    @classmethod
    def local(cls, device: str = "auto") -> "ClusterShape":
        """This machine as a one-node cluster (the in-process executor): its CPUs, its RAM available
        now, and (unless ``device`` is cpu) the GPUs torch sees."""
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        gpus, gpu_memory = 0, 0
        if device != "cpu":
            import torch

            if torch.cuda.is_available():
                gpus = torch.cuda.device_count()
                gpu_memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(gpus))
        node = NodeType("this machine", float(cpus), float(gpus), gpu_memory, _available_memory(), 1, 1)
        return cls((node,), "this machine (no Ray cluster)")

    @classmethod
    def from_ray(cls) -> "ClusterShape":
        """The connected Ray cluster: its alive nodes, plus what its autoscaler may launch."""
        import ray

        running: dict[tuple, int] = {}
        shapes: dict[tuple, NodeType] = {}
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            res = node.get("Resources", {})
            key = (float(res.get("CPU", 0)), float(res.get("GPU", 0)))
            running[key] = running.get(key, 0) + 1
            shapes.setdefault(key, NodeType(_node_name(res, len(shapes)), key[0], key[1], _gpu_memory(res),
                                            int(res.get("memory", 0)), 0, 0))
        autoscaler, source = _autoscaler_types(running)
        types = []
        for key, shape in shapes.items():
            grow = next((t for t in autoscaler if (t.cpus, t.gpus) == key), None)
            count = running[key]
            max_count = max(count, grow.max_count) if grow else count
            memory = shape.gpu_memory or (grow.gpu_memory if grow else 0)
            types.append(replace(shape, name=grow.name if grow else shape.name, count=count, max_count=max_count,
                                 gpu_memory=memory))
        types += [t for t in autoscaler if (t.cpus, t.gpus) not in shapes and t.max_count > 0]
        return cls(tuple(types), "ray" + (f" + {source}" if source else " (no autoscaler found)"))


def _available_memory() -> int:
    """Bytes of RAM available now (psutil: Linux's MemAvailable, macOS's free + inactive)."""
    import psutil

    return int(psutil.virtual_memory().available)


_GROUP = re.compile(r"^(?:(\d+)(?:-(\d+))?x)?(.+)$")
_RESOURCE = re.compile(r"^(\d+(?:\.\d+)?)(cpus?|gpus?)(?::(\d+(?:\.\d+)?)gb)?$")


def _parse_group(text: str, index: int) -> NodeType:
    spec = text.strip().lower().replace(" ", "")
    match = _GROUP.match(spec)
    low, high, body = match.group(1), match.group(2), match.group(3)
    cpus = gpus = gpu_memory = 0.0
    for item in body.split("+"):
        res = _RESOURCE.match(item)
        if not res:
            raise ClusterSpecError(
                f"--cluster: cannot read '{text.strip()}' (at '{item}'); node groups look like '16cpu', "
                "'2x8cpu+4gpu', '0-8x8cpu+1gpu:24GB' (COUNTx or MIN-MAXx, then CPUs, GPUs and GB per GPU)")
        if res.group(2).startswith("cpu"):
            cpus = float(res.group(1))
        else:
            gpus, gpu_memory = float(res.group(1)), float(res.group(3) or 0)
    count = int(low) if low is not None else 1
    max_count = int(high) if high is not None else count
    if max_count < count:
        raise ClusterSpecError(f"--cluster: '{text.strip()}' has a range {count}-{max_count} that goes down")
    name = "gpu_worker" if gpus else ("head" if index == 0 else f"cpu_worker_{index}")
    return NodeType(name, cpus, gpus, int(gpu_memory * GIB), 0, count, max_count)


def _node_name(resources: dict[str, float], index: int) -> str:
    accelerator = next((k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")), None)
    return accelerator or ("head" if "node:__internal_head__" in resources else f"node_type_{index}")


def _gpu_memory(resources: dict[str, float]) -> int:
    for key in resources:
        if key.startswith("accelerator_type:"):
            name = key.split(":", 1)[1]
            if name in ACCELERATOR_MEMORY:
                return ACCELERATOR_MEMORY[name] * GIB
    return 0


def _autoscaler_types(running: dict[tuple, int]) -> tuple[list[NodeType], str]:
    """The autoscaler's node types (max counts included), and where they were found."""
    try:
        import ray._private.state as state

        config = state.state.get_cluster_config()
    except Exception:  # an older Ray, or a cluster without the GCS entry
        config = None
    if config is not None and config.node_group_configs:
        types = []
        for group in config.node_group_configs:
            res = dict(group.resources)
            max_count = UNLIMITED_NODES if group.max_count == -1 else int(group.max_count)
            types.append(NodeType(group.name, float(res.get("CPU", 0)), float(res.get("GPU", 0)), _gpu_memory(res),
                                  int(res.get("memory", 0)), 0, max_count))
        return types, "autoscaler node types (GCS cluster config)"
    path = Path(os.path.expanduser(BOOTSTRAP_CONFIG))
    if path.is_file():
        try:
            return _launcher_types(path, running, workers_only=True), f"autoscaler node types ({BOOTSTRAP_CONFIG})"
        except ClusterSpecError:
            return [], ""
    return [], ""


def _launcher_types(path: Path, running: dict[tuple, int], workers_only: bool = False) -> list[NodeType]:
    """Node types of a cluster launcher YAML (``available_node_types``); the head counts as running."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterSpecError(f"--cluster: cannot read '{path}': {exc}") from None
    node_types = config.get("available_node_types") or {}
    if not isinstance(node_types, dict) or not node_types:
        raise ClusterSpecError(f"'{path}' has no available_node_types")
    head = config.get("head_node_type")
    types = []
    for name, spec in node_types.items():
        res = dict((spec or {}).get("resources") or {})
        is_head = name == head
        if not res.get("CPU") and not res.get("GPU"):
            if workers_only:  # the provider fills them in at runtime: the live nodes still count
                continue
            raise ClusterSpecError(f"'{path}': node type '{name}' lists no resources; give them explicitly "
                                   "(e.g. resources: {\"CPU\": 8, \"GPU\": 1}) so the plan knows what it offers")
        if workers_only and is_head:
            continue
        low = 1 if is_head else int(spec.get("min_workers", 0))
        high = 1 if is_head else int(spec.get("max_workers", config.get("max_workers", 0)))
        instance = str(((spec or {}).get("node_config") or {}).get("InstanceType", ""))
        memory = _gpu_memory(res) or INSTANCE_GPU_MEMORY.get(instance.split(".")[0], 0) * GIB
        types.append(NodeType(name, float(res.get("CPU", 0)), float(res.get("GPU", 0)), memory,
                              int(res.get("memory", 0)), 0 if workers_only else low, high))
    return types

