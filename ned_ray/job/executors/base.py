"""What every executor shares: the work left, the stages (built once, here), and the interface.

An executor decides where the stages of :mod:`..stages` run; it never decides what they compute.
The orchestrator (:mod:`..run`) calls it in this order::

    executor.start()                          before the lease (Ray: connect, or start a local instance)
    executor.cluster_shape()                  what the plan is made for
    plan = executor.prepare(plan, ...)        Ray: wait for GPUs, check paths on every node
    executor.run(plan, build_stages(...))     the stages over every shard still to do
    executor.failure(exc)                     our own error inside the executor's, as one line
    executor.release(plan)                    always (Ray: withdraw the autoscaler request)
    executor.stop_writers(stream)             interrupted: before the lease is released

Executors are siblings: neither imports the other, and only :mod:`.ray` imports Ray.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TextIO

import pyarrow as pa

from ...families import BY_INPUT
from ..cluster import ClusterShape
from ..commit import Work
from ..inputs import ImageSource
from ..options import EncodeConfig
from ..plan import Plan, PoolPlan
from ..sink import ImagesSink
from ..stages import DecodeShard, GroupEncoder

__all__ = ["Executor", "Work", "Stages", "EncoderStage", "build_stages"]


@dataclass(frozen=True)
class EncoderStage:
    """One pool's encoder, not yet built: each executor builds it where the pool's models live."""

    pool: PoolPlan
    args: tuple  # GroupEncoder's arguments

    def build(self, cls: type[GroupEncoder] = GroupEncoder, **kw: Any) -> GroupEncoder:
        return cls(*self.args, **kw)


@dataclass(frozen=True)
class Stages:
    """The job's stages for one plan, as both executors run them."""

    decode: DecodeShard
    encoders: list[EncoderStage]
    sink: ImagesSink
    shards: list[tuple[int, int]]  # [start, stop) of every shard to run, in listing order


def build_stages(config: EncodeConfig, source: ImageSource, plan: Plan, work: Work,
                 selections: dict[str, dict[str, Any]], n_images: int,
                 listing: pa.Table | Callable[[], pa.Table] | None = None) -> Stages:
    """The stages of ``plan`` over ``work``. ``listing``: the decode stage's view of the listing
    (default: the table itself; the Ray executor passes one shared through its object store)."""
    kinds = tuple(k for k in BY_INPUT if any(k in p.inputs for p in plan.pools))
    decode = DecodeShard(source.description(), decode_listing(source) if listing is None else listing, kinds,
                         config.non_square, config.max_pixels)
    encoders = [EncoderStage(pool, (config, pool, {m: selections[m] for m in pool.models},
                                    {m: work.committed[m] for m in pool.models}, n_images))
                for pool in plan.pools]
    sink = ImagesSink(config.output, config.storage_options, config.shard_size, n_images, work.images_committed)
    return Stages(decode, encoders, sink, list(work.remaining))


def decode_listing(source: ImageSource) -> pa.Table:
    """The columns of the listing the decode stage reads."""
    return source.listing.select(["image_id", *source.row_columns])


class Executor(ABC):
    """Runs a job's stages somewhere (this process, a Ray cluster); see the module's docstring."""

    name: ClassVar[str]

    def __init__(self, config: EncodeConfig, reason: str) -> None:
        self.config, self.reason = config, reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r})"

    def start(self) -> None:
        """Before the job takes the output's lease."""

    @abstractmethod
    def cluster_shape(self) -> ClusterShape:
        """What the plan is made for."""

    def shared_listing(self, source: ImageSource) -> pa.Table | Callable[[], pa.Table]:
        """The listing as the decode stage reads it here (Ray: shared through its object store)."""
        return decode_listing(source)

    def lease_fields(self) -> dict[str, Any]:
        """What the lease records of this executor beyond the process (Ray: its job, to tell it gone)."""
        return {}

    def prepare(self, plan: Plan, replan: Callable[[EncodeConfig, ClusterShape], Plan], source: ImageSource,
                fs: Any, root: str, stream: TextIO) -> Plan:
        """The plan to run, once the cluster is ready for it (``replan``: a new plan for other options)."""
        return plan

    @abstractmethod
    def run(self, plan: Plan, stages: Stages) -> None:
        """Run every stage over every shard; returns once everything is written and committed."""

    def failure(self, exc: BaseException) -> Exception | None:
        """Our own error that ``exc`` carries (the executor's wrapping removed), else None."""
        return None

    def release(self, plan: Plan) -> None:
        """After running, whatever happened."""

    def stop_writers(self, stream: TextIO) -> None:
        """Interrupted: return only once no stage of this job can still write."""
