"""The encode job, top to bottom: select models -> list images -> own the output -> plan -> execute -> commit.

    inputs ──list/sort──> shards ──decode──> rows with uint8 inputs ──encode per model group──> parts
           ──image sink──> images' status ──commit──> images.parquet, _manifest.json (last)

What runs where is decided first, as data (:mod:`.plan`), from what the cluster has or can launch
(:mod:`.cluster`); an executor (:mod:`.executors`: in this process, or on Ray Data) runs the stages
(:mod:`.stages`) of that plan; the output is one transaction (:mod:`.commit`). A rerun of the same
command skips what is committed; other options on an existing output are refused unless
``overwrite``. Importing this module loads no Ray.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ..errors import SelectionError
from ..ids import ModelId
from ..modeldir import open_ned
from ..models.group import weights_bytes
from ..selection import berg_selections
from ..selection import resolve_selection as resolve_berg_selection
from ..storage import filesystem
from ..text import printable
from .cluster import ClusterShape
from .commit import Ledger, OutputTransaction, Work, read_listing
from .commit.transaction import storage_errors
from .executors import Executor, build_stages, choose_executor
from .inputs import ImageSource, open_source
from .interrupts import shielded, sigterm_interrupts
from .options import EncodeConfig
from .plan import Plan, make_plan
from .progress import ProgressReporter

__all__ = ["run_encode", "plan_encode", "resolve_selections"]


def resolve_selections(config: EncodeConfig, ned, models: list[ModelId], metadata: dict) -> dict[str, dict[str, Any]]:
    """Per model id: the indexes ``--channels/--times/--min-ncsnr`` keep (NED's models), or under
    ``"berg"`` its BERG selection (``--selection``; BERG's models), checked against its metadata
    with BERG's rules so that a bad one fails before anything is written."""
    selection = config.selection()
    berg = berg_selections(config.berg_selection, models)
    out: dict[str, dict[str, Any]] = {}
    for mid in models:
        if mid in berg:
            if not mid.family.has_heads or ned.entry(mid).format != "berg":
                raise SelectionError(f"--selection: {mid} is one of NED's models; BERG's selections apply to BERG's "
                                     "files (select NED's models with --channels/--times/--min-ncsnr)")
            if "channels" in mid.family.ned_options and (config.channels or config.times):
                raise SelectionError(f"{mid} has both --selection and --channels/--times; give one of them")
            resolve_berg_selection(mid.family.key, metadata[mid], berg[mid], f"--selection for {mid}")
            out[str(mid)] = {"berg": berg[mid]}
        else:
            out[str(mid)] = {k: v.tolist() for k, v in selection.resolve(mid, metadata[mid]).to_arrays().items()}
    return out


def _plan(config: EncodeConfig, ned, models: list[ModelId], cluster: ClusterShape, n_shards: int) -> Plan:
    """The plan for these models on ``cluster`` (pure: :func:`~.plan.make_plan`)."""
    sizes, shared = weights_bytes(ned, models, config.vit_weights, config.alexnet_weights)
    return make_plan(config, models, cluster, sizes, shared, n_shards)


def _open_source(config: EncodeConfig) -> ImageSource:
    """The job's input listing (the output's own files left out when it lies inside the input; tar
    shards the output's recorded listing holds, unchanged, not indexed again)."""
    with storage_errors("read images at", config.images):
        return open_source(config.images, config.storage_options, column=config.image_column, exclude=config.output,
                           id_column=config.id_column, known=_recorded_listing(config))


def _recorded_listing(config: EncodeConfig):
    """The listing an existing output recorded, or None (none yet, ``--overwrite``, or unreadable: the
    transaction says why later). Only a cache: the transaction reconciles the listing under its lease."""
    if config.overwrite:
        return None
    try:
        fs, root = filesystem(config.output, config.storage_options)
        return read_listing(fs, root)
    except Exception:  # noqa: BLE001 - a cache: any failure here means no cache
        return None


def plan_encode(config: EncodeConfig) -> dict[str, Any]:
    """What ``run_encode`` would do, without doing it (``--dry-run``): the plan, the images and what
    an existing output already holds. Reads listings only; writes nothing."""
    ned = open_ned(config.ned_dir, config.storage_options)
    models = ned.select(config.models)
    config.selection()
    source = _open_source(config)
    fs, root = filesystem(config.output, config.storage_options)
    ledger = Ledger.read(fs, root) if fs.exists(root) else Ledger()
    work = Work.of(ledger, models, len(source), config.shard_size)
    executor = choose_executor(config, len(source))
    computing = work.to_run(models) if work.remaining else []
    plan = _plan(config, ned, computing or models, executor.cluster_shape(), len(work.remaining))
    return {"plan": plan, "executor": executor.name, "executor_reason": executor.reason, "n_images": len(source),
            "to_encode": work.images, "already_committed": work.skipped,
            "shards": -(-len(source) // config.shard_size), "models": [str(m) for m in models],
            "computing": [str(m) for m in computing]}


def run_encode(config: EncodeConfig, progress: float | None = None, stream: TextIO | None = None) -> dict[str, Any]:
    """Run (or resume) an encode job; returns the manifest plus run statistics.

    ``progress``: print images done, images/s and ETA to ``stream`` (default stderr) every ``progress`` seconds.
    """
    started = time.perf_counter()
    stream = stream or sys.stderr
    ned = open_ned(config.ned_dir, config.storage_options)  # listings and metadata only: model files are read by the encoders
    models = ned.select(config.models)
    metadata = {m: ned.metadata(m) for m in models}
    selections = resolve_selections(config, ned, models, metadata)  # bad ones fail here, before anything is written
    source = _open_source(config)
    for note in source.notes:
        print(note, file=stream, flush=True)
    if source.duplicates:
        first = source.duplicates[0]
        print(f"warning: {config.images} lists {len(source.duplicates)} URI(s) more than once (e.g. {printable(first['uri'])} on "
              f"lines {first['lines']}); each is encoded once, and the manifest lists them", file=stream, flush=True)
    output = OutputTransaction(config, ned, models, stream)
    complete = output.completed(source)
    if complete is not None:
        return {**complete, "run": {"encoded_images": 0, "skipped_images": complete["images"]["total"],
                                    "seconds": time.perf_counter() - started, "images_per_second": 0.0,
                                    "first_piece_seconds": None, "steady_images_per_second": None,
                                    "model_groups": [], "plan": "nothing to do"}}
    executor = choose_executor(config, len(source))
    executor.start()
    with sigterm_interrupts():  # after the executor's start: ray.init installs a SIGTERM handler of its own
        record = {"executor": executor.name, "output": config.output, "images": config.images,
                  "models": config.models, **executor.lease_fields()}
        with output.owned(record):
            try:
                source, work = output.begin(source, metadata, selections)
                plan = _execute(config, ned, models, selections, source, work, executor, output, progress, stream)
                manifest = output.commit(plan, executor)
            except KeyboardInterrupt as exc:
                output.check_lease()
                with shielded():
                    executor.stop_writers(stream)
                    raise output.interrupted(exc) from None
    elapsed = time.perf_counter() - started
    return {**manifest, "run": {"encoded_images": work.images, "skipped_images": work.skipped, "seconds": elapsed,
                                "executor": executor.name, "executor_reason": executor.reason,
                                "images_per_second": work.images / elapsed if elapsed > 0 else 0.0,
                                **_pace(output.ledger, time.time() - elapsed),
                                "model_groups": [p.models for p in plan.pools] if plan else [],
                                "plan": plan.describe() if plan else "nothing to do"}}


def _pace(ledger: Ledger, since: float) -> dict[str, Any]:
    """When this run's images were committed (the image sink's markers, written after every model's):
    seconds from the run's start to its first piece (the fixed costs: Ray's start, model loading,
    the first batch), and the steady rate after it (None with fewer than two pieces)."""
    pieces = sorted((m["time"], len(m["image_index"])) for m in ledger.images()
                    if isinstance(m.get("time"), (int, float)) and m["time"] >= since)
    if not pieces:
        return {"first_piece_seconds": None, "steady_images_per_second": None}
    span = pieces[-1][0] - pieces[0][0]
    steady = sum(n for _, n in pieces[1:]) / span if len(pieces) > 1 and span > 0 else None
    return {"first_piece_seconds": pieces[0][0] - since, "steady_images_per_second": steady}


def _execute(config: EncodeConfig, ned, models: list[ModelId], selections: dict, source: ImageSource, work: Work,
             executor: Executor, output: OutputTransaction, progress: float | None, stream: TextIO) -> Plan | None:
    """Plan what is left to do and run it on ``executor``; None when nothing is left."""
    if not work.remaining:
        return None
    models = work.to_run(models)  # models whose every image is committed are not loaded again
    plan = _plan(config, ned, models, executor.cluster_shape(), len(work.remaining))
    try:
        plan = executor.prepare(plan, lambda c, cluster: _plan(c, ned, models, cluster, len(work.remaining)),
                                source, output.fs, output.root, stream)
        stages = build_stages(config, source, plan, work, selections, output.n_images, executor.shared_listing(source))
        if progress:
            with ProgressReporter(output.fs, output.root, work.images, progress, stream=stream):
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
    return plan
