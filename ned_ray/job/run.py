"""The encode job, top to bottom: select models -> list images -> own the output -> plan -> execute -> finalize.

    inputs ──list/sort──> shards ──decode──> rows with uint8 inputs ──encode per model group──> parts
           ──image sink──> images' status ──finalize──> images.parquet, _manifest.json (last)

What runs where is decided first, as data (:mod:`.plan`), from what the cluster has or can launch
(:mod:`.cluster`); an executor (:mod:`.executors`: in this process, or on Ray Data) runs the stages
(:mod:`.stages`) of that plan. A rerun of the same command skips what is committed (:mod:`.commit`);
other options on an existing output are refused unless ``overwrite``. Importing this module loads no Ray.
"""

from __future__ import annotations

import json
import logging
import posixpath
import signal
import sys
import time
from contextlib import contextmanager
from typing import Any, TextIO

import numpy as np

from .. import __version__
from ..errors import (
    JobInterrupted,
    LeaseLostError,
    ListingChangedError,
    MissingBucketError,
    NedRayError,
    OutputExistsError,
    SelectionError,
    storage_error,
)
from ..ids import ModelId
from ..models.group import weights_bytes
from ..models.vit_heads import resolve_selection
from ..storage import bucket_of, filesystem
from .cluster import ClusterShape
from .commit import (
    COMMITS,
    IMAGE_PARTS,
    JOB_FILE,
    LEASE,
    LISTING,
    MANIFEST,
    Ledger,
    device_summary,
    finalize,
    fresh_exists,
    fresh_ls,
    listing_fingerprint,
    read_listing,
    reconcile,
    write_bytes,
    write_listing,
)
from .config import EncodeConfig
from .executors import Executor, Work, build_stages, choose_executor
from .interrupts import shielded, sigterm_interrupts
from .lease import Lease
from .metadata import model_files, recorded_files, write_model_metadata
from .plan import Plan, make_plan
from .progress import ProgressReporter
from .sources import ImageSource, open_source
from .stages import resolved

__all__ = ["run_encode", "plan_encode", "resolve_selections"]

log = logging.getLogger("ned_ray")


@contextmanager
def _storage(what: str, uri: str):
    """Turn a filesystem/network failure on ``uri`` into one StorageError line."""
    try:
        yield
    except NedRayError:
        raise
    except Exception as exc:  # botocore, gcsfs, aiohttp and OS errors alike
        raise storage_error(what, uri, exc) from exc


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


def _plan(config: EncodeConfig, ned, models: list[ModelId], cluster: ClusterShape, n_shards: int) -> Plan:
    """The plan for these models on ``cluster`` (pure: :func:`~.plan.make_plan`)."""
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
    work = Work.of(ledger, models, len(source), config.shard_size)
    executor = choose_executor(config, len(source))
    plan = _plan(config, ned, models, executor.cluster_shape(), len(work.remaining))
    return {"plan": plan, "executor": executor.name, "executor_reason": executor.reason, "n_images": len(source),
            "to_encode": work.images,
            "already_committed": work.skipped,
            "shards": -(-len(source) // config.shard_size), "models": [str(m) for m in models]}


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
    executor.start()
    with sigterm_interrupts():  # after the executor's start: ray.init installs a SIGTERM handler of its own
        lease = Lease(fs, root, config.lease_ttl, _lease_record(config, executor), label=config.output)
        with _storage("take the lease of", config.output):
            lease.acquire(config.force, notify=lambda line: print(line, file=stream, flush=True))
        try:
            return _run_owned(config, ned, models, metadata, selections, source, fs, root, progress, stream, started,
                              executor)
        except KeyboardInterrupt as exc:
            if lease.lost:
                raise LeaseLostError(f"this job lost the output's lease: {lease.lost}; what it committed is kept") from None
            with shielded():
                executor.stop_writers(stream)
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


def _lease_record(config: EncodeConfig, executor: Executor) -> dict[str, Any]:
    """Who writes the output: the job's options, its executor and (Ray Data) its Ray job; the process
    itself is added by :class:`~.lease.Lease`."""
    return {"executor": executor.name, "output": config.output, "images": config.images, "models": config.models,
            **executor.lease_fields()}


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
               started: float, executor: Executor) -> dict[str, Any]:
    """Everything that writes the output: runs under its lease, on the chosen executor."""
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
    work = Work.of(ledger, models, n_images, config.shard_size)
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
    encoded = work.images
    if work.remaining:
        plan = _plan(config, ned, models, executor.cluster_shape(), len(work.remaining))
        try:
            plan = executor.prepare(plan, lambda c, cluster: _plan(c, ned, models, cluster, len(work.remaining)),
                                    source, fs, root, stream)
            stages = build_stages(config, source, plan, work, selections, n_images, executor.shared_listing(source))
            if progress:
                with ProgressReporter(fs, root, encoded, progress, stream=stream):
                    executor.run(plan, stages)
            else:
                executor.run(plan, stages)
        except Exception as exc:
            ours = executor.failure(exc)
            if ours is None:
                raise
            raise ours from None
        finally:
            executor.release(plan)
    with _storage("finish the output", config.output):
        ledger = Ledger.read(fs, root)
        _warn_fallbacks(ledger, stream)
        manifest = finalize(fs, root, config.output, models, config.formats, n_images,
                            {**job, "plan": plan.to_json() if plan else None,
                             "executor": {"name": executor.name, "reason": executor.reason}}, ledger)
    elapsed = time.perf_counter() - started
    return {**manifest, "run": {"encoded_images": encoded, "skipped_images": work.skipped, "seconds": elapsed,
                                "executor": executor.name, "executor_reason": executor.reason,
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
            write_model_metadata(fs, root, mid, metadata[mid], config, files, resolved(selections[str(mid)]),
                                 ned.entry(mid).format, selections[str(mid)].get("berg"))


def _same_file(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same content: equal sha256 where both have one, else equal size and store version."""
    if "sha256" in a and "sha256" in b:
        return a["sha256"] == b["sha256"]
    keys = (set(a) & set(b)) - {"file", "mtime"}
    return bool(keys) and all(a[k] == b[k] for k in keys)


def _warn_fallbacks(ledger: Ledger, stream: TextIO) -> None:
    """Once per job: pools planned on GPUs whose actors computed on CPU (recorded in the manifest)."""
    fell = [g for g in device_summary(ledger) if g["planned"] == "cuda" and "cpu" in g["ran_on"]]
    if fell:
        nodes = sorted({n for g in fell for n in g["nodes"]})
        print(f"warning: model group(s) {', '.join(g['pool'] or g['writer'] for g in fell)} were planned on GPUs but "
              f"computed on CPU: torch saw no CUDA device on node(s) {', '.join(nodes)} (see 'devices' in "
              "_manifest.json)", file=stream, flush=True)
