"""Where a job runs: in this process (:mod:`.local`) or on Ray Data (:mod:`.ray`), siblings over one
interface (:mod:`.base`). :func:`choose_executor` picks one for ``--executor auto``.

``auto`` runs the job in this process on one machine with no Ray cluster given, for CPU jobs of any
size and single-GPU jobs of up to ``LOCAL_MAX_IMAGES`` images. Jobs that join a Ray cluster
(``--ray-address``, ``$RAY_ADDRESS``, ``ray job submit``, a driver that started Ray), plan for a
described cluster (``--cluster``), use several GPUs, or feed one GPU more images (Ray Data decodes in
parallel processes to keep a GPU fed) run on Ray Data. Importing this package loads no Ray.
"""

from __future__ import annotations

import os
import sys

from ...errors import DeviceError
from ..cluster import ClusterShape
from ..options import EncodeConfig
from .base import Executor, Stages, Work, build_stages
from .local import LocalExecutor

__all__ = ["choose_executor", "make_executor", "Executor", "Stages", "Work", "build_stages", "LOCAL_MAX_IMAGES"]

# Above this many images a GPU job runs on Ray Data even on one machine: Ray's fixed cost is then a
# small part of the job, and its decode processes keep the GPU fed.
LOCAL_MAX_IMAGES = 2000


def make_executor(name: str, config: EncodeConfig, reason: str) -> Executor:
    """The executor called ``name`` ("local" or "ray"); the Ray executor imports Ray."""
    if name == "local":
        return LocalExecutor(config, reason)
    from .ray import RayExecutor

    return RayExecutor(config, reason)


def _ray_connected() -> bool:
    ray = sys.modules.get("ray")  # a process that never imported Ray is not connected to it
    return ray is not None and ray.is_initialized()


def choose_executor(config: EncodeConfig, n_images: int) -> Executor:
    """The executor for this job (``--executor auto``; ``ray`` or ``local`` are kept), with why.
    ``--device cuda`` on one machine without a GPU fails here: nothing could give it one."""
    if config.executor != "auto":
        return make_executor(config.executor, config, f"--executor {config.executor}")
    if config.ray_address or os.environ.get("RAY_ADDRESS"):
        return make_executor("ray", config, "a Ray cluster address is given (--ray-address or $RAY_ADDRESS)")
    if _ray_connected():
        return make_executor("ray", config, "this process is connected to Ray")
    if config.cluster:
        return make_executor("ray", config, "--cluster describes a cluster to plan for")
    gpus = ClusterShape.local(config.device).gpus_now
    if gpus > 1:
        return make_executor("ray", config, f"{gpus:g} GPUs on this machine (Ray Data uses them all)")
    if config.device == "cuda" and not gpus:
        raise DeviceError("--device cuda: this machine has no GPU that torch can use, and no Ray cluster was given "
                          "that could provide one (--ray-address or $RAY_ADDRESS); run on a GPU machine or join a "
                          "GPU cluster, or use --device auto/cpu")
    if gpus and n_images > LOCAL_MAX_IMAGES:
        return make_executor("ray", config, f"{n_images} images on a GPU (more than {LOCAL_MAX_IMAGES}: Ray Data's "
                                            "parallel decoding is worth its start-up)")
    where = "on this machine's GPU" if gpus else "on CPU"
    return make_executor("local", config, f"{n_images} images {where}, one machine, no Ray cluster: encoded in this "
                                          "process, where it costs less time and memory than on Ray Data (--executor "
                                          "ray to use it)")
