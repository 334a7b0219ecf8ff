"""Writing outputs: each model group's response parts (from its encoders) and the images' status.

Every path is :mod:`ned_ray.output.layout`'s; each piece's files are written first, its commit
marker last (:mod:`.commit`). Piece names depend only on image indexes, so a rerun rewrites the
same names and never duplicates rows.
"""

from __future__ import annotations

import io
import posixpath
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..ids import ModelId
from ..output import layout
from ..output.codes import CodeHead
from ..output.layout import IMAGES_WRITER, piece_name, writer_key
from ..storage import filesystem, fresh_exists, parquet_bytes, write_bytes
from .commit.ledger import Ranges, split_pieces, write_marker

__all__ = ["PartWriter", "ImagesSink"]


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def response_table(index: np.ndarray, ids: pa.Array, values: np.ndarray) -> pa.Table:
    """A response part: image_index, image_id, response as fixed_size_list<float32> (plain Arrow)."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(len(values), int(np.prod(values.shape[1:])))
    return pa.table({
        "image_index": pa.array(index, pa.int64()),
        "image_id": ids,
        "response": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.float32()), flat.shape[1]),
    })


class PartWriter:
    """Writes one model group's responses from inside its actor: per piece, every model's part files,
    then the piece's commit marker. Rows already committed for a model (earlier runs) are skipped."""

    def __init__(self, output: str, storage_options: dict, shapes: Mapping[ModelId, tuple[int, ...]],
                 formats: Sequence[str], shard_size: int, n_images: int, committed: Mapping[str, Ranges],
                 planned: str, pool: str = "", store: str = "responses", heads: Mapping[ModelId, CodeHead] | None = None) -> None:
        self.output, self.storage_options, self.shapes, self.pool = output, storage_options, dict(shapes), pool
        self.heads = dict(heads or {})  # the models whose codes are stored (--store codes|both)
        self.responses = {m for m in self.shapes if store != "codes" or m not in self.heads}  # whose responses are
        models = list(self.shapes)
        self.formats, self.shard_size, self.n_images, self.planned = tuple(formats), shard_size, n_images, planned
        by_ranges: dict[Ranges, list[ModelId]] = {}
        for mid in models:  # models with the same committed rows are written (and committed) together
            by_ranges.setdefault(committed.get(str(mid), Ranges()), []).append(mid)
        self.subsets = [(sorted(ms), ranges) for ranges, ms in by_ranges.items()]
        self._fs = None

    def _filesystem(self):
        if self._fs is None:
            self._fs = filesystem(self.output, self.storage_options)
        return self._fs

    def needed(self, index: np.ndarray) -> list[tuple[list[ModelId], np.ndarray]]:
        """(models, rows mask) for every subset of models that still needs some of these rows."""
        out = []
        for models, ranges in self.subsets:
            mask = ~ranges.contains(index)
            if mask.any():
                out.append((models, mask))
        return out

    def _parts(self, mid: ModelId, piece: str, index: np.ndarray, ids: pa.Array, responses: np.ndarray | None,
               codes: np.ndarray | None, rows: np.ndarray) -> dict[str, bytes]:
        """The files of one model's piece: its code part (coded models), its response parts in every
        format (unless only its codes are stored); ``rows``: the piece's ok rows among the computed."""
        parts = {}
        if mid in self.heads:
            code = codes[rows] if len(rows) else np.zeros((0, self.heads[mid].width), np.float32)
            table = response_table(index, ids, code).rename_columns(["image_index", "image_id", "code"])
            parts[layout.code_part(mid, piece)] = parquet_bytes(table, plain=("code",))
        if mid in self.responses:
            values = responses[rows] if len(rows) else np.zeros((0, *self.shapes[mid]), np.float32)
            if "parquet" in self.formats:
                parts[layout.part(mid, piece, "parquet")] = parquet_bytes(response_table(index, ids, values),
                                                                          plain=("response",))
            if "npy" in self.formats:
                parts[layout.part(mid, piece, "npy")] = _npy_bytes(values)
                parts[layout.index_part(mid, piece)] = _npy_bytes(index)
        return parts

    def write_heads(self) -> None:
        """Each coded model's head, once (the same bytes whichever encoder writes it)."""
        fs, root = self._filesystem()
        for mid, head in self.heads.items():
            path = posixpath.join(root, layout.head_file(mid))
            if not fresh_exists(fs, path):
                write_bytes(fs, path, head.to_bytes())

    def write(self, batch: Mapping[str, np.ndarray], needed: list[tuple[list[ModelId], np.ndarray]],
              computed: np.ndarray, results: Mapping[ModelId, np.ndarray], device: str, node: str,
              checks: Mapping[ModelId, tuple[float, float]], codes: Mapping[ModelId, np.ndarray] | None = None) -> int:
        """Write and commit the needed rows; ``results[m]`` (responses) and ``codes[m]`` hold the rows
        ``computed`` (ok rows). Returns pieces."""
        codes = codes or {}
        fs, root = self._filesystem()
        index = np.asarray(batch["image_index"], np.int64)
        ok = np.asarray(batch["status"]) == "ok"
        position = np.full(len(index), -1, np.int64)
        position[computed] = np.arange(len(computed))
        checked = int(computed[0]) if len(computed) and checks else -1
        written = 0
        for models, mask in needed:
            rows = np.flatnonzero(mask)
            for piece in split_pieces(index[rows], self.shard_size):
                prows = rows[piece]
                name = piece_name(int(index[prows[0]]), len(prows), self.shard_size, self.n_images)
                good = prows[ok[prows]]
                ids = pa.array([str(x) for x in batch["image_id"][good]], pa.string())
                files: dict[str, int] = {}  # relative path -> bytes: finalize checks them before declaring complete
                for mid in models:
                    parts = self._parts(mid, name, index[good], ids, results.get(mid), codes.get(mid), position[good])
                    for rel, data in parts.items():
                        write_bytes(fs, posixpath.join(root, rel), data)
                        files[rel] = len(data)
                record = {"models": [str(m) for m in models], "image_index": index[prows].tolist(),
                          "image_id": [str(x) for x in batch["image_id"][prows]], "rows": len(good), "files": files,
                          "device": device, "planned": self.planned, "pool": self.pool, "node": node}
                if checked in prows:
                    record["precision_check"] = {str(m): [*checks[m], 1] for m in models if m in checks}
                write_marker(fs, root, writer_key(models), name, record)
                written += 1
        return written


class ImagesSink:
    """The last stage: the images' status per piece (``_images/``), then the piece's marker (on Ray
    Data, inside a datasink: :mod:`.executors.ray`)."""

    def __init__(self, output: str, storage_options: dict, shard_size: int, n_images: int, committed: Ranges) -> None:
        self.output, self.storage_options = output, storage_options
        self.shard_size, self.n_images, self.committed = shard_size, n_images, committed

    def write_batch(self, batch: Mapping[str, np.ndarray]) -> list[str]:
        """Write and commit the images' status of one batch of rows; returns the pieces' names."""
        fs, root = filesystem(self.output, self.storage_options)
        pieces = []
        index = np.asarray(batch["image_index"], np.int64)
        rows = np.flatnonzero(~self.committed.contains(index))
        for piece in split_pieces(index[rows], self.shard_size):
            prows = rows[piece]
            name = piece_name(int(index[prows[0]]), len(prows), self.shard_size, self.n_images)
            status = [str(s) for s in batch["status"][prows]]
            table = pa.table({
                "image_index": pa.array(index[prows], pa.int64()),
                "image_id": pa.array([str(x) for x in batch["image_id"][prows]], pa.string()),
                "status": pa.array(status, pa.string()),
                "error": pa.array([str(e) for e in batch["error"][prows]], pa.string()),
                "width": pa.array(batch["width"][prows], pa.int32()),
                "height": pa.array(batch["height"][prows], pa.int32()),
            })
            data = parquet_bytes(table)
            rel = layout.image_part(name)
            write_bytes(fs, posixpath.join(root, rel), data)
            write_marker(fs, root, IMAGES_WRITER, name, {
                "image_index": index[prows].tolist(), "image_id": table.column("image_id").to_pylist(),
                "ok": status.count("ok"), "error": status.count("error"), "skipped": status.count("skipped"),
                "rows": len(status), "files": {rel: len(data)}})
            pieces.append(name)
        return pieces
