"""The encode job on Ray Data, top to bottom: list -> plan -> read+decode -> encode+write -> commit.

    inputs ──list/sort──> shards (driver) ──DecodeShard──> rows with uint8 inputs (CPU tasks)
           ──GroupEncoder per pool of the plan──> responses written as parts by the actors
             (models loaded once per actor; only the input columns a pool reads travel to it)
           ──ImagesSink──> images' status ──finalize──> images.parquet, _manifest.json (last)

What runs where is decided first, as data (:mod:`.plan`), from what the Ray cluster has or can
launch (:mod:`.cluster`); this module executes that plan. A rerun of the same command skips what is
committed (:mod:`.commit`); other options on an existing output are refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import signal
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TextIO

import numpy as np
import ray
import torch

from .. import __version__
from ..errors import JobInterrupted, NedRayError, StorageError, storage_error
from ..ids import ModelId, UnknownModelError
from ..models.group import DeviceError, ModelGroup, ModelLoadError, weights_bytes
from ..nedfmt import MissingFileError, ModelFileError
from ..safeload import UnsafePickleError
from ..models.vit_heads import SelectionError, resolve_selection
from ..selection import Resolved
from ..storage import bucket_of, filesystem, is_local
from .cluster import ClusterShape, ClusterSpecError
from .commit import (COMMITS, IMAGE_PARTS, JOB_FILE, LEASE, LISTING, MANIFEST, Ledger, ListingChangedError, Ranges,
                     finalize, fresh_exists, fresh_ls, listing_fingerprint, read_listing, reconcile, write_bytes,
                     write_listing)
from .config import EncodeConfig
from .decode import DecodeShard
from .interrupts import shielded, sigterm_interrupts
from .lease import Lease, LeaseHeldError, LeaseLostError, local_ray_processes, ray_job_actors_alive
from .local import choose_executor, run_local
from .metadata import model_files, recorded_files, write_model_metadata
from .plan import Plan, PlanError, PoolPlan, make_plan
from .progress import ProgressReporter
from .sink import ImagesSink, PartWriter
from .sources import ImageSource, NoImagesError, open_source

__all__ = ["run_encode", "plan_encode", "GroupEncoder", "OutputExistsError", "MissingBucketError", "StorageError",
           "DeviceError", "LeaseHeldError", "LeaseLostError", "ListingChangedError"]

log = logging.getLogger("ned_ray")


class OutputExistsError(ValueError):
    """The output folder holds a job with other options."""


class MissingBucketError(ValueError):
    """The output's bucket does not exist (and the job was not asked to create it)."""


EXPECTED = (NedRayError, NoImagesError, MissingFileError, OutputExistsError, UnknownModelError, PlanError,
            ClusterSpecError, DeviceError, LeaseHeldError, ListingChangedError, ValueError)


@contextmanager
def _storage(what: str, uri: str):
    """Turn a filesystem/network failure on ``uri`` into one StorageError line."""
    try:
        yield
    except EXPECTED:
        raise
    except Exception as exc:  # botocore, gcsfs, aiohttp and OS errors alike
        raise storage_error(what, uri, exc) from exc


_OURS = (StorageError, DeviceError, ModelLoadError, UnsafePickleError, MissingFileError, ModelFileError)
_RAY_RETRY_NOTE = re.compile(r"\nFailed to .*? after \d+/\d+ attempts.*", re.DOTALL)  # Ray Data appends it to errors


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


def _job_error(exc: BaseException) -> Exception | None:
    """Our own error inside a Ray failure (a full disk under an actor, a model that could not load),
    as one line: the original exception where Ray kept it (``raise_original_map_exception``), else
    recognised in Ray's message (an actor's constructor)."""
    seen: BaseException | None = exc
    for _ in range(10):  # the exception, its Ray cause, their chained causes
        if seen is None:
            break
        cause = getattr(seen, "cause", None)
        for candidate in (cause, seen):
            if isinstance(candidate, _OURS) and not isinstance(candidate, ray.exceptions.RayError):
                return type(candidate)(_RAY_RETRY_NOTE.sub("", str(candidate)))
        seen = cause if isinstance(cause, BaseException) else (seen.__cause__ or seen.__context__)
    text = str(exc)
    for cls in _OURS:
        found = re.search(rf"{cls.__name__}: (.+)", text)
        if found:
            return cls(found.group(1).strip())
    return None


# -- the actors -----------------------------------------------------------------------------------
class GroupEncoder:
    """Ray actor: hosts one pool's model group (loaded once, in ``__init__``), computes its responses
    and writes them (:class:`~.sink.PartWriter`); passes the rows on without the inputs no later pool
    reads."""

    def __init__(self, config: EncodeConfig, pool: PoolPlan, selections: dict[str, dict[str, Any]],
                 committed: dict[str, Ranges], n_images: int) -> None:
        import threading

        self.node = ray.util.get_node_ip_address()
        self.device = _actor_device(pool, config.device, self.node)
        if self.device == "cpu":
            torch.set_num_threads(pool.cpu_threads)  # Ray starts workers with one thread
        self.group = ModelGroup(config.open_ned(), pool.models, self.device, config.vit_weights, config.precision,
                                config.batch_size, memory_share=pool.memory_share if self.device == "cuda" else 1.0,
                                selections={m: s["berg"] for m, s in selections.items() if "berg" in s})
        log.info("pool %s on %s (%s): batch sizes %s", pool.name, self.node, self.group.device, self.group.batch_sizes)
        self.selections = {m: _resolved(selections.get(str(m), {})) for m in self.group.model_ids}
        shapes = {m: self.selections[m].shape(self.group.output_shape(m)) for m in self.group.model_ids}
        self.writer = PartWriter(config.output, config.storage_options, shapes, config.formats, config.shard_size,
                                 n_images, committed, planned=pool.device, pool=pool.name)
        self.drop = list(pool.drop)
        self.compute_lock = threading.Lock()  # one block computes at a time; another may be writing

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = np.asarray(batch["image_index"], np.int64)
        needed = self.writer.needed(index)
        if needed:
            pending = np.logical_or.reduce([mask for _, mask in needed])
            computed = np.flatnonzero(pending & (batch["status"] == "ok"))
            results: dict[ModelId, np.ndarray] = {}
            checks: dict[ModelId, tuple[float, float]] = {}
            if len(computed):
                # the block's images at once: uint8, pinned for an asynchronous copy; each model batches them
                inputs = {k: torch.from_numpy(np.ascontiguousarray(batch[k][computed])) for k in self.group.inputs}
                if self.group.device.type == "cuda":
                    inputs = {k: v.pin_memory() for k, v in inputs.items()}
                with self.compute_lock:
                    raw = self.group.run(inputs)
                    if self.group.precision != "fp32":  # reduced precision vs fp32 on the block's first image
                        checks = self.group.deviation(inputs, raw)
                results = {m: self.selections[m].apply(v) for m, v in raw.items()}
            self.writer.write(batch, needed, computed, results, self.group.device.type, self.node, checks)
        for column in self.drop:
            batch.pop(column, None)
        return batch


def _actor_device(pool: PoolPlan, policy: str, node: str) -> str:
    """The device this actor computes on: the plan's, or the CPU where Ray granted a GPU that torch
    cannot see (``--device auto``: warned and recorded; ``--device cuda``: an error naming the node)."""
    if pool.device != "cuda" or torch.cuda.is_available():
        return pool.device
    detail = (f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}, torch {torch.__version__} "
              f"(CUDA build: {torch.version.cuda or 'none'})")
    if policy == "cuda":
        raise DeviceError(f"--device cuda: Ray gave pool '{pool.name}' a GPU on node {node}, but torch sees no CUDA "
                          f"device there ({detail}); fix that node's GPU driver or torch build, or use --device auto "
                          "to compute on CPU where this happens")
    log.warning("pool %s: Ray granted a GPU on node %s but torch sees no CUDA device (%s); computing on CPU",
                pool.name, node, detail)
    return "cpu"


def _resolved(indexes: dict[str, Any]) -> Resolved:
    return Resolved(**{k: np.asarray(v, dtype=np.int64) for k, v in indexes.items() if k != "berg"})


def resolve_selections(config: EncodeConfig, ned, models: list[ModelId], metadata: dict) -> dict[str, dict[str, Any]]:
    """Per model id: the indexes ``--channels/--times/--min-ncsnr`` keep (NED's models), or under
    ``"berg"`` its BERG selection (``--selection``; BERG's models), checked against its metadata
    with BERG's rules so that a bad one fails before anything is written."""
    selection = config.selection()
    berg = config.berg_selections(models)
    out: dict[str, dict[str, Any]] = {}
    for mid in models:
        if mid in berg:
            if not mid.family.uses_vit or ned.entry(mid).format != "berg":
                raise SelectionError(f"--selection: {mid} is one of NED's models; BERG's selections apply to BERG's "
                                     "ViT-B/32 files (select NED's models with --channels/--times/--min-ncsnr)")
            if mid.family.key == "eeg" and (config.channels or config.times):
                raise SelectionError(f"{mid} has both --selection and --channels/--times; give one of them")
            resolve_selection(mid.family.key, metadata[mid], berg[mid], f"--selection for {mid}")
            out[str(mid)] = {"berg": berg[mid]}
        else:
            out[str(mid)] = {k: v.tolist() for k, v in selection.resolve(mid, metadata[mid]).to_arrays().items()}
    return out


# -- the output: checks, ownership, what is left to do ----------------------------------------------
def _check_bucket(config: EncodeConfig, fs, root: str) -> None:
    """Object stores: the output bucket must exist (creating buckets is not the job's business unless
    ``create_output_bucket``); without this check s3fs/gcsfs would create it silently."""
    bucket = bucket_of(fs, root)
    if bucket is None or fs.exists(bucket):
        return
    protocol = config.output.split("://", 1)[0]
    if not config.create_output_bucket:
        raise MissingBucketError(f"output bucket '{protocol}://{bucket}' does not exist (output '{config.output}'); "
                                 "create it, or pass --create-output-bucket")
    log.warning("creating output bucket %s://%s", protocol, bucket)
    fs.mkdir(bucket)


def _check_output(config: EncodeConfig, fs, root: str) -> None:
    """An existing output: replaced (``overwrite``); refused when made with other options; cleared
    when it committed nothing (an attempt that failed early belongs to nobody). Runs under the lease."""
    if config.overwrite:
        if fresh_exists(fs, root):
            log.warning("overwriting %s", config.output)
            _wipe(fs, root)
        return
    job_path = posixpath.join(root, JOB_FILE)
    if not fresh_exists(fs, job_path):
        return
    previous = json.loads(fs.cat_file(job_path))
    if previous.get("identity") == config.identity():
        return
    if not Ledger.read(fs, root):
        log.warning("output %s: replacing an earlier attempt that committed nothing", config.output)
        _clear_attempt(fs, root, previous)
        return
    changed = sorted(k for k in set(previous.get("identity", {})) | set(config.identity())
                     if previous.get("identity", {}).get(k) != config.identity().get(k))
    raise OutputExistsError(f"output '{config.output}' holds a job with other options (differs in: {', '.join(changed)}); "
                            "use another --output, or --overwrite to replace it")


def _wipe(fs, root: str) -> None:
    """--overwrite: everything in the output but the lease this job holds."""
    for entry in fresh_ls(fs, root, detail=False):
        if posixpath.basename(entry.rstrip("/")) != LEASE:
            fs.rm(entry, recursive=True)


def _clear_attempt(fs, root: str, previous: dict[str, Any]) -> None:
    """Remove what a job that committed nothing wrote: its options, its models' metadata and any
    uncommitted parts (only ned-ray's own files; model ids are re-validated, never used as raw paths)."""
    folders = [posixpath.join(root, str(ModelId.parse(m))) for m in previous.get("models", [])]
    for path in [posixpath.join(root, name) for name in (COMMITS, IMAGE_PARTS, LISTING)] + folders:
        if fresh_exists(fs, path):
            fs.rm(path, recursive=True)
    fs.rm(posixpath.join(root, JOB_FILE))


def _ranges(todo: np.ndarray, shard_size: int) -> list[tuple[int, int]]:
    """Contiguous runs of images still to do, cut at shard boundaries."""
    index = np.flatnonzero(todo)
    if len(index) == 0:
        return []
    breaks = np.flatnonzero((np.diff(index) != 1) | (np.diff(index // shard_size) != 0)) + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(index, breaks)]


@dataclass
class _Work:
    """What this run still has to do, from the commit markers of earlier runs."""

    remaining: list[tuple[int, int]]  # [start, stop) ranges to decode, within shard bounds
    committed: dict[str, Ranges]  # per model: images already committed
    images_committed: Ranges
    skipped: int  # images complete before this run

    @classmethod
    def of(cls, ledger: Ledger, models: list[ModelId], n_images: int, shard_size: int) -> "_Work":
        done = {str(m): ledger.done(m, n_images) for m in models}
        images = ledger.done(None, n_images)
        complete = np.logical_and.reduce([images, *done.values()])
        return cls(_ranges(~complete, shard_size), {m: Ranges.from_mask(d) for m, d in done.items()},
                   Ranges.from_mask(images), int(complete.sum()))


# -- planning ---------------------------------------------------------------------------------------
def _connect(config: EncodeConfig) -> bool:
    """Join the Ray cluster of ``--ray-address``/``$RAY_ADDRESS``, or start a local instance for this
    job alone (without Ray's dashboard: ~0.35 GB and ~1 s that a job which stops with it never uses).
    Returns whether this call started a Ray instance."""
    if ray.is_initialized():
        return False
    if config.ray_address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=config.ray_address, ignore_reinit_error=True, log_to_driver=False)
        return False
    ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    return True


def cluster_shape(config: EncodeConfig, executor: str = "ray") -> ClusterShape:
    """The described cluster (``--cluster``), this machine (the in-process executor), or the
    connected Ray cluster with what its autoscaler may add."""
    if executor == "local":
        return ClusterShape.local(config.device)
    if config.cluster:
        return ClusterShape.parse(config.cluster)
    _connect(config)
    return ClusterShape.from_ray()


def _plan(config: EncodeConfig, ned, models: list[ModelId], cluster: ClusterShape, n_shards: int) -> Plan:
    sizes, shared = weights_bytes(ned, models, config.vit_weights)
    return make_plan(config, models, cluster, sizes, shared, n_shards)


def plan_encode(config: EncodeConfig) -> dict[str, Any]:
    """What ``run_encode`` would do, without doing it (``--dry-run``): the plan, the images and what
    an existing output already holds. Reads listings only; writes nothing."""
    ned = config.open_ned(cache=False)
    models = ned.select(config.models)
    config.selection()
    source = _open_source(config)
    fs, root = filesystem(config.output, config.storage_options)
    ledger = Ledger.read(fs, root) if fs.exists(root) else Ledger()
    work = _Work.of(ledger, models, len(source), config.shard_size)
    executor, why = choose_executor(config, len(source))
    plan = _plan(config, ned, models, cluster_shape(config, executor), len(work.remaining))
    todo = sum(b - a for a, b in work.remaining)
    return {"plan": plan, "executor": executor, "executor_reason": why, "n_images": len(source), "to_encode": todo,
            "already_committed": work.skipped,
            "shards": -(-len(source) // config.shard_size), "models": [str(m) for m in models]}


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


def _release_request() -> None:
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[])
    except Exception:  # noqa: BLE001
        pass


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
        probe_file = posixpath.join(root, f".ned-ray-probe-{token}")
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


# -- the job ------------------------------------------------------------------------------------------
def run_encode(config: EncodeConfig, progress: float | None = None, stream: TextIO | None = None) -> dict[str, Any]:
    """Run (or resume) an encode job; returns the manifest plus run statistics.

    ``progress``: print images done, images/s and ETA to ``stream`` (default stderr) every ``progress`` seconds.
    """
    started = time.perf_counter()
    stream = stream or sys.stderr
    ned = config.open_ned(cache=False)  # listings and metadata only: model files are read by the actors
    models = ned.select(config.models)
    metadata = {m: ned.metadata(m) for m in models}
    selections = resolve_selections(config, ned, models, metadata)  # bad ones fail here, before anything is written
    source = _open_source(config)
    for note in source.notes:
        print(note, file=stream, flush=True)
    if source.duplicates:
        first = source.duplicates[0]
        print(f"warning: {config.images} lists {len(source.duplicates)} URI(s) more than once (e.g. {first['uri']} on "
              f"lines {first['lines']}); each is encoded once, and the manifest lists them", file=stream, flush=True)
    with _storage("write the output to", config.output):
        fs, root = filesystem(config.output, config.storage_options)
        _check_bucket(config, fs, root)
        complete = _complete_manifest(config, fs, root, source)
    if complete is not None:
        _check_weights(config, ned, models, fs, root)  # nothing to do: a rerun of a complete job writes nothing, takes no lease
        return {**complete, "run": {"encoded_images": 0, "skipped_images": complete["images"]["total"],
                                    "seconds": time.perf_counter() - started, "images_per_second": 0.0,
                                    "model_groups": [], "plan": "nothing to do"}}
    with _storage("write the output to", config.output):
        fs.makedirs(root, exist_ok=True)
    executor = choose_executor(config, len(source))
    started_ray = executor[0] == "ray" and _connect(config)
    with sigterm_interrupts():  # after connecting: ray.init installs a SIGTERM handler of its own
        lease = Lease(fs, root, config.lease_ttl, _lease_record(config, executor[0]), label=config.output)
        with _storage("take the lease of", config.output):
            lease.acquire(config.force, notify=lambda line: print(line, file=stream, flush=True))
        try:
            return _run_owned(config, ned, models, metadata, selections, source, fs, root, progress, stream, started,
                              executor)
        except KeyboardInterrupt as exc:
            if lease.lost:
                raise LeaseLostError(f"this job lost the output's lease: {lease.lost}; what it committed is kept") from None
            with shielded():
                if executor[0] == "ray":
                    _stop_ray_writers(started_ray, stream)
                raise _interrupted(exc, fs, root, config.output, len(source)) from None
        finally:
            with shielded():
                lease.release()


def _open_source(config: EncodeConfig) -> ImageSource:
    """The job's input listing (the output's own files left out when it lies inside the input)."""
    with _storage("read images at", config.images):
        return open_source(config.images, config.storage_options, column=config.image_column, exclude=config.output)


def _interrupted(exc: KeyboardInterrupt, fs, root: str, output: str, n_images: int) -> JobInterrupted:
    """The line an interrupted job ends with: what is committed, and how to go on."""
    signum = exc.signum if isinstance(exc, JobInterrupted) else signal.SIGINT
    try:
        committed = f"{Ledger.read(fs, root).images_committed()} of {n_images} images committed"
    except Exception:  # noqa: BLE001 - the count is for the message only
        committed = "what was committed is kept"
    return JobInterrupted(signum, f"interrupted ({signal.Signals(signum).name}): {committed} in '{output}'; rerun "
                                  "the same command to resume")


def _stop_ray_writers(started_ray: bool, stream: TextIO, timeout: float = 30.0) -> None:
    """Before the lease is released: no actor of this job may still write. Ray Data kills its actors
    when its execution is interrupted; wait until Ray reports them dead (and stop a Ray instance this
    job started itself)."""
    job = ray.get_runtime_context().get_job_id()
    deadline = time.monotonic() + timeout
    try:
        while ray_job_actors_alive(job) and time.monotonic() < deadline:
            time.sleep(0.2)
    except Exception as exc:  # noqa: BLE001 - Ray itself may be going down with the interrupt
        log.info("could not list this job's actors: %s", exc)
    if started_ray:
        ray.shutdown()


def _lease_record(config: EncodeConfig, executor: str) -> dict[str, Any]:
    """Who writes the output: the job's options, its executor and (Ray Data) its Ray job; the process
    itself is added by :class:`~.lease.Lease`."""
    record = {"executor": executor, "output": config.output, "images": config.images, "models": config.models}
    if executor == "ray":
        context = ray.get_runtime_context()
        record.update(ray_job_id=context.get_job_id(), ray_session=context.get_session_name(),
                      ray_raylets=local_ray_processes())
    return record


def _complete_manifest(config: EncodeConfig, fs, root: str, source: ImageSource) -> dict[str, Any] | None:
    """The manifest of an output this exact job already completed, undamaged; else None."""
    if config.overwrite or not fresh_exists(fs, posixpath.join(root, MANIFEST)):
        return None
    job = json.loads(fs.cat_file(posixpath.join(root, JOB_FILE))) if fresh_exists(fs, posixpath.join(root, JOB_FILE)) else {}
    if job.get("identity") != config.identity():
        return None
    if job.get("listing", {}).get("fingerprint") != listing_fingerprint(source.listing):
        return None
    if Ledger.read(fs, root).damaged(fs, root):
        return None
    return json.loads(fs.cat_file(posixpath.join(root, MANIFEST)))


def _reconcile_listing(config: EncodeConfig, fs, root: str, source: ImageSource, ledger: Ledger,
                       stream: TextIO) -> ImageSource:
    """The listing this run works on: the output's recorded one plus appended images (invariant 7)."""
    previous = read_listing(fs, root)
    if previous is None:
        if ledger:
            raise ListingChangedError(f"output '{config.output}' has commits but no recorded listing (written by an "
                                      "older ned-ray); use --overwrite to start over, or another --output")
        return source
    if not ledger:  # nothing committed: the old listing binds nothing
        return source
    listing, added = reconcile(previous, source.listing, config.output)
    if added:
        print(f"{config.output}: {added} image(s) added to the input since the output was started: encoding them "
              f"(indexes {previous.num_rows} to {listing.num_rows - 1}); the {previous.num_rows} before are kept",
              file=stream, flush=True)
    return source.with_listing(listing)


def _check_marker_ids(ledger: Ledger, source: ImageSource, output: str) -> None:
    """Markers hold the ids of their rows: they must be the listing's ids at those indexes."""
    ids = source.listing.column("image_id")
    for key, marker in ledger.entries():
        index = np.asarray(marker["image_index"], np.int64)
        held = marker.get("image_id")
        if held is None or (len(index) and (index.max() >= len(ids) or ids.take(index).to_pylist() != list(held))):
            raise ListingChangedError(f"output '{output}': commit {key}/{marker['piece']} holds other images than its "
                                      "recorded listing; the output is inconsistent: use --overwrite to start over")


def _run_owned(config: EncodeConfig, ned, models: list[ModelId], metadata: dict, selections: dict,
               source: ImageSource, fs, root: str, progress: float | None, stream: TextIO,
               started: float, executor: tuple[str, str]) -> dict[str, Any]:
    """Everything that writes the output: runs under its lease, on Ray Data or in this process
    (``executor``: see :func:`~.local.choose_executor`)."""
    with _storage("read the output at", config.output):
        _check_output(config, fs, root)
        ledger = Ledger.read(fs, root)
        source = _reconcile_listing(config, fs, root, source, ledger, stream)
        n_images = len(source)
        _check_marker_ids(ledger, source, config.output)
        damaged = ledger.damaged(fs, root)
        if damaged:
            print(f"warning: {len(damaged)} committed piece(s) of {config.output} are damaged (e.g. {damaged[0][2]}); "
                  "encoding them again", file=stream, flush=True)
            ledger = ledger.drop(fs, root, damaged)
    work = _Work.of(ledger, models, n_images, config.shard_size)
    job = {"ned_ray_version": __version__, "identity": config.identity(), "options": config.to_json(),
           "models": [str(m) for m in models], "n_images": n_images,
           "listing": {"file": LISTING, "images": n_images, "fingerprint": listing_fingerprint(source.listing)},
           "duplicates": source.duplicates[:1000]}
    with _storage("write the output to", config.output):  # also proves the output is writable
        write_listing(fs, root, source.listing)
        write_bytes(fs, posixpath.join(root, JOB_FILE), json.dumps(job, indent=2).encode())
    manifest_path = posixpath.join(root, MANIFEST)
    if fresh_exists(fs, manifest_path):
        fs.rm(manifest_path)

    with _storage("write the output to", config.output):
        _check_weights(config, ned, models, fs, root, metadata, selections, ledger)

    plan = None
    encoded = sum(stop - start for start, stop in work.remaining)
    local = executor[0] == "local"
    if work.remaining:
        plan = _plan(config, ned, models, cluster_shape(config, executor[0]), len(work.remaining))
        run = run_local if local else _run_pipeline
        try:
            if not local:
                plan = _await_devices(plan, config, ned, models, len(work.remaining), stream)
                with _storage("check paths on the cluster's nodes for", config.output):
                    check_paths_on_nodes(config, source, fs, root, plan, stream)
            if progress:
                with ProgressReporter(fs, root, encoded, progress, stream=stream):
                    run(config, source, plan, work, selections, n_images)
            else:
                run(config, source, plan, work, selections, n_images)
        except Exception as exc:
            ours = _job_error(exc)
            if ours is None:
                raise
            raise ours from None
        finally:
            if plan.wait_for_gpus and not local:
                _release_request()
    with _storage("finish the output", config.output):
        ledger = Ledger.read(fs, root)
        _warn_fallbacks(ledger, stream)
        manifest = finalize(fs, root, config.output, models, config.formats, n_images,
                            {**job, "plan": plan.to_json() if plan else None,
                             "executor": {"name": executor[0], "reason": executor[1]}}, ledger)
    elapsed = time.perf_counter() - started
    return {**manifest, "run": {"encoded_images": encoded, "skipped_images": work.skipped, "seconds": elapsed,
                                "executor": executor[0], "executor_reason": executor[1],
                                "images_per_second": encoded / elapsed if elapsed > 0 else 0.0,
                                "model_groups": [p.models for p in plan.pools] if plan else [],
                                "plan": plan.describe() if plan else "nothing to do"}}


def _check_weights(config: EncodeConfig, ned, models: list[ModelId], fs, root: str, metadata: dict | None = None,
                   selections: dict | None = None, ledger: Ledger | None = None) -> None:
    """Identify every model file once (no download; local files hashed once per version) and refuse
    weights other than those the output was made with; with ``metadata``, write what is missing.
    A model with nothing committed (``ledger``) is bound to no weights yet: a file repaired after a
    failed load replaces the recorded one."""
    files_seen: dict[str, dict[str, Any]] = {}
    for mid in models:
        recorded = recorded_files(fs, root, mid)
        if recorded is not None and ledger is not None and not ledger.model_markers(mid):
            recorded = None  # nothing of this model was written with the recorded weights
        files = model_files(ned, mid, config, files_seen, recorded)
        if recorded is not None and not all(_same_file(f, g) for f, g in zip(files, recorded + [{}] * len(files))):
            changed = next(f["file"] for f, g in zip(files, recorded + [{}] * len(files)) if not _same_file(f, g))
            raise OutputExistsError(f"output '{config.output}' was made with other weights for {mid} ({changed} changed); "
                                    "use another --output, or --overwrite to replace it")
        if recorded is None and metadata is not None:
            write_model_metadata(fs, root, mid, metadata[mid], config, files, _resolved(selections[str(mid)]),
                                 ned.entry(mid).format, selections[str(mid)].get("berg"))


def _same_file(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same content: equal sha256 where both have one, else equal size and store version."""
    if "sha256" in a and "sha256" in b:
        return a["sha256"] == b["sha256"]
    keys = (set(a) & set(b)) - {"file", "mtime"}
    return bool(keys) and all(a[k] == b[k] for k in keys)


def _await_devices(plan: Plan, config: EncodeConfig, ned, models: list[ModelId], n_shards: int,
                   stream: TextIO) -> Plan:
    """Wait for GPUs when the plan needs some the cluster does not have yet."""
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
    message = (f"no GPU joined the Ray cluster within --gpu-wait {config.gpu_wait:g}s; "
               f"{plan.cluster.describe()}")
    if config.device == "cuda":
        raise DeviceError(f"--device cuda: {message}; start GPU workers (check `ray status` and the autoscaler), "
                          "raise --gpu-wait, or use --device auto/cpu")
    print(f"warning: {message}; --device auto continues on CPU", file=stream, flush=True)
    return _plan(replace(config, device="cpu"), ned, models, cluster_shape(config), n_shards)


def _warn_fallbacks(ledger: Ledger, stream: TextIO) -> None:
    """Once per job: pools planned on GPUs whose actors computed on CPU (recorded in the manifest)."""
    from .commit import device_summary

    fell = [g for g in device_summary(ledger) if g["planned"] == "cuda" and "cpu" in g["ran_on"]]
    if fell:
        nodes = sorted({n for g in fell for n in g["nodes"]})
        print(f"warning: model group(s) {', '.join(g['pool'] or g['writer'] for g in fell)} were planned on GPUs but "
              f"computed on CPU: torch saw no CUDA device on node(s) {', '.join(nodes)} (see 'devices' in "
              "_manifest.json)", file=stream, flush=True)


def _run_pipeline(config: EncodeConfig, source: ImageSource, plan: Plan, work: _Work,
                  selections: dict[str, dict[str, Any]], n_images: int) -> None:
    """Execute the plan as one Ray Data graph."""
    _connect(config)
    kinds = tuple(k for k in ("fwrf", "vit") if any(k in p.inputs for p in plan.pools))
    shards = [{"start": start, "stop": stop} for start, stop in work.remaining]
    context = ray.data.DataContext.get_current()
    context.execution_options.resource_limits = context.execution_options.resource_limits.copy(
        object_store_memory=plan.queued_bytes)  # decoding runs ahead of the actors by a few blocks, no more
    context.raise_original_map_exception = True  # our errors (a full disk) reach the driver as themselves
    ds = ray.data.from_items(shards, override_num_blocks=len(shards))
    listing = ray.put(source.listing.select(["image_id", "uri", "skip"]))  # once, shared by every decode task
    ds = ds.map_batches(DecodeShard(source.description(), listing, kinds, config.non_square, config.max_pixels),
                        batch_size=1, num_cpus=plan.decode_cpus,
                        compute=ray.data.TaskPoolStrategy(size=plan.decode_concurrency))
    for pool in plan.pools:
        ds = ds.map_batches(
            GroupEncoder,
            fn_constructor_args=(config, pool, {m: selections[m] for m in pool.models},
                                 {m: work.committed[m] for m in pool.models}, n_images),
            batch_size=pool.batch_rows,
            compute=ray.data.ActorPoolStrategy(
                min_size=pool.min_actors, max_size=pool.max_actors, initial_size=pool.initial_actors,
                max_tasks_in_flight_per_actor=pool.max_tasks_in_flight,
                max_concurrent_calls_per_actor=pool.concurrent_calls,
                enable_true_multi_threading=pool.concurrent_calls > 1),
            num_gpus=pool.gpus_per_actor or None,
            num_cpus=pool.cpus_per_actor,
        )
    with _ray_data_errors_quiet():
        ds.write_datasink(ImagesSink(config.output, config.storage_options, config.shard_size, n_images,
                                     work.images_committed), ray_remote_args={"num_cpus": plan.write_cpus})
