"""What runs where: a pure function from (options, models, cluster) to a :class:`Plan`.

The pipeline executes a plan as is; ``ned-ray encode --dry-run`` prints it (``--json`` too). Rules:

* **Device.** ``cpu``: CPU. ``cuda``: GPUs, always (the job waits for the autoscaler to bring them).
  ``auto``: GPUs when the cluster has them *or can launch them* (see :mod:`.cluster`), else CPU.
* **Model groups** (one actor pool each). Every ViT-B/32 model (NED's EEG subjects, BERG's EEG,
  fsaverage, THINGS-fMRI, MEG and TVSD heads) shares one group: one ViT pass feeds them all (NED's
  EEG subjects also share one PCA code). fwrf models (one backbone each) share another, split by
  subject (then by model) only when their weights would not fit an actor's share of a device (half
  of the share holds fwrf weights, the rest their activations; ViT models' weights may take 85%: a
  batch of their images needs < 1 GB); ``--fmri-models-per-actor N`` fixes groups of N instead.
  ViT models whose weights do not fit one actor are split the same way, by weight file (each group
  then runs its own ViT pass).
* **GPU slots.** With G groups and N GPUs at most, each actor gets 1 GPU when N >= G, else 1/k of
  one (k = ceil(G/N)): groups share GPUs. Every group gets one actor; the other slots go to groups in
  proportion to their compute per image (ViT-B/32 = 1, one fwrf backbone = 0.4, measured on CPU in
  bench/RESULTS.md), so more GPUs than groups become more replicas of the heavy groups (each image
  goes to one replica). Replicas balance better than splitting by subject: 8 subjects on 7 or 15
  GPUs leave one subject's group with half the GPUs of the others, replicas split evenly. A pool
  autoscales from 1 actor to its share (``--actors-per-group N`` fixes it to N); its actors size
  their batches from their own share of the device's memory.
* **CPUs.** Decode tasks take 1 CPU each, image-sink tasks 0.25; actors never hold the CPUs their
  feeders need. GPU actors reserve at most 1 CPU and half of the CPUs that come with their GPU
  share; CPU actors reserve what the decode and write tasks leave (a logical reservation: their
  torch threads are ``--cpu-threads`` or the smallest node's CPUs shared by the groups).
* **Start.** A pool starts as many actors as the work has shards (up to its maximum), so a big job
  asks for all its GPUs at once (an autoscaler launches them together) and a small one does not.
* **Batches.** Ray Data hands each actor ``shard_size`` rows per call (the model's own sub-batches
  are chosen inside, from memory); GPU actors take two calls at once, so one block is computed
  while the previous one is written, and keep two in flight.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from tabulate import tabulate

from ..errors import PlanError
from ..families import BY_INPUT
from ..ids import ModelId
from .cluster import ClusterShape
from .options import EncodeConfig

__all__ = ["Plan", "PoolPlan", "PlanError", "make_plan", "group_cost", "DECODE_CPUS", "WRITE_CPUS"]

VIT_FLOPS = 4.4e9  # multiply-adds x 2 of one ViT-B/32 image: a head's projection costs 2 per float32 weight
DECODE_CPUS = 1.0  # Ray CPUs of one decode task
WRITE_CPUS = 0.25  # Ray CPUs of one image-sink task (responses are written by the actors)
WEIGHTS_SHARE = 0.5  # of an actor's device memory share, for fwrf weights (the rest: their large activations)
VIT_WEIGHTS_SHARE = 0.85  # for ViT models' weights: a batch of 64 images needs < 1 GB besides them
CPU_ACTOR_CPUS = 0.5  # the most a CPU actor reserves (logical; its torch threads are set separately)
GPU_ACTOR_CPUS = 1.0  # the most a GPU actor reserves (data movement, writing its parts)
IN_FLIGHT = 2  # blocks per concurrent call sent to an actor: one computing (or writing), one arriving
INPUT_SHAPES = {k: (3, b.side, b.side) for k, b in BY_INPUT.items()}  # uint8 inputs decoded per image, per model kind


@dataclass
class PoolPlan:
    """One model group and the actor pool that hosts it."""

    name: str
    models: list[str]
    inputs: list[str]  # decoded input columns the group reads: "fwrf" (227 px), "vit" (224 px)
    drop: list[str]  # input columns no later pool reads: this pool's output leaves them out
    device: str  # cuda | cpu
    min_actors: int
    max_actors: int
    initial_actors: int  # started at once: as many as the work has shards for (up to max_actors)
    gpus_per_actor: float
    cpus_per_actor: float
    cpu_threads: int  # torch threads of a CPU actor (or of a GPU actor that falls back to CPU)
    batch_rows: int  # rows per actor call (Ray Data's batch_size)
    max_tasks_in_flight: int
    concurrent_calls: int  # calls one actor runs at once (2 on GPU: compute one block, write another)
    memory_share: float  # fraction of the device's memory this actor may use (its GPU share)
    weights_bytes: int
    cost: float  # relative compute per image

    @property
    def actors(self) -> str:
        span = f"{self.min_actors}" if self.min_actors == self.max_actors else f"{self.min_actors}-{self.max_actors}"
        return span if self.initial_actors == self.min_actors else f"{span} (start {self.initial_actors})"


@dataclass
class Plan:
    """Everything the pipeline needs to know about what runs where."""

    device: str  # cuda | cpu
    device_reason: str
    cluster: ClusterShape
    pools: list[PoolPlan]
    decode_cpus: float
    decode_concurrency: int  # most decode tasks at once
    write_cpus: float
    shard_size: int
    wait_for_gpus: bool  # no GPU now: the job waits for the autoscaler before it starts
    queued_bytes: int = 0  # Ray Data's object-store budget: the decoded blocks that may wait for actors
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cluster"] = self.cluster.to_json()
        return data

    def describe(self) -> str:
        """The plan as a few lines and a table (what ``--dry-run`` prints)."""
        lines = [f"cluster: {self.cluster.describe()}",
                 f"device: {self.device} ({self.device_reason})",
                 f"decode: tasks of {self.decode_cpus:g} CPU, up to {self.decode_concurrency} at once; "
                 f"image sink: {self.write_cpus:g} CPU per task; {self.shard_size} images per shard (commit unit); "
                 f"decoded blocks in Ray's object store: at most ~{_size(self.queued_bytes)}"]
        header = ("pool", "models", "inputs", "device", "actors", "GPU/actor", "CPU/actor", "threads", "rows/call",
                  "weights")
        rows = [(p.name, _models_label(p.models), ",".join(p.inputs), p.device, p.actors,
                            f"{p.gpus_per_actor:g}", f"{p.cpus_per_actor:g}", str(p.cpu_threads), str(p.batch_rows),
                            _size(p.weights_bytes)) for p in self.pools]
        lines.append(tabulate(rows, headers=header, tablefmt="plain", disable_numparse=True))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def _models_label(models: Sequence[str]) -> str:
    ids = [ModelId.parse(m) for m in models]
    parts = []
    for family in dict.fromkeys(m.family for m in sorted(ids, key=lambda m: m.family.backbone.shared)):
        members = [m for m in ids if m.family == family]
        subjects = sorted({m.subject for m in members}, key=lambda v: (isinstance(v, str), v))
        parts.append(f"{len(members)} {family.title} (sub {_ranges(subjects)})")
    return ", ".join(parts)


def _ranges(values: Sequence[int | str]) -> str:
    if any(isinstance(v, str) for v in values):
        return ",".join(map(str, values))
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start:02d}" if start == v else f"{start:02d}-{v:02d}")
            start = None
    return ",".join(out)


def group_cost(models: Sequence[ModelId], sizes: Mapping[ModelId, int] | None = None) -> float:
    """Relative compute per image of a group: one ViT pass for all its ViT models plus their
    heads' projections (2 flops per float32 weight, from ``sizes``: NED's EEG regressions are
    small), one fwrf backbone per fwrf model (two for split ROIs)."""
    own = sum((2 if m.is_split else 1) * m.family.backbone.cost for m in models if not m.family.backbone.shared)
    shared = [m for m in models if m.family.backbone.shared]
    heads = sum((sizes or {}).get(m, 0) for m in shared) / 4 * 2 / VIT_FLOPS
    return own + sum(b.cost for b in {m.family.backbone for m in shared}) + heads


def _inputs(models: Sequence[ModelId]) -> list[str]:
    return [k for k in INPUT_SHAPES if any(m.family.input == k for m in models)]


def _device(config: EncodeConfig, cluster: ClusterShape) -> tuple[str, str]:
    if config.device == "cpu":
        return "cpu", "--device cpu"
    if config.device == "cuda":
        return "cuda", "--device cuda" + ("" if cluster.gpus_max else ": the job waits for GPUs to join the cluster")
    if cluster.gpus_now:
        return "cuda", f"auto: the cluster has {cluster.gpus_now:g} GPU(s)"
    if cluster.gpus_max:
        return "cuda", f"auto: the autoscaler can launch {cluster.gpus_max:g} GPU(s)"
    return "cpu", "auto: the cluster has no GPU and cannot launch any"


def _balanced(items: Sequence[tuple[Any, float]], n: int) -> list[list[Any]]:
    """``items`` (item, weight) into ``n`` bins of similar total weight (largest first, to the lightest bin)."""
    bins: list[tuple[float, int, list[Any]]] = [(0.0, i, []) for i in range(n)]
    for item, weight in sorted(items, key=lambda kv: -kv[1]):
        total, i, members = min(bins)
        members.append(item)
        bins[bins.index((total, i, members))] = (total + weight, i, members)
    return [sorted(members) for _, _, members in sorted(bins, key=lambda b: b[1]) if members]


def _fmri_groups(fmri: list[ModelId], n_groups: int, sizes: Mapping[ModelId, int]) -> list[list[ModelId]]:
    """fMRI models in ``n_groups`` groups: by subject while there are enough subjects, else by model."""
    subjects = sorted({m.subject for m in fmri})
    if n_groups <= len(subjects):
        per_subject = [([m for m in fmri if m.subject == s], group_cost([m for m in fmri if m.subject == s]))
                       for s in subjects]
        return [sorted(m for ms in bin_ for m in ms) for bin_ in _balanced([(tuple(ms), c) for ms, c in per_subject],
                                                                           n_groups)]
    return _balanced([(m, float(sizes.get(m, 1))) for m in fmri], min(n_groups, len(fmri)))


def _allocate(slots: int, costs: Sequence[float]) -> list[int]:
    """Actors per group: one each, then the remaining slots in proportion to cost (largest remainder)."""
    counts = [1] * len(costs)
    spare = slots - len(costs)
    if spare <= 0:
        return counts
    total = sum(costs) or 1.0
    shares = [spare * c / total for c in costs]
    extra = [int(s) for s in shares]
    order = sorted(range(len(costs)), key=lambda i: -(shares[i] - extra[i]))
    for i in order[: spare - sum(extra)]:
        extra[i] += 1
    return [c + e for c, e in zip(counts, extra)]


def make_plan(config: EncodeConfig, models: Sequence[ModelId], cluster: ClusterShape,
              weights_bytes: Mapping[ModelId, int] | None = None, shared_bytes: int | Mapping[str, int] = 0,
              n_shards: int | None = None) -> Plan:
    """The plan for ``models`` on ``cluster`` under ``config`` (pure: no Ray, no files).

    ``weights_bytes``: each model's own weight files; ``shared_bytes``: what the models of each shared
    backbone share, by backbone name (ViT-B/32: its file, NED's scaler and PCA; an int: ViT-B/32's).
    They keep every group within its actors' memory budget. ``n_shards``: shards to encode; pools
    start as many actors as there are shards (up to their maximum).
    """
    if not models:
        raise PlanError("no models to run")
    sizes = dict(weights_bytes or {})
    shared = {"vit_b_32": shared_bytes} if isinstance(shared_bytes, int) else dict(shared_bytes)
    notes: list[str] = []
    device, reason = _device(config, cluster)
    vit = sorted(m for m in models if m.family.has_heads)
    fmri = sorted(m for m in models if not m.family.has_heads)
    if config.store != "responses" and fmri:
        notes.append(f"--store {config.store}: the {len(fmri)} fwrf model(s) have no small code (a backbone and pooling "
                     "head per voxel): their responses are stored")
    gpus = cluster.gpus_max if device == "cuda" else 0.0
    if device == "cuda" and not gpus:
        gpus = 1.0  # --device cuda on a cluster that shows none: plan for the first GPU to come
        notes.append("no GPU visible and no autoscaler node type with GPUs: planned for 1 GPU (the job waits for it)")
    if device == "cuda":
        memory = cluster.gpu_memory()
        if not cluster.gpu_memory_known():
            notes.append(f"GPU memory unknown: assumed {memory / 2**30:.0f} GB per GPU (describe it with --cluster "
                         "'...+1gpu:24GB')")
    else:
        memory = cluster.node_memory()

    def weight(group: Sequence[ModelId]) -> int:
        backbones = {m.family.backbone.name for m in group if m.family.has_heads}
        return sum(sizes.get(m, 0) for m in group) + sum(shared.get(b, 0) for b in backbones)

    def held(group: Sequence[ModelId]) -> float:
        """Device memory a group's weights claim: their bytes over the share of memory weights may take."""
        fwrf = [m for m in group if not m.family.has_heads]
        vit = [m for m in group if m.family.has_heads]
        return (weight(fwrf) / WEIGHTS_SHARE if fwrf else 0.0) + (weight(vit) / VIT_WEIGHTS_SHARE if vit else 0.0)

    def budget(share: float) -> float:
        return share * memory if memory else float("inf")

    # -- model groups: EEG together, fMRI together unless their weights do not fit an actor ----------
    if config.fmri_models_per_actor > 0:
        size = config.fmri_models_per_actor
        fmri_groups = [fmri[i:i + size] for i in range(0, len(fmri), size)]
    else:
        fmri_groups = [fmri] if fmri else []

    fixed = config.actors_per_group if config.actors_per_group > 0 else 0

    def share_for(n_groups: int) -> float:
        if device != "cuda":
            return 1.0
        if config.gpus_per_actor > 0:
            return float(config.gpus_per_actor)
        needed = n_groups * (fixed or 1)  # actors that must run at once
        return 1.0 if gpus >= needed else 1.0 / math.ceil(needed / gpus)

    vit_groups = [vit] if vit else []
    n_groups = len(fmri_groups) + len(vit_groups)
    share = share_for(n_groups)
    capacity = memory * (gpus if device == "cuda" else 1) if memory else float("inf")
    if held(fmri) + held(vit) > capacity:
        where = f"{gpus:g} GPU(s) of {_size(memory)}" if device == "cuda" else f"a node of {_size(memory)}"
        raise PlanError(f"the {len(models)} models need {_size(weight(models))} of weights with one actor per group, more "
                        f"than {where} hold for weights ({WEIGHTS_SHARE:.0%} of the memory for fwrf models, "
                        f"{VIT_WEIGHTS_SHARE:.0%} for ViT models); "
                        "run fewer models per job, or on more or larger GPUs")
    if config.fmri_models_per_actor <= 0 and fmri:
        n_subjects = len({m.subject for m in fmri})
        n = 1
        while n < len(fmri) and any(held(g) > budget(share) for g in fmri_groups):
            n += 1  # by subject first, then by model
            fmri_groups = _fmri_groups(fmri, n, sizes)
            share = share_for(len(fmri_groups) + len(vit_groups))
        if n > 1:
            notes.append(f"fMRI weights ({_size(weight(fmri))}) exceed an actor's budget: split in {n} groups "
                         f"({'by subject' if n <= n_subjects else 'by model'})")
    if vit:
        files: dict[str, list[ModelId]] = {}
        for m in vit:  # models read from one file (fsaverage's hemispheres) stay together
            files.setdefault(m.source, []).append(m)
        n = 1
        while n < len(files) and any(held(g) > budget(share) for g in vit_groups):
            n += 1
            vit_groups = [sorted(m for ms in bin_ for m in ms) for bin_ in
                          _balanced([(tuple(ms), float(sum(sizes.get(m, 0) for m in ms))) for ms in files.values()], n)]
            share = share_for(len(fmri_groups) + len(vit_groups))
        if n > 1:
            notes.append(f"ViT models' weights ({_size(weight(vit))}) exceed an actor's budget: split in {n} groups by "
                         "weight file (each runs its own ViT pass)")
    groups = fmri_groups + vit_groups
    share = share_for(len(groups))
    too_big = next((g for g in groups if held(g) > budget(share)), None)
    if too_big is not None:
        raise PlanError(f"{_models_label([str(m) for m in too_big])} need {_size(weight(too_big))} of weights "
                        f"({_size(int(held(too_big)))} with their working memory), more than an actor's "
                        f"{_size(int(budget(share)))} ({share:g} of a {_size(memory)} device); give "
                        "actors more memory (--gpus-per-actor 1, larger GPUs), fewer models per actor, or use the CPU")

    # -- actors: every group at least one, the other GPU slots by compute --------------------------------
    costs = [group_cost(g, sizes) for g in groups]
    if device == "cuda":
        slots = int(math.floor(gpus / share + 1e-9))
        needed = len(groups) * (fixed or 1)
        if slots < needed:
            raise PlanError(f"{needed} actors ({len(groups)} model groups x {fixed or 1}) need {needed * share:g} GPUs at "
                            f"{share:g} GPU per actor, and the cluster has at most {gpus:g}; use a smaller "
                            "--gpus-per-actor or fewer --actors-per-group")
        counts = [fixed] * len(groups) if fixed else _allocate(slots, costs)
    else:
        counts = [fixed or max(1, cluster.nodes_max)] * len(groups)

    # -- CPUs: actors never hold the CPUs their decode and write tasks need ---------------------------
    if device == "cuda":
        cpus_per_gpu = cluster.cpus_per_gpu() or max(1.0, cluster.cpus_max / gpus)
        actor_cpus = min(GPU_ACTOR_CPUS, share * cpus_per_gpu / 2)
        threads = config.cpu_threads or max(1, int(share * cpus_per_gpu))
    else:
        threads = config.cpu_threads or max(1, int(cluster.smallest_cpu_node()) // len(groups))
        actor_cpus = CPU_ACTOR_CPUS
    free = cluster.cpus_max - DECODE_CPUS - WRITE_CPUS
    if free <= 0:
        raise PlanError(f"the Ray cluster has {cluster.cpus_max:g} CPUs; the encode job needs more than "
                        f"{DECODE_CPUS + WRITE_CPUS:g} (its decode and write tasks) plus its model actors")
    actor_cpus = round(min(actor_cpus, free / sum(counts)), 4)
    decode_concurrency = max(1, int((cluster.cpus_max - actor_cpus * sum(counts) - WRITE_CPUS) // DECODE_CPUS))
    if n_shards is not None:  # one decode task per shard
        decode_concurrency = max(1, min(decode_concurrency, n_shards))

    pools = []
    for index, (group, count, cost) in enumerate(zip(groups, counts, costs)):
        later = {k for g in groups[index + 1:] for k in _inputs(g)}
        names = {m.family.pool or m.family.input for m in group}
        kind = names.pop() if len(names) == 1 else group[0].family.input  # a group's models share one input
        numbered = sum(1 for g in groups if g[0].family.input == group[0].family.input) > 1
        pools.append(PoolPlan(
            name=f"{kind}-{index + 1}" if numbered else kind,
            models=[str(m) for m in group], inputs=_inputs(group), drop=[k for k in _inputs(group) if k not in later],
            device=device, min_actors=fixed or 1, max_actors=count,
            initial_actors=fixed or max(1, min(count, n_shards if n_shards is not None else count)),
            gpus_per_actor=share if device == "cuda" else 0.0, cpus_per_actor=actor_cpus, cpu_threads=threads,
            batch_rows=config.shard_size, max_tasks_in_flight=IN_FLIGHT * (2 if device == "cuda" else 1),
            concurrent_calls=2 if device == "cuda" else 1, memory_share=share if device == "cuda" else 1.0,
            weights_bytes=weight(group), cost=round(cost, 3)))
    if device == "cuda" and share < 1:
        notes.append(f"{len(groups)} groups on {gpus:g} GPU(s): actors share GPUs ({share:g} GPU each) and size their "
                     "batches from their own share of the GPU's memory")
    for backbone in dict.fromkeys(m.family.backbone for m in vit):
        on = [m for m in vit if m.family.backbone == backbone]
        if len(on) > 1:
            notes.append(f"the {len(on)} {backbone.name} models share one {backbone.name} pass per image"
                         + (" per group" if len(vit_groups) > 1 else ""))
    # decoded blocks that may wait in the object store: what the actors hold in flight, one more per
    # actor, and what the decode tasks are producing; without this budget Ray Data lets decoding run
    # up to half the object store ahead of slow (CPU) actors (bench/RESULTS.md)
    block = config.shard_size * sum(int(np.prod(INPUT_SHAPES[k])) for k in {k for p in pools for k in p.inputs})
    blocks = sum(p.max_actors * (p.max_tasks_in_flight + 1) for p in pools) + 2 * decode_concurrency
    return Plan(device=device, device_reason=reason, cluster=cluster, pools=pools, decode_cpus=DECODE_CPUS,
                decode_concurrency=decode_concurrency, write_cpus=WRITE_CPUS, shard_size=config.shard_size,
                wait_for_gpus=device == "cuda" and not cluster.gpus_now, queued_bytes=block * blocks, notes=notes)
