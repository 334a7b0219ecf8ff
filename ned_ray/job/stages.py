"""The stage objects both executors run, in order: decode, encode (one per model group), image sink.

    shard (start, stop) ──DecodeShard──> rows with the uint8 inputs the job's models read
                        ──GroupEncoder per pool of the plan──> responses written as parts (and committed)
                        ──ImagesSink (:mod:`.sink`)──> the images' status, committed per piece

The executors (:mod:`.executors`) only decide where these run: called in this process, or as Ray
Data tasks and actors. Nothing here imports Ray.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch

from ..families import BY_INPUT
from ..ids import ModelId
from ..modeldir import open_ned
from ..models.group import INPUTS, DeviceError, ModelGroup
from ..preprocess import center_square
from ..selection import Resolved
from .commit import Ranges
from .decode import decode_image
from .inputs import ImageSource, Skipped
from .options import EncodeConfig
from .plan import INPUT_SHAPES, PoolPlan
from .sink import PartWriter

__all__ = ["DecodeShard", "GroupEncoder", "PoolModels", "model_inputs", "node_address"]

log = logging.getLogger("ned_ray")


def node_address() -> str:
    """This machine's address as other nodes reach it (the interface of its default route), without
    sending anything; 127.0.0.1 on a machine without a network. Ray's own rule, without Ray."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("8.8.8.8", 80))  # UDP: selects a route, sends nothing
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


class DecodeShard:
    """One shard row (start, stop) -> one row per image, with the inputs ``kinds`` need.

    ``listing`` is the input's listing (image_id, uri, skip), or a function returning it: the Ray
    executor puts it once in Ray's object store and every task maps the same copy, so shards carry
    two integers, not their ids and URIs."""

    def __init__(self, source: ImageSource, listing: pa.Table | Callable[[], pa.Table], kinds: tuple[str, ...],
                 non_square: str, max_pixels: int) -> None:
        self.source, self.listing, self.kinds = source, listing, kinds
        self.non_square, self.max_pixels = non_square, max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        listing = self.listing if isinstance(self.listing, pa.Table) else self.listing()
        columns: dict[str, list] = {k: [] for k in ("image_index", "image_id", "status", "error", "width", "height")}
        tensors: dict[str, list[np.ndarray]] = {k: [] for k in self.kinds}
        for start, stop in zip(batch["start"].tolist(), batch["stop"].tolist()):
            rows = listing.slice(start, stop - start)
            ids = rows.column("image_id").to_pylist()
            items = self.source.read(start, stop, rows.select(self.source.row_columns))
            for offset, item in enumerate(items):
                rgb, error, width, height = decode_image(item, self.non_square, self.max_pixels)
                columns["image_index"].append(start + offset)
                columns["image_id"].append(str(ids[offset]))
                columns["status"].append("ok" if rgb is not None else
                                         "skipped" if isinstance(item, Skipped) else "error")
                columns["error"].append(error)
                columns["width"].append(width)
                columns["height"].append(height)
                for kind, value in model_inputs(rgb, self.kinds).items():
                    tensors[kind].append(value)
        out: dict[str, Any] = {
            "image_index": np.asarray(columns["image_index"], np.int64),
            "image_id": np.asarray(columns["image_id"], dtype=object),
            "status": np.asarray(columns["status"], dtype=object),
            "error": np.asarray(columns["error"], dtype=object),
            "width": np.asarray(columns["width"], np.int32),
            "height": np.asarray(columns["height"], np.int32),
        }
        for kind in self.kinds:
            out[kind] = np.stack(tensors[kind]) if tensors[kind] else np.zeros((0, *INPUT_SHAPES[kind]), np.uint8)
        return out


def model_inputs(rgb: np.ndarray | None, kinds: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One decoded image (uint8 (H, W, 3), or None for a row that failed) as the uint8 (3, S, S)
    input of each model kind (zeros for a failed row: never computed)."""
    if rgb is None:
        return {kind: np.zeros(INPUT_SHAPES[kind], np.uint8) for kind in kinds}
    chw = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
    # fwrf always reads the centre square; ViT models the whole image under shorter-side
    return {kind: INPUTS[kind](chw if BY_INPUT[kind].whole_image else center_square(chw))[0].numpy() for kind in kinds}


class PoolModels:
    """One pool's models, loaded once on this worker's device (:class:`~ned_ray.models.group.ModelGroup`),
    and the selections (``--channels/--times/--min-ncsnr``) applied to their responses: what the
    job's encoders (:class:`GroupEncoder`) and :mod:`ned_ray.data`'s compute, with the same numbers."""

    def __init__(self, config: EncodeConfig, pool: PoolPlan, selections: dict[str, dict[str, Any]], node: str) -> None:
        self.device = _actor_device(pool.name, pool.device, config.device, node)
        if self.device == "cpu" and pool.cpu_threads:
            torch.set_num_threads(pool.cpu_threads)  # Ray starts workers with one thread
        ned = open_ned(config.ned_dir, config.storage_options, config.model_cache)
        self.group = ModelGroup(ned, pool.models, self.device, config.vit_weights, config.precision,
                                config.batch_size, memory_share=pool.memory_share if self.device == "cuda" else 1.0,
                                selections={m: s["berg"] for m, s in selections.items() if "berg" in s},
                                alexnet_weights=config.alexnet_weights)
        log.info("pool %s on %s (%s): batch sizes %s", pool.name, node, self.group.device, self.group.batch_sizes)
        self.selections = {m: Resolved.from_record(selections.get(str(m), {})) for m in self.group.model_ids}
        self.shapes = {m: self.selections[m].shape(self.group.output_shape(m)) for m in self.group.model_ids}
        self.store = config.store
        self.compute_lock = threading.Lock()  # one block computes at a time; another may be writing

    def compute(self, batch: dict[str, np.ndarray], rows: np.ndarray
                ) -> tuple[dict[ModelId, np.ndarray], dict[ModelId, np.ndarray], dict[ModelId, tuple[float, float]]]:
        """(selected responses, codes, reduced-precision checks) of ``batch``'s ``rows``, as ``store`` asks."""
        if not len(rows):
            return {}, {}, {}
        # the block's images at once: uint8, pinned for an asynchronous copy; each model batches them
        inputs = {k: torch.from_numpy(np.ascontiguousarray(batch[k][rows])) for k in self.group.inputs}
        if self.group.device.type == "cuda":
            inputs = {k: v.pin_memory() for k, v in inputs.items()}
        checks: dict[ModelId, tuple[float, float]] = {}
        with self.compute_lock:
            raw, codes = self.group.run_stored(inputs, self.store)
            if self.group.precision != "fp32":  # reduced precision vs fp32 on the block's first image
                checks = self.group.deviation(inputs, {**raw, **codes}, self.store)
        return {m: self.selections[m].apply(v) for m, v in raw.items()}, codes, checks

    def code_heads(self) -> dict[ModelId, Any]:
        """Each coded model's head, restricted to what the selections keep (BERG's selections are
        applied when the weights load)."""
        if self.store == "responses":
            return {}
        return {m: self._selected(m, h) for m, h in self.group.code_heads().items()}

    def _selected(self, mid: ModelId, head):
        shape = self.group.output_shape(mid)
        kept = self.selections[mid].apply(np.arange(int(np.prod(shape))).reshape(1, *shape))[0]
        return head.select(kept.reshape(-1), kept.shape) if kept.size != head.outputs or kept.shape != head.shape else head


class GroupEncoder:
    """Hosts one pool's models (:class:`PoolModels`, loaded once, in ``__init__``), computes its
    responses and writes them (:class:`~.sink.PartWriter`); passes the rows on without the inputs no
    later pool reads. ``node``: this process's address, recorded in the commit markers."""

    def __init__(self, config: EncodeConfig, pool: PoolPlan, selections: dict[str, dict[str, Any]],
                 committed: dict[str, Ranges], n_images: int, node: str | None = None) -> None:
        self.node = node or node_address()
        self.models = PoolModels(config, pool, selections, self.node)
        self.writer = PartWriter(config.output, config.storage_options, self.models.shapes, config.formats,
                                 config.shard_size, n_images, committed, planned=pool.device, pool=pool.name,
                                 store=config.store, heads=self.models.code_heads())
        self.writer.write_heads()
        self.drop = list(pool.drop)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = np.asarray(batch["image_index"], np.int64)
        needed = self.writer.needed(index)
        if needed:
            pending = np.logical_or.reduce([mask for _, mask in needed])
            computed = np.flatnonzero(pending & (batch["status"] == "ok"))
            results, codes, checks = self.models.compute(batch, computed)
            self.writer.write(batch, needed, computed, results, self.models.group.device.type, self.node, checks, codes)
        for column in self.drop:
            batch.pop(column, None)
        return batch


def _actor_device(name: str, planned: str, policy: str, node: str) -> str:
    """The device pool ``name``'s encoder computes on: the ``planned`` one, or the CPU where Ray granted
    a GPU that torch cannot see (``--device auto``: warned and recorded; ``--device cuda``: an error
    naming the node)."""
    if planned != "cuda" or torch.cuda.is_available():
        return planned
    detail = (f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}, torch {torch.__version__} "
              f"(CUDA build: {torch.version.cuda or 'none'})")
    if policy == "cuda":
        raise DeviceError(f"--device cuda: Ray gave pool '{name}' a GPU on node {node}, but torch sees no CUDA "
                          f"device there ({detail}); fix that node's GPU driver or torch build, or use --device auto "
                          "to compute on CPU where this happens")
    log.warning("pool %s: Ray granted a GPU on node %s but torch sees no CUDA device (%s); computing on CPU",
                name, node, detail)
    return "cpu"
