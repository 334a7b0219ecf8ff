"""The Ray Data executor: the encode job's Ray code (users' own pipelines: :mod:`ned_ray.data`).

    shards ──DecodeShard (CPU tasks, the listing shared once through the object store)──> rows
           ──RayGroupEncoder per pool (an autoscaling actor pool; models loaded once per actor)──> parts
           ──ImagesDatasink──> images' status

Before the graph runs: connect to the cluster (or start a local Ray instance for this job alone),
describe what it has and can launch, wait for GPUs an autoscaler is bringing, and check that every
node sees the job's local paths. Errors of our own raised inside tasks and actors reach the user as
themselves (their type kept by Ray), in one line.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import posixpath
import re
import sys
import tempfile
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterable, TextIO

import ray
from ray.data import Datasink
from ray.data.block import BlockAccessor

from ...errors import DeviceError, NedRayError, StorageError, storage_error
from ...output.layout import PROBE_PREFIX
from ...storage import filesystem, is_local, write_bytes
from ..cluster import ClusterShape
from ..commit.lease import local_ray_processes, ray_job_actors_alive
from ..inputs import ImageSource
from ..options import EncodeConfig
from ..plan import Plan, PoolPlan
from ..sink import ImagesSink
from ..stages import GroupEncoder
from .base import Executor, Stages, decode_listing

__all__ = ["RayExecutor", "connect", "pool_arguments", "wait_for_gpus", "check_paths_on_nodes"]

log = logging.getLogger("ned_ray")

_RAY_RETRY_NOTE = re.compile(r"\nFailed to .*? after \d+/\d+ attempts.*", re.DOTALL)  # Ray Data appends it to errors


def connect(config: EncodeConfig) -> bool:
    """Join the Ray cluster of ``--ray-address``/``$RAY_ADDRESS``, or start a local instance for this
    job alone (without Ray's dashboard, which a job that stops with it never uses). Returns whether
    this call started a Ray instance."""
    if ray.is_initialized():
        return False
    quiet(config.verbose)
    level = logging.INFO if config.verbose else logging.WARNING
    if config.ray_address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=config.ray_address, ignore_reinit_error=True, log_to_driver=False, logging_level=level)
        return False
    ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False, logging_level=level)
    return True


# Ray's warnings about what ned-ray chose on purpose: Ray Data's progress bars off (ned-ray shows its
# own), GPU actors that also reserve CPUs (each feeds its GPU from a CPU thread), and the token
# authentication and object store share of a local Ray instance that the job starts and stops
_EXPECTED_WARNINGS = {
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled",),
    "ray.data._internal.progress": ("Progress bars disabled",),
    "ray.data._internal.execution.operators.map_operator": ("Specifying both num_cpus and num_gpus",),
    "ray.data._internal.execution.resource_manager": ("⚠️  Ray's object store is configured",),  # Ray 2.55
}
_DEFAULT_DETECTORS: dict[str, list] = {}  # Ray Data's own issue detectors, kept to restore them with --verbose


class _Drop(logging.Filter):
    """Drops the records whose message starts with one of ``texts``."""

    def __init__(self, texts: tuple[str, ...]) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.texts)


def quiet(verbose: bool) -> None:
    """Unless ``verbose``: Ray Data's progress bars, its INFO lines and hints and the warnings of
    ``_EXPECTED_WARNINGS`` off (ned-ray shows one progress display of its own,
    :mod:`ned_ray.job.progress`); other warnings and errors still show."""
    level = logging.INFO if verbose else logging.WARNING
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(level)
    for name, texts in _EXPECTED_WARNINGS.items():
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _Drop)]:
            logger.removeFilter(old)
        if not verbose:
            logger.addFilter(_Drop(texts))
    warnings.filterwarnings("default" if verbose else "ignore", message="Tip: In future versions of Ray",
                            category=FutureWarning)  # Ray 2.55's notice about CUDA_VISIBLE_DEVICES, at ray.init
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose
    for flag in ("enable_operator_progress_bars", "print_on_execution_start"):  # not in every Ray release
        if hasattr(context, flag):
            setattr(context, flag, verbose)
    detection = getattr(context, "issue_detectors_config", None)  # Ray Data's periodic hints (memory per actor,
    if detection is not None:  # hanging tasks): ned-ray sizes its actors itself; the hints come back with --verbose
        _DEFAULT_DETECTORS.setdefault("detectors", list(detection.detectors))
        detection.detectors = list(_DEFAULT_DETECTORS["detectors"]) if verbose else []


_ACTOR_ARGUMENT_NOTICE = b"has constructor arguments in the object store and max_restarts > 0"
_notice_taken = False


@ray.remote(num_cpus=0, max_restarts=1)
class _NoticeTaker:
    """An actor created only to take Ray's once-per-process notice (:func:`take_actor_argument_notice`)."""

    def __init__(self, _argument: Any) -> None:
        pass


def take_actor_argument_notice() -> None:
    """Ray's core worker logs, once per process, an ERROR line (``core_worker.cc``) when it creates
    an actor that can restart and has constructor arguments in the object store. Ray Data's map
    actors always do, whatever the UDF's arguments: their DataContext and transformer go by
    reference (ray-project/ray#57733), so the line would stand above every run's own lines while
    saying nothing about the job, and ned-ray keeps actor restarts. One throwaway actor of that
    kind takes the notice while this process's stderr is captured; anything else written in that
    moment is written back. ``--verbose`` leaves Ray's line as it is."""
    global _notice_taken
    if _notice_taken:
        return
    _notice_taken = True
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            taker = _NoticeTaker.remote(ray.put(None))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        ray.kill(taker)
        captured.seek(0)
        rest = [line for line in captured.read().splitlines(keepends=True) if _ACTOR_ARGUMENT_NOTICE not in line]
    if rest:
        os.write(2, b"".join(rest))


# calls one actor runs at once: an ActorPoolStrategy argument in newer Ray releases (the actor option
# max_concurrency in Ray 2.55, deprecated as such in 2.60)
_CALLS_IN_STRATEGY = "max_concurrent_calls_per_actor" in inspect.signature(ray.data.ActorPoolStrategy).parameters


def _concurrency(calls: int) -> tuple[dict[str, int], dict[str, int]]:
    """(ActorPoolStrategy arguments, map_batches arguments) for ``calls`` calls at once per actor."""
    return ({"max_concurrent_calls_per_actor": calls}, {}) if _CALLS_IN_STRATEGY else ({}, {"max_concurrency": calls})


def pool_arguments(pool: PoolPlan) -> dict[str, Any]:
    """``map_batches`` arguments that run a planned pool as Ray Data's actor pool: its actors, their
    GPU and CPU shares, rows per call and calls in flight."""
    in_strategy, in_actor = _concurrency(pool.concurrent_calls)
    return {"batch_size": pool.batch_rows,
            "compute": ray.data.ActorPoolStrategy(
                min_size=pool.min_actors, max_size=pool.max_actors, initial_size=pool.initial_actors,
                max_tasks_in_flight_per_actor=pool.max_tasks_in_flight,
                enable_true_multi_threading=pool.concurrent_calls > 1, **in_strategy),
            "num_gpus": pool.gpus_per_actor or None, "num_cpus": pool.cpus_per_actor, **in_actor}


class RayGroupEncoder(GroupEncoder):
    """A model pool's actor. A failure to build the models (a damaged file, no GPU) is raised by the
    actor's first batch: Ray keeps a task's exception as itself, while an actor that dies in its
    constructor would reach the driver only as text."""

    def __init__(self, *args: Any) -> None:
        self.failed: NedRayError | None = None
        try:
            super().__init__(*args, node=ray.util.get_node_ip_address())
        except NedRayError as exc:
            self.failed = exc

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.failed is not None:
            raise self.failed
        return super().__call__(batch)


class ImagesDatasink(Datasink[list]):
    """The image sink as Ray Data's datasink (written by Ray Data's write tasks)."""

    def __init__(self, sink: ImagesSink) -> None:
        self.sink = sink

    def get_name(self) -> str:
        return "NedRayImages"

    def write(self, blocks: Iterable[Any], ctx: Any) -> list:
        return [name for block in blocks for name in self.sink.write_batch(BlockAccessor.for_block(block).to_numpy())]


class _HideErrors(logging.Filter):
    """Ray Data logs a task's failure with its traceback before raising it to the driver; the job
    reports that failure itself, in one line (the traceback stays in Ray Data's log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


@contextmanager
def _ray_data_errors_quiet():
    handlers = [h for h in logging.getLogger("ray.data").handlers if not isinstance(h, logging.FileHandler)
                and type(h).__name__ != "SessionFileHandler"]
    hide = _HideErrors()
    for handler in handlers:
        handler.addFilter(hide)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(hide)


class RayExecutor(Executor):
    """The stages as one Ray Data graph, on the cluster this job joins (or a local Ray instance)."""

    name = "ray"

    def __init__(self, config: EncodeConfig, reason: str) -> None:
        super().__init__(config, reason)
        self.started_ray = False

    def start(self) -> None:
        self.started_ray = connect(self.config)

    def cluster_shape(self) -> ClusterShape:
        """The described cluster (``--cluster``), or the connected one with what its autoscaler may add."""
        if self.config.cluster:
            return ClusterShape.parse(self.config.cluster)
        connect(self.config)
        return ClusterShape.from_ray()

    def lease_fields(self) -> dict[str, Any]:
        context = ray.get_runtime_context()
        return {"ray_job_id": context.get_job_id(), "ray_session": context.get_session_name(),
                "ray_raylets": local_ray_processes()}

    def prepare(self, plan: Plan, replan: Callable[[EncodeConfig, ClusterShape], Plan], source: ImageSource,
                fs: Any, root: str, stream: TextIO) -> Plan:
        plan = self._await_devices(plan, replan, stream)
        try:
            check_paths_on_nodes(self.config, source, fs, root, plan, stream)
        except NedRayError:
            raise
        except Exception as exc:  # noqa: BLE001 - a probe that cannot be written or removed
            raise storage_error("check paths on the cluster's nodes for", self.config.output, exc) from exc
        return plan

    def _await_devices(self, plan: Plan, replan: Callable[[EncodeConfig, ClusterShape], Plan],
                       stream: TextIO) -> Plan:
        """Wait for GPUs when the plan needs some the cluster does not have yet."""
        config = self.config
        if not plan.wait_for_gpus:
            return plan
        if not plan.cluster.gpus_max:  # no GPU now, and none can come: waiting would only delay the error
            source = plan.cluster.source
            why = ("it has no autoscaler" if "no autoscaler" in source else
                   "--cluster describes no GPU node" if source.startswith("described") else
                   "its autoscaler launches no GPU node type")
            raise DeviceError(f"--device cuda: the Ray cluster has no GPU and cannot get one ({why}): "
                              f"{plan.cluster.describe()}; add GPU nodes, join a cluster that has them (--ray-address), "
                              "or use --device auto/cpu")
        if wait_for_gpus(plan, config, stream):
            return plan  # planned for what the cluster can launch: the first GPU is enough to start
        message = f"no GPU joined the Ray cluster within --gpu-wait {config.gpu_wait:g}s; {plan.cluster.describe()}"
        if config.device == "cuda":
            raise DeviceError(f"--device cuda: {message}; start GPU workers (check `ray status` and the autoscaler), "
                              "raise --gpu-wait, or use --device auto/cpu")
        print(f"warning: {message}; --device auto continues on CPU", file=stream, flush=True)
        return replan(replace(config, device="cpu"), self.cluster_shape())

    def run(self, plan: Plan, stages: Stages) -> None:
        connect(self.config)
        quiet(self.config.verbose)  # also on a Ray this process had joined before
        if not self.config.verbose:
            take_actor_argument_notice()
        context = ray.data.DataContext.get_current()
        context.execution_options.resource_limits = context.execution_options.resource_limits.copy(
            object_store_memory=plan.queued_bytes)  # decoding runs ahead of the actors by a few blocks, no more
        context.raise_original_map_exception = True  # our errors (a full disk) reach the driver as themselves
        shards = [{"start": start, "stop": stop} for start, stop in stages.shards]
        ds = ray.data.from_items(shards, override_num_blocks=len(shards))
        ds = ds.map_batches(stages.decode, batch_size=1, num_cpus=plan.decode_cpus,
                            compute=ray.data.TaskPoolStrategy(size=plan.decode_concurrency))
        for stage in stages.encoders:
            ds = ds.map_batches(RayGroupEncoder, fn_constructor_args=stage.args, **pool_arguments(stage.pool))
        with _ray_data_errors_quiet():
            ds.write_datasink(ImagesDatasink(stages.sink), ray_remote_args={"num_cpus": plan.write_cpus})

    def shared_listing(self, source: ImageSource) -> Callable[[], Any]:
        """The decode stage's listing, put once in the object store (one copy per node)."""
        return functools.partial(ray.get, ray.put(decode_listing(source)))

    def failure(self, exc: BaseException) -> Exception | None:
        """Our own error inside a Ray failure (a full disk under an actor, a model that could not
        load), as itself: Ray keeps the original exception (``raise_original_map_exception``) as the
        failure or its cause."""
        seen: BaseException | None = exc
        for _ in range(10):  # the exception, its Ray cause, their chained causes
            if seen is None:
                break
            cause = getattr(seen, "cause", None)
            for candidate in (cause, seen):
                if isinstance(candidate, NedRayError) and not isinstance(candidate, ray.exceptions.RayError):
                    return type(candidate)(_RAY_RETRY_NOTE.sub("", str(candidate)))
            seen = cause if isinstance(cause, BaseException) else (seen.__cause__ or seen.__context__)
        return None

    def release(self, plan: Plan) -> None:
        if plan.wait_for_gpus:
            try:
                from ray.autoscaler.sdk import request_resources

                request_resources(bundles=[])
            except Exception:  # noqa: BLE001 - withdrawing a request is best effort
                pass

    def stop_writers(self, stream: TextIO, timeout: float = 30.0) -> None:
        """Ray Data kills its actors when its execution is interrupted; wait until Ray reports them
        dead (and stop a Ray instance this job started itself)."""
        job = ray.get_runtime_context().get_job_id()
        deadline = time.monotonic() + timeout
        try:
            while ray_job_actors_alive(job) and time.monotonic() < deadline:
                time.sleep(0.2)
        except Exception as exc:  # noqa: BLE001 - Ray itself may be going down with the interrupt
            log.info("could not list this job's actors: %s", exc)
        if self.started_ray:
            ray.shutdown()


def wait_for_gpus(plan: Plan, config: EncodeConfig, stream: TextIO | None = None, poll: float = 1.0) -> bool:
    """Ask the autoscaler for the plan's first GPU actors and wait until a GPU joins the cluster.

    Prints a progress line every 10 s. Returns False after ``config.gpu_wait`` seconds without one.
    """
    stream = stream or sys.stderr
    needed = max(1, sum(p.min_actors for p in plan.pools)) if plan.pools else 1
    share = plan.pools[0].gpus_per_actor if plan.pools else 1.0
    bundles = [{"GPU": min(1.0, share * needed)}]
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)  # a no-op without an autoscaler
    except Exception as exc:  # noqa: BLE001 - asking is best effort; waiting decides
        log.info("could not ask the autoscaler for GPUs: %s", exc)
    started = time.monotonic()
    last = started
    while time.monotonic() - started < config.gpu_wait:
        if ray.cluster_resources().get("GPU", 0) > 0:
            return True
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            print(f"waiting for GPUs: none in the cluster after {last - started:.0f}s "
                  f"(of --gpu-wait {config.gpu_wait:g}s); {plan.cluster.describe()}", file=stream, flush=True)
        time.sleep(poll)
    return ray.cluster_resources().get("GPU", 0) > 0


def check_paths_on_nodes(config: EncodeConfig, source: ImageSource, fs, root: str, plan: Plan | None = None,
                         stream: TextIO | None = None) -> None:
    """On a multi-node cluster, every node must see the local paths the job uses (``--ned-dir``,
    ``--images``, ``--output``): a node that cannot fails the job here, in one line, instead of in
    thousands of per-image errors or in parts scattered over nodes' disks."""
    stream = stream or sys.stderr
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    local = {flag: uri for flag, uri in (("--ned-dir", config.ned_dir), ("--images", config.images),
                                         ("--output", config.output)) if "://" not in uri or uri.startswith("file://")}
    if not local:
        return
    if len(nodes) < 2:
        if plan is not None and plan.cluster.nodes_max > 1:
            print(f"warning: {', '.join(f'{k} {v}' for k, v in local.items())}: local path(s) on a cluster that can grow "
                  f"to {plan.cluster.nodes_max} nodes; nodes that join must see them (a shared filesystem), or use "
                  "URLs (s3://, gs://)", file=stream, flush=True)
        return
    probes: dict[str, list[str]] = {}
    token = uuid.uuid4().hex
    probe_file = None
    if "--output" in local and is_local(fs):
        probe_file = posixpath.join(root, f"{PROBE_PREFIX}{token}")
        write_bytes(fs, probe_file, token.encode())
        probes["--output"] = [probe_file]
    if "--images" in local:
        probes["--images"] = [filesystem(config.images)[1]] + [u for u in source.uris[:1] + source.uris[-1:]
                                                                if "://" not in u]
    if "--ned-dir" in local:
        probes["--ned-dir"] = [posixpath.join(filesystem(config.ned_dir)[1], "encoding_models")]
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        checks = [_missing_paths.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(probes) for n in nodes]
        results = ray.get(checks, timeout=120)
    finally:
        if probe_file:
            fs.rm(probe_file)
    for node, missing in zip(nodes, results):
        if missing:
            flag, path = missing[0]
            raise StorageError(f"{flag} '{local[flag]}' is a local path that node {node['NodeManagerAddress']} cannot "
                               f"see ({path} is missing there); on a multi-node cluster use a path on a shared "
                               "filesystem mounted on every node, or a URL (s3://, gs://)")


def _visible(path: str) -> bool:
    return os.path.exists(path)


@ray.remote
def _missing_paths(probes: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(flag, path) of the probes this node cannot see."""
    return [(flag, path) for flag, paths in probes.items() for path in paths if not _visible(path)]
