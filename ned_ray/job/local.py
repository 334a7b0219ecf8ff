"""The encode job in this process, without Ray: the same steps, for small jobs on one machine.

Starting a local Ray instance, its workers and an actor process costs about 10 s and 1-2 GB before
the first image is encoded (bench/whole_job.py). For a job of a few hundred images on a laptop that
is as much as the encoding itself, so ``--executor auto`` runs such jobs here instead: the same
plan (:mod:`.plan`, for this machine), the same :class:`~.decode.DecodeShard`,
:class:`~.pipeline.GroupEncoder` and :class:`~.sink.ImagesSink` objects called directly, hence the
same files, commit markers and manifest; resuming works across executors.

    shards ──DecodeShard (a thread, up to AHEAD shards ahead)──> rows with uint8 inputs
           ──GroupEncoder per pool (models loaded once, while the first shards decode)──> parts
           ──ImagesSink──> images' status

Jobs that join a Ray cluster (``--ray-address``, ``$RAY_ADDRESS``, ``ray job submit``, a driver that
started Ray), that plan for a described cluster, use several GPUs, or list more than
``LOCAL_MAX_IMAGES`` images run on Ray Data (:func:`~.pipeline._run_pipeline`).
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

__all__ = ["choose_executor", "run_local", "LOCAL_MAX_IMAGES"]

# Above this many images the job runs on Ray Data even on one machine: Ray's fixed cost (~10 s) is
# then a small part of the job, and a long job gains Ray's process isolation and retries.
LOCAL_MAX_IMAGES = 2000
AHEAD = 2  # shards decoded ahead of the encoders


def choose_executor(config: EncodeConfig, n_images: int) -> tuple[str, str]:
    """("local" or "ray", why) for this job (``--executor auto``; ``ray`` or ``local`` are kept)."""
    import ray

    if config.executor != "auto":
        return config.executor, f"--executor {config.executor}"
    if config.ray_address or os.environ.get("RAY_ADDRESS"):
        return "ray", "a Ray cluster address is given (--ray-address or $RAY_ADDRESS)"
    if ray.is_initialized():
        return "ray", "this process is connected to Ray"
    if config.cluster:
        return "ray", "--cluster describes a cluster to plan for"
    if n_images > LOCAL_MAX_IMAGES:
        return "ray", f"{n_images} images (more than {LOCAL_MAX_IMAGES}: Ray Data's start-up is worth it)"
    gpus = ClusterShape.local(config.device).gpus_now
    if gpus > 1:
        return "ray", f"{gpus:g} GPUs on this machine (Ray Data uses them all)"
    if config.device == "cuda" and not gpus:
        return "ray", "--device cuda and this machine has no GPU (Ray waits for one to join)"
    return "local", (f"{n_images} images on one machine and no Ray cluster: encoded in this process (starting Ray "
                     f"would cost more than it saves; --executor ray to use it)")


def _split(encoder: Callable[[dict], dict], batch: dict[str, Any], rows: int) -> dict[str, Any]:
    """``encoder`` over ``batch`` in calls of ``rows`` rows (Ray Data's batch_size), joined again."""
    n = len(batch["image_index"])
    if n <= rows:
        return encoder(batch)
    outs = [encoder({k: v[s:s + rows] for k, v in batch.items()}) for s in range(0, n, rows)]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def run_local(config: EncodeConfig, source: "ImageSource", plan: "Plan", work: "_Work",
              selections: dict[str, dict[str, Any]], n_images: int) -> None:
    """Execute ``plan`` in this process: decode on a thread, AHEAD shards ahead, while the models load
    and encode; the same objects and files as the Ray Data graph."""
    from .pipeline import GroupEncoder

    kinds = tuple(k for k in ("fwrf", "vit") if any(k in p.inputs for p in plan.pools))
    decode = DecodeShard(source.description(), source.listing.select(["image_id", "uri", "skip"]), kinds,
                         config.non_square, config.max_pixels)
    shards = deque((start, stop) for start, stop in work.remaining)
    sink = ImagesSink(config.output, config.storage_options, config.shard_size, n_images, work.images_committed)
    with ThreadPoolExecutor(1, thread_name_prefix="ned-ray-decode") as reader:
        pending: deque[Future] = deque()

        def read_ahead() -> None:
            while shards and len(pending) < AHEAD:
                start, stop = shards.popleft()
                pending.append(reader.submit(decode, {"start": np.array([start]), "stop": np.array([stop])}))

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
