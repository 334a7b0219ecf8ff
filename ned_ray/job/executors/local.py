"""The in-process executor: the stages called in this process, without Ray, for jobs on one machine.

Starting a local Ray instance, its workers and an actor process costs seconds and gigabytes before
the first image is encoded (figures: bench/RESULTS.md). For a job of a few hundred images on a
laptop that is as much as the encoding itself, so ``--executor auto`` runs such jobs here: the same
plan (for this machine), the same stage objects, hence the same files, commit markers and manifest;
resuming works across executors.

    shards ──DecodeShard (threads, a shard ahead of them)──> rows with uint8 inputs
           ──GroupEncoder per pool (models loaded once, while the first shards decode)──> parts
           ──ImagesSink──> images' status
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from ..cluster import ClusterShape
from ..plan import Plan
from .base import Executor, Stages

__all__ = ["LocalExecutor", "decode_threads"]


def decode_threads(cpus: int) -> int:
    """Threads decoding shards ahead of the encoders (Pillow and torch release the GIL): one per 8
    CPUs, so that a many-core machine's encoders are not starved; one on a laptop."""
    return max(1, min(8, cpus // 8))


def _split(encoder: Callable[[dict], dict], batch: dict[str, Any], rows: int) -> dict[str, Any]:
    """``encoder`` over ``batch`` in calls of ``rows`` rows (Ray Data's batch_size), joined again."""
    n = len(batch["image_index"])
    if n <= rows:
        return encoder(batch)
    outs = [encoder({k: v[s:s + rows] for k, v in batch.items()}) for s in range(0, n, rows)]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


class LocalExecutor(Executor):
    """Shards decode on threads, ahead of the encoders, while the models load and encode."""

    name = "local"

    def cluster_shape(self) -> ClusterShape:
        return ClusterShape.local(self.config.device)

    def run(self, plan: Plan, stages: Stages) -> None:
        shards = deque(stages.shards)
        threads = decode_threads(int(plan.cluster.cpus_now))
        reader = ThreadPoolExecutor(threads, thread_name_prefix="ned-ray-decode")
        pending: deque[Future] = deque()  # in shard order: parts and commits follow the listing

        def read_ahead() -> None:
            while shards and len(pending) < threads + 1:  # each thread busy, one shard ready
                start, stop = shards.popleft()
                pending.append(reader.submit(stages.decode, {"start": np.array([start]), "stop": np.array([stop])}))

        try:
            read_ahead()  # the first shards decode while the models load
            encoders = [(stage.build(), stage.pool.batch_rows) for stage in stages.encoders]
            while pending:
                batch = pending.popleft().result()
                read_ahead()
                for encoder, rows in encoders:
                    batch = _split(encoder, batch, rows)
                stages.sink.write_batch(batch)
        finally:  # stopped (an error, Ctrl-C, SIGTERM): shards not started are dropped, running ones finish
            reader.shutdown(wait=True, cancel_futures=True)
