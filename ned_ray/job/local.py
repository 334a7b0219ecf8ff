"""The encode job in this process, without Ray: the same steps, for jobs on one machine.

Starting a local Ray instance, its workers and an actor process costs about 10 s and 1-2 GB before
the first image is encoded (bench/whole_job.py). For a job of a few hundred images on a laptop that
is as much as the encoding itself, so ``--executor auto`` runs such jobs here instead: the same
plan (:mod:`.plan`, for this machine), the same :class:`~.decode.DecodeShard`,
:class:`~.pipeline.GroupEncoder` and :class:`~.sink.ImagesSink` objects called directly, hence the
same files, commit markers and manifest; resuming works across executors.

    shards ──DecodeShard (threads, a shard ahead of them)──> rows with uint8 inputs
           ──GroupEncoder per pool (models loaded once, while the first shards decode)──> parts
           ──ImagesSink──> images' status

``--executor auto`` chooses this executor on one machine with no Ray cluster given, for CPU jobs of
any size and single-GPU jobs of up to ``LOCAL_MAX_IMAGES`` images. Measured on 2 CPUs
(bench/RESULTS.md): Ray Data took 1.5x the time and 1.5x the memory of this executor for 10 EEG
subjects x 200 images, and 1.35x the time and 2.2x the memory for an fMRI model x 5,000 images (a
CPU plan is one actor per model group either way; Ray adds its processes, Ray Data's actors and
decoded blocks queued in its object store). Jobs that join a Ray cluster (``--ray-address``, ``$RAY_ADDRESS``, ``ray job
submit``, a driver that started Ray), plan for a described cluster (``--cluster``), use several
GPUs, or feed one GPU more than ``LOCAL_MAX_IMAGES`` images (Ray Data decodes in parallel
processes to keep a GPU fed) run on Ray Data (:func:`~.pipeline._run_pipeline`).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .cluster import ClusterShape
from .config import EncodeConfig
from .decode import DecodeShard
from .sink import ImagesSink

if TYPE_CHECKING:
    from .pipeline import _Work
    from .plan import Plan
    from .sources import ImageSource

__all__ = ["choose_executor", "run_local", "decode_threads", "LOCAL_MAX_IMAGES"]

# Above this many images a GPU job runs on Ray Data even on one machine: Ray's fixed cost (~15 s)
# is then a small part of the job, and its decode processes keep the GPU fed.
LOCAL_MAX_IMAGES = 2000


def decode_threads(cpus: int) -> int:
    """Threads decoding shards ahead of the encoders (Pillow and torch release the GIL): one per 8
    CPUs, so that a many-core machine's encoders are not starved; one on a laptop."""
    return max(1, min(8, cpus // 8))


def choose_executor(config: EncodeConfig, n_images: int) -> tuple[str, str]:
    """("local" or "ray", why) for this job (``--executor auto``; ``ray`` or ``local`` are kept).
    ``--device cuda`` on one machine without a GPU fails here: nothing could give it one."""
    import ray

    if config.executor != "auto":
        return config.executor, f"--executor {config.executor}"
    if config.ray_address or os.environ.get("RAY_ADDRESS"):
        return "ray", "a Ray cluster address is given (--ray-address or $RAY_ADDRESS)"
    if ray.is_initialized():
        return "ray", "this process is connected to Ray"
    if config.cluster:
        return "ray", "--cluster describes a cluster to plan for"
    gpus = ClusterShape.local(config.device).gpus_now
    if gpus > 1:
        return "ray", f"{gpus:g} GPUs on this machine (Ray Data uses them all)"
    if config.device == "cuda" and not gpus:
        from ..models.group import DeviceError

        raise DeviceError("--device cuda: this machine has no GPU that torch can use, and no Ray cluster was given "
                          "that could provide one (--ray-address or $RAY_ADDRESS); run on a GPU machine or join a "
                          "GPU cluster, or use --device auto/cpu")
    if gpus and n_images > LOCAL_MAX_IMAGES:
        return "ray", f"{n_images} images on a GPU (more than {LOCAL_MAX_IMAGES}: Ray Data's parallel decoding is worth its start-up)"
    where = "on this machine's GPU" if gpus else "on CPU"
    return "local", (f"{n_images} images {where}, one machine, no Ray cluster: encoded in this process, where it "
                     "costs less time and memory than on Ray Data (--executor ray to use it)")


def _split(encoder: Callable[[dict], dict], batch: dict[str, Any], rows: int) -> dict[str, Any]:
    """``encoder`` over ``batch`` in calls of ``rows`` rows (Ray Data's batch_size), joined again."""
    n = len(batch["image_index"])
    if n <= rows:
        return encoder(batch)
    outs = [encoder({k: v[s:s + rows] for k, v in batch.items()}) for s in range(0, n, rows)]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def run_local(config: EncodeConfig, source: "ImageSource", plan: "Plan", work: "_Work",
              selections: dict[str, dict[str, Any]], n_images: int) -> None:
    """Execute ``plan`` in this process: shards decode on threads, ahead of the encoders, while the
    models load and encode; the same objects and files as the Ray Data graph."""
    from .pipeline import GroupEncoder

    kinds = tuple(k for k in ("fwrf", "vit") if any(k in p.inputs for p in plan.pools))
    decode = DecodeShard(source.description(), source.listing.select(["image_id", "uri", "skip"]), kinds,
                         config.non_square, config.max_pixels)
    shards = deque((start, stop) for start, stop in work.remaining)
    sink = ImagesSink(config.output, config.storage_options, config.shard_size, n_images, work.images_committed)
    threads = decode_threads(int(plan.cluster.cpus_now))
    reader = ThreadPoolExecutor(threads, thread_name_prefix="ned-ray-decode")
    pending: deque[Future] = deque()  # in shard order: parts and commits follow the listing

    def read_ahead() -> None:
        while shards and len(pending) < threads + 1:  # each thread busy, one shard ready
            start, stop = shards.popleft()
            pending.append(reader.submit(decode, {"start": np.array([start]), "stop": np.array([stop])}))

    try:
        read_ahead()  # the first shards decode while the models load
        encoders = [(GroupEncoder(config, pool, {m: selections[m] for m in pool.models},
                                  {m: work.committed[m] for m in pool.models}, n_images), pool.batch_rows)
                    for pool in plan.pools]
        while pending:
            batch = pending.popleft().result()
            read_ahead()
            for encoder, rows in encoders:
                batch = _split(encoder, batch, rows)
            sink.write_batch(batch)
    finally:  # stopped (an error, Ctrl-C, SIGTERM): shards not started are dropped, running ones finish
        reader.shutdown(wait=True, cancel_futures=True)
