"""The encode job on Ray Data, top to bottom: list -> read+decode -> encode (actor pools) -> write.

    inputs ──list/sort──> shards (driver) ──DecodeShard──> rows with uint8 inputs (CPU tasks)
           ──GroupEncoder per model group──> + response columns (actors: models loaded once)
           ──ResponseSink──> parts + commit markers ──finalize──> images.parquet, _manifest.json (last)

A rerun of the same command skips committed images; other options on an existing output are refused
unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch

from .. import __version__
from ..ids import ModelId, UnknownModelError, select
from ..models.group import ModelGroup, ModelLoadError
from ..nedfmt import MissingFileError
from ..safeload import UnsafePickleError
from ..selection import Resolved
from ..storage import bucket_of, filesystem
from .config import EncodeConfig
from .decode import DecodeShard
from .progress import ProgressReporter
from .metadata import model_files, recorded_files, write_model_metadata
from .sink import (COMMITS, IMAGE_PARTS, JOB_FILE, MANIFEST, ResponseSink, finalize, precision_column, read_commits, response_column,
                   write_bytes)
from .sources import NoImagesError, open_source

__all__ = ["run_encode", "GroupEncoder", "plan_groups", "OutputExistsError", "MissingBucketError", "StorageError"]

log = logging.getLogger("ned_ray")


class OutputExistsError(ValueError):
    """The output folder holds a job with other options."""


class StorageError(OSError):
    """An input, model or output location cannot be reached, read or written."""


FAULT_ENV = "NED_RAY_FAULT_INJECTION"  # testing hook: "actor-exit-once:<marker file>"


@contextmanager
def _storage(what: str, uri: str):
    """Turn a filesystem/network failure on ``uri`` into one StorageError line."""
    try:
        yield
    except (NoImagesError, MissingFileError, OutputExistsError, UnknownModelError, ValueError):
        raise
    except Exception as exc:  # botocore, gcsfs, aiohttp and OS errors alike
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StorageError(f"cannot {what} '{uri}': {type(exc).__name__}: {reason}") from exc


def _job_error(exc: BaseException) -> Exception | None:
    """Our own error inside a Ray failure (an actor that could not load its models), as one line."""
    text = str(exc)
    for cls in (ModelLoadError, UnsafePickleError, MissingFileError):
        found = re.search(rf"{cls.__name__}: (.+)", text)
        if found:
            return cls(found.group(1).strip())
    return None


def plan_groups(models: list[ModelId], fmri_per_actor: int) -> list[list[ModelId]]:
    """Model groups, one actor pool each: all EEG subjects together; fMRI models in groups of ``fmri_per_actor``."""
    eeg = [m for m in models if m.modality == "eeg"]
    fmri = [m for m in models if m.modality == "fmri"]
    size = fmri_per_actor if fmri_per_actor > 0 else max(1, len(fmri))
    groups = [fmri[i:i + size] for i in range(0, len(fmri), size)]
    return groups + ([eeg] if eeg else [])


class GroupEncoder:
    """Ray actor: hosts one model group (loaded once, in ``__init__``) and adds its response columns."""

    def __init__(self, config: EncodeConfig, model_ids: list[str], device: str, cpu_threads: int,
                 selections: dict[str, dict[str, list[int]]] | None = None) -> None:
        if device == "cpu":
            torch.set_num_threads(cpu_threads)  # Ray starts workers with one thread
        self.group = ModelGroup(config.open_ned(), model_ids, device, config.vit_weights, config.precision,
                                config.batch_size)
        log.info("model group %s on %s: batch sizes %s", model_ids, self.group.device, self.group.batch_sizes)
        self.selections = {m: _resolved((selections or {}).get(str(m), {})) for m in self.group.model_ids}
        self.shapes = {m: self.selections[m].shape(self.group.output_shape(m)) for m in self.group.model_ids}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _maybe_fail()
        ok = np.flatnonzero(batch["status"] == "ok")
        n = len(batch["status"])
        outputs = {m: np.full((n, *self.shapes[m]), np.nan, np.float32) for m in self.group.model_ids}
        checks = {m: np.full((n, 2), np.nan) for m in self.group.model_ids} if self.group.precision != "fp32" else {}
        if len(ok):
            # the block's images at once: uint8, pinned for an asynchronous copy; each model batches them
            inputs = {kind: torch.from_numpy(np.ascontiguousarray(batch[kind][ok])) for kind in self.group.inputs}
            if self.group.device.type == "cuda":
                inputs = {k: v.pin_memory() for k, v in inputs.items()}
            results = self.group.run(inputs)
            for mid, values in results.items():
                outputs[mid][ok] = self.selections[mid].apply(values)
            for mid, (deviation, std) in (self.group.deviation(inputs, results).items() if checks else ()):
                checks[mid][ok[0]] = deviation, std  # reduced precision vs fp32 on the block's first image
        for mid, values in outputs.items():
            batch[response_column(mid)] = values
        for mid, values in checks.items():
            batch[precision_column(mid)] = values
        return batch


def _maybe_fail() -> None:
    """Testing hook: with NED_RAY_FAULT_INJECTION=actor-exit-once:MARKER the first batch kills its actor."""
    spec = os.environ.get(FAULT_ENV, "")
    if spec.startswith("actor-exit-once:"):
        marker = spec.split(":", 1)[1]
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)  # the process dies mid-batch, as on a lost node or an OOM kill


@dataclass
class _Plan:
    models: list[ModelId]
    groups: list[list[ModelId]]
    n_images: int
    remaining: list[tuple[int, int]]  # [start, stop) ranges still to encode, within shard bounds
    selections: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # model -> kept indexes per axis


def _resolved(indexes: dict[str, list[int]]) -> Resolved:
    return Resolved(**{k: np.asarray(v, dtype=np.int64) for k, v in indexes.items()})


class MissingBucketError(ValueError):
    """The output's bucket does not exist (and the job was not asked to create it)."""


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
    job_path = posixpath.join(root, JOB_FILE)
    if not fs.exists(job_path):
        return
    previous = json.loads(fs.cat_file(job_path))
    if previous.get("identity") == config.identity():
        return
    if not read_commits(fs, root):  # nothing committed (an earlier attempt failed early): nobody's output yet
        log.warning("output %s: replacing an earlier attempt that committed nothing", config.output)
        _clear_attempt(fs, root, previous)
        return
    if not config.overwrite:
        changed = sorted(k for k in set(previous.get("identity", {})) | set(config.identity())
                         if previous.get("identity", {}).get(k) != config.identity().get(k))
        raise OutputExistsError(f"output '{config.output}' holds a job with other options (differs in: {', '.join(changed)}); "
                                "use another --output, or --overwrite to replace it")
    log.warning("overwriting %s", config.output)
    fs.rm(root, recursive=True)


def _clear_attempt(fs, root: str, previous: dict[str, Any]) -> None:
    """Remove what a job that committed nothing wrote: its options, its models' metadata and any
    uncommitted parts (only ned-ray's own files; model ids are re-validated, never used as raw paths)."""
    folders = [posixpath.join(root, str(ModelId.parse(m))) for m in previous.get("models", [])]
    for path in [posixpath.join(root, name) for name in (COMMITS, IMAGE_PARTS)] + folders:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    fs.rm(posixpath.join(root, JOB_FILE))


def _remaining(done: np.ndarray, shard_size: int) -> list[tuple[int, int]]:
    """Contiguous runs of not-done images, cut at shard boundaries."""
    todo = np.flatnonzero(~done)
    if len(todo) == 0:
        return []
    breaks = np.flatnonzero((np.diff(todo) != 1) | (np.diff(todo // shard_size) != 0)) + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(todo, breaks)]


def run_encode(config: EncodeConfig, progress: float | None = None) -> dict[str, Any]:
    """Run (or resume) an encode job; returns the manifest plus run statistics.

    ``progress``: print images done, images/s and ETA to stderr every ``progress`` seconds.
    """
    started = time.perf_counter()
    opts = config.storage_options
    ned = config.open_ned()
    models = select(list(ned.catalogue), config.models)
    selection = config.selection()  # a selection that keeps nothing fails here, before anything is written
    metadata = {m: ned.metadata(m) for m in models}
    selections = {str(m): {k: v.tolist() for k, v in selection.resolve(m, metadata[m]).to_arrays().items()}
                  for m in models}
    with _storage("read images at", config.images):
        source = open_source(config.images, opts)
    with _storage("write the output to", config.output):
        fs, root = filesystem(config.output, opts)
        _check_bucket(config, fs, root)
        _check_output(config, fs, root)
        fs.makedirs(root, exist_ok=True)

    done = np.zeros(len(source), dtype=bool)
    for commit in read_commits(fs, root):
        done[np.asarray(commit["image_index"], np.int64)] = True
    plan = _Plan(models, plan_groups(models, config.fmri_models_per_actor), len(source),
                 _remaining(done, config.shard_size), selections)
    job = {"ned_ray_version": __version__, "identity": config.identity(), "options": config.to_json(),
           "models": [str(m) for m in models], "n_images": len(source)}
    if not fs.exists(posixpath.join(root, JOB_FILE)):
        with _storage("write the output to", config.output):  # also proves the output is writable
            write_bytes(fs, posixpath.join(root, JOB_FILE), json.dumps(job, indent=2).encode())
    fs.rm(posixpath.join(root, MANIFEST)) if fs.exists(posixpath.join(root, MANIFEST)) and plan.remaining else None

    encoded = sum(stop - start for start, stop in plan.remaining)
    hashed: dict[str, dict[str, Any]] = {}
    for mid in models:  # hashes every model file once: fails early if one is missing, refuses changed weights
        files = model_files(ned, mid, config, hashed)
        recorded = recorded_files(fs, root, mid)
        if recorded is not None and [f["sha256"] for f in recorded] != [f["sha256"] for f in files]:
            changed = next(f["file"] for f, g in zip(files, recorded + [{}] * len(files)) if f["sha256"] != g.get("sha256"))
            raise OutputExistsError(f"output '{config.output}' was made with other weights for {mid} ({changed} changed); "
                                    "use another --output, or --overwrite to replace it")
        if recorded is None:
            write_model_metadata(fs, root, mid, metadata[mid], config, files, _resolved(plan.selections[str(mid)]),
                                 ned.entry(mid).format)
    del metadata  # NED's metadata (ROI mask volumes) is not needed while the pipeline runs
    if plan.remaining:
        try:
            if progress:
                with ProgressReporter(fs, root, encoded, progress):
                    _run_pipeline(config, source, plan)
            else:
                _run_pipeline(config, source, plan)
        except Exception as exc:
            ours = _job_error(exc)
            if ours is None:
                raise
            raise ours from None
    manifest_path = posixpath.join(root, MANIFEST)
    if not plan.remaining and fs.exists(manifest_path):  # already complete: a rerun writes nothing
        manifest = json.loads(fs.cat_file(manifest_path))
    else:
        manifest = finalize(config.output, opts, models, config.formats, len(source), job)
    elapsed = time.perf_counter() - started
    return {**manifest, "run": {"encoded_images": encoded, "skipped_images": int(done.sum()), "seconds": elapsed,
                                "images_per_second": encoded / elapsed if elapsed > 0 else 0.0,
                                "model_groups": [[str(m) for m in g] for g in plan.groups]}}


def cpu_threads(config: EncodeConfig, n_groups: int) -> int:
    """Torch threads for each CPU actor: the option, or the smallest node's CPUs shared by the groups."""
    if config.cpu_threads > 0:
        return config.cpu_threads
    cpus = [n["Resources"].get("CPU", 1) for n in ray.nodes() if n.get("Alive")] or [os.cpu_count() or 1]
    return max(1, int(min(cpus)) // max(1, n_groups))


DECODE_CPUS = 1.0  # Ray CPUs of one decode task
WRITE_CPUS = 0.5  # Ray CPUs of one write task


def actor_cpus(cluster_cpus: float, n_actors: int, use_gpu: bool) -> float:
    """Ray CPUs reserved by each model actor, so that the actors never hold the CPUs that the decode
    and write tasks feeding them need (actors waiting for blocks that no task can be scheduled to make
    would hang the job). The reservation is logical: an actor's torch threads are ``cpu_threads``."""
    wanted = 1.0 if use_gpu else 0.5
    free = cluster_cpus - DECODE_CPUS - WRITE_CPUS
    if free <= 0:
        raise ValueError(f"the Ray cluster has {cluster_cpus:g} CPUs; the encode job needs at least "
                         f"{DECODE_CPUS + WRITE_CPUS + 0.5:g} (decode, write and model actors)")
    return round(min(wanted, free / max(1, n_actors)), 4)


def _run_pipeline(config: EncodeConfig, source, plan: _Plan) -> None:
    if not ray.is_initialized():
        ray.init(address=config.ray_address, ignore_reinit_error=True, log_to_driver=False)
    gpus = ray.cluster_resources().get("GPU", 0)
    if config.device == "cuda" and gpus == 0:
        raise ValueError("--device cuda was requested but the Ray cluster has no GPUs; use --device auto or cpu")
    use_gpu = gpus > 0 and config.device != "cpu"
    threads = cpu_threads(config, len(plan.groups))
    per_actor_cpus = actor_cpus(ray.cluster_resources().get("CPU", 0), len(plan.groups) * config.actors_per_group,
                                use_gpu)
    kinds = tuple(sorted({k for g in plan.groups for k in (["fwrf"] if any(m.modality == "fmri" for m in g) else [])
                          + (["vit"] if any(m.modality == "eeg" for m in g) else [])}))

    items = source.shard_items(plan.remaining)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(DecodeShard(source.description(), kinds, config.non_square, config.max_pixels),
                        batch_size=1, num_cpus=DECODE_CPUS)
    for group in plan.groups:
        ds = ds.map_batches(
            GroupEncoder,
            fn_constructor_args=(config, [str(m) for m in group], "cuda" if use_gpu else "cpu", threads,
                                 {str(m): plan.selections[str(m)] for m in group}),
            batch_size=None,
            compute=ray.data.ActorPoolStrategy(size=config.actors_per_group),
            num_gpus=config.gpus_per_actor if use_gpu else None,
            num_cpus=per_actor_cpus,
            **({"runtime_env": {"env_vars": {FAULT_ENV: os.environ[FAULT_ENV]}}} if os.environ.get(FAULT_ENV) else {}),
        )
    ds = ds.drop_columns(list(kinds))
    ds.write_datasink(ResponseSink(config.output, config.storage_options, plan.models, config.formats,
                                   config.shard_size, plan.n_images), ray_remote_args={"num_cpus": WRITE_CPUS})
