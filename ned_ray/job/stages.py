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
from .options import EncodeConfig
from .plan import INPUT_SHAPES, PoolPlan
from .sink import PartWriter
from .sources import ImageSource, Skipped

__all__ = ["DecodeShard", "GroupEncoder", "node_address"]

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
                chw = None if rgb is None else torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
                for kind in self.kinds:
                    if chw is None:
                        tensors[kind].append(np.zeros(INPUT_SHAPES[kind], np.uint8))
                    else:  # fwrf always reads the centre square; ViT models the whole image under shorter-side
                        whole = BY_INPUT[kind].whole_image
                        tensors[kind].append(INPUTS[kind](chw if whole else center_square(chw))[0].numpy())
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


class GroupEncoder:
    """Hosts one pool's model group (loaded once, in ``__init__``), computes its responses and writes
    them (:class:`~.sink.PartWriter`); passes the rows on without the inputs no later pool reads.
    ``node``: this process's address, recorded in the commit markers."""

    def __init__(self, config: EncodeConfig, pool: PoolPlan, selections: dict[str, dict[str, Any]],
                 committed: dict[str, Ranges], n_images: int, node: str | None = None) -> None:
        self.node = node or node_address()
        self.device = _actor_device(pool, config.device, self.node)
        if self.device == "cpu":
            torch.set_num_threads(pool.cpu_threads)  # Ray starts workers with one thread
        ned = open_ned(config.ned_dir, config.storage_options, config.model_cache)
        self.group = ModelGroup(ned, pool.models, self.device, config.vit_weights, config.precision,
                                config.batch_size, memory_share=pool.memory_share if self.device == "cuda" else 1.0,
                                selections={m: s["berg"] for m, s in selections.items() if "berg" in s},
                                alexnet_weights=config.alexnet_weights)
        log.info("pool %s on %s (%s): batch sizes %s", pool.name, self.node, self.group.device, self.group.batch_sizes)
        self.selections = {m: Resolved.from_record(selections.get(str(m), {})) for m in self.group.model_ids}
        shapes = {m: self.selections[m].shape(self.group.output_shape(m)) for m in self.group.model_ids}
        self.store = config.store
        heads = {m: self._selected(m, h) for m, h in self.group.code_heads().items()} if self.store != "responses" else {}
        self.writer = PartWriter(config.output, config.storage_options, shapes, config.formats, config.shard_size,
                                 n_images, committed, planned=pool.device, pool=pool.name, store=self.store, heads=heads)
        self.writer.write_heads()
        self.drop = list(pool.drop)
        self.compute_lock = threading.Lock()  # one block computes at a time; another may be writing

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = np.asarray(batch["image_index"], np.int64)
        needed = self.writer.needed(index)
        if needed:
            pending = np.logical_or.reduce([mask for _, mask in needed])
            computed = np.flatnonzero(pending & (batch["status"] == "ok"))
            results: dict[ModelId, np.ndarray] = {}
            codes: dict[ModelId, np.ndarray] = {}
            checks: dict[ModelId, tuple[float, float]] = {}
            if len(computed):
                # the block's images at once: uint8, pinned for an asynchronous copy; each model batches them
                inputs = {k: torch.from_numpy(np.ascontiguousarray(batch[k][computed])) for k in self.group.inputs}
                if self.group.device.type == "cuda":
                    inputs = {k: v.pin_memory() for k, v in inputs.items()}
                with self.compute_lock:
                    raw, codes = self.group.run_stored(inputs, self.store)
                    if self.group.precision != "fp32":  # reduced precision vs fp32 on the block's first image
                        checks = self.group.deviation(inputs, {**raw, **codes}, self.store)
                results = {m: self.selections[m].apply(v) for m, v in raw.items()}
            self.writer.write(batch, needed, computed, results, self.group.device.type, self.node, checks, codes)
        for column in self.drop:
            batch.pop(column, None)
        return batch


    def _selected(self, mid: ModelId, head):
        """A model's head restricted to what ``--channels/--times/--min-ncsnr`` keep (BERG's selections
        are applied when the weights load)."""
        shape = self.group.output_shape(mid)
        kept = self.selections[mid].apply(np.arange(int(np.prod(shape))).reshape(1, *shape))[0]
        return head.select(kept.reshape(-1), kept.shape) if kept.size != head.outputs or kept.shape != head.shape else head


def _actor_device(pool: PoolPlan, policy: str, node: str) -> str:
    """The device this encoder computes on: the plan's, or the CPU where Ray granted a GPU that torch
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
