"""Writing outputs: per-model Parquet/NPY parts, commit markers, images.parquet, the manifest.

Layout of an output folder ``OUT`` (local or any fsspec URL)::

    OUT/_job.json                      options that define the content (checked on rerun)
    OUT/<model_id>/part-NNNNN.parquet  image_index int64, image_id string, response fixed_size_list<float32>
    OUT/<model_id>/part-NNNNN.npy      float32 (n, V) or (n, 4, 63, 140)   [--format npy]
    OUT/<model_id>/part-NNNNN.image_index.npy   int64 (n,), the rows' image_index
    OUT/<model_id>/metadata.json|.npz  NED's metadata + provenance
    OUT/_images/part-NNNNN.parquet     per-image status of that chunk
    OUT/_commits/part-NNNNN.json       commit marker: written after the chunk's data, makes it count
    OUT/images.parquet                 every input: image_index, image_id, status, error, width, height
    OUT/_manifest.json                 written last: its presence means the output is complete

A chunk is a whole shard (``part-NNNNN``, NNNNN = image_index // shard_size) or, when Ray split a
shard's rows, a piece of it (``part-NNNNN-IIIIIIIII``, I = its first image_index). Names depend only
on image indexes, so a rerun rewrites the same names and never duplicates rows.
"""

from __future__ import annotations

import io
import json
import posixpath
import time
import uuid
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import BlockAccessor

from ..ids import ModelId
from ..storage import filesystem, is_local

__all__ = ["ResponseSink", "response_column", "precision_column", "write_bytes", "read_commits", "finalize", "MANIFEST", "JOB_FILE"]

MANIFEST = "_manifest.json"
JOB_FILE = "_job.json"
COMMITS = "_commits"
IMAGE_PARTS = "_images"
IMAGES = "images.parquet"
FORMAT_VERSION = 1


def response_column(model_id: ModelId) -> str:
    return f"response:{model_id}"


def precision_column(model_id: ModelId) -> str:
    """(max |reduced - fp32|, fp32 std) on checked rows, NaN elsewhere; only with --precision tf32|bf16."""
    return f"precision:{model_id}"


def write_bytes(fs, path: str, data: bytes) -> None:
    """Write a whole file so that readers never see half of it (rename on local disks)."""
    parent = posixpath.dirname(path)
    if is_local(fs):
        fs.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, path)  # atomic rename on one filesystem
    else:
        fs.pipe_file(path, data)  # object stores: the upload is all-or-nothing


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def chunk_name(first_index: int, n_rows: int, shard_size: int, n_images: int) -> str:
    shard = first_index // shard_size
    start, stop = shard * shard_size, min((shard + 1) * shard_size, n_images)
    return f"part-{shard:05d}" if (first_index, n_rows) == (start, stop - start) else f"part-{shard:05d}-{first_index:09d}"


class ResponseSink(Datasink[list]):
    """Ray Data sink: each write task writes its chunks' parts, then their commit markers."""

    def __init__(self, output: str, storage_options: dict, models: list[ModelId], formats: tuple[str, ...],
                 shard_size: int, n_images: int) -> None:
        self.output, self.storage_options = output, storage_options
        self.models, self.formats = models, formats
        self.shard_size, self.n_images = shard_size, n_images

    def get_name(self) -> str:
        return "NedRayResponses"

    def write(self, blocks: Iterable[Any], ctx: Any) -> list:
        fs, root = filesystem(self.output, self.storage_options)
        committed = []
        for block in blocks:
            batch = BlockAccessor.for_block(block).to_numpy()
            if len(batch["image_index"]) == 0:
                continue
            shards = batch["image_index"] // self.shard_size
            # rows of one shard are contiguous in a block; split at shard boundaries
            cuts = np.flatnonzero(np.diff(shards)) + 1
            for rows in np.split(np.arange(len(shards)), cuts):
                committed.append(self._write_chunk(fs, root, {k: v[rows] for k, v in batch.items()}))
        return committed

    def _write_chunk(self, fs, root: str, batch: dict[str, np.ndarray]) -> dict:
        order = np.argsort(batch["image_index"], kind="stable")
        batch = {k: v[order] for k, v in batch.items()}
        index = batch["image_index"].astype(np.int64)
        name = chunk_name(int(index[0]), len(index), self.shard_size, self.n_images)
        ok = batch["status"] == "ok"
        ids = pa.array([str(x) for x in batch["image_id"]], pa.string())
        parts: dict[str, int] = {}
        for mid in self.models:
            values = np.ascontiguousarray(batch[response_column(mid)][ok], dtype=np.float32)
            folder = posixpath.join(root, str(mid))
            if "parquet" in self.formats:
                flat = values.reshape(len(values), int(np.prod(values.shape[1:])))  # also for 0 ok rows
                table = pa.table({
                    "image_index": pa.array(index[ok], pa.int64()),
                    "image_id": ids.filter(pa.array(ok)),
                    "response": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.float32()), flat.shape[1]),
                })
                write_bytes(fs, posixpath.join(folder, f"{name}.parquet"), _parquet_bytes(table))
            if "npy" in self.formats:
                write_bytes(fs, posixpath.join(folder, f"{name}.npy"), _npy_bytes(values))
                write_bytes(fs, posixpath.join(folder, f"{name}.image_index.npy"), _npy_bytes(index[ok]))
            parts[str(mid)] = int(ok.sum())
        images = pa.table({
            "image_index": pa.array(index, pa.int64()), "image_id": ids,
            "status": pa.array([str(s) for s in batch["status"]], pa.string()),
            "error": pa.array([str(e) for e in batch["error"]], pa.string()),
            "width": pa.array(batch["width"], pa.int32()), "height": pa.array(batch["height"], pa.int32()),
        })
        write_bytes(fs, posixpath.join(root, IMAGE_PARTS, f"{name}.parquet"), _parquet_bytes(images))
        marker = {"name": name, "image_index": index.tolist(), "ok": int(ok.sum()), "error": int((~ok).sum()),
                  "rows": parts, "time": time.time()}
        checks = {str(m): batch[precision_column(m)] for m in self.models if precision_column(m) in batch}
        checked = {m: v[~np.isnan(v[:, 0])] for m, v in checks.items()}
        if checked:  # per model: [max deviation, max fp32 std, images checked]
            marker["precision_check"] = {m: [float(v[:, 0].max()) if len(v) else 0.0,
                                             float(v[:, 1].max()) if len(v) else 0.0, len(v)] for m, v in checked.items()}
        write_bytes(fs, posixpath.join(root, COMMITS, f"{name}.json"), json.dumps(marker).encode())
        return marker


def read_commits(fs, root: str) -> list[dict]:
    """Every committed chunk of an output (from earlier runs too)."""
    folder = posixpath.join(root, COMMITS)
    if not fs.isdir(folder):
        return []
    paths = sorted(p for p in fs.ls(folder, detail=False) if p.endswith(".json") and not posixpath.basename(p).startswith("."))
    return [json.loads(data) for data in fs.cat(paths).values()] if paths else []


def _remove_orphans(fs, root: str, models: list[ModelId], committed: set[str]) -> None:
    """Delete files a crashed run left behind (uncommitted chunks, temp files): readers never see them."""
    for folder in [posixpath.join(root, str(m)) for m in models] + [posixpath.join(root, IMAGE_PARTS)]:
        if not fs.isdir(folder):
            continue
        for path in fs.ls(folder, detail=False):
            name = posixpath.basename(path.rstrip("/"))
            chunk = name.split(".", 1)[0]
            if name.startswith(".tmp-") or (name.startswith("part-") and chunk not in committed):
                fs.rm(path)


def _precision_summary(precision: str, commits: list[dict], models: list[ModelId]) -> dict[str, Any]:
    """The largest deviation from fp32 seen on the checked images, per model (and relative to the
    fp32 responses' standard deviation)."""
    summary: dict[str, Any] = {"mode": precision, "reference": "fp32 on the first image of every block", "models": {}}
    for mid in models:
        checks = [c["precision_check"][str(mid)] for c in commits if str(mid) in c.get("precision_check", {})]
        checked = sum(n for _, _, n in checks)
        deviation = max((d for d, _, n in checks if n), default=0.0)
        std = max((s for _, s, n in checks if n), default=0.0)
        summary["models"][str(mid)] = {"max_abs_deviation": deviation, "fp32_std": std, "checked_images": checked,
                                       "max_deviation_over_std": deviation / std if std > 0 else None}
    return summary


def finalize(output: str, storage_options: dict, models: list[ModelId], formats: tuple[str, ...], n_images: int,
             job: dict[str, Any]) -> dict[str, Any]:
    """Check the commits cover every image exactly once, write images.parquet, then the manifest."""
    fs, root = filesystem(output, storage_options)
    commits = sorted(read_commits(fs, root), key=lambda c: c["image_index"][0])
    seen = np.zeros(n_images, dtype=np.int64)
    for commit in commits:
        np.add.at(seen, np.asarray(commit["image_index"], np.int64), 1)
    if (seen != 1).any():
        missing, doubled = np.flatnonzero(seen == 0), np.flatnonzero(seen > 1)
        raise RuntimeError(f"output {output} is inconsistent: {len(missing)} images missing, {len(doubled)} written twice "
                           f"(first: {missing[:5].tolist() or doubled[:5].tolist()}); rerun the same command to finish it")
    _remove_orphans(fs, root, models, {c["name"] for c in commits})
    image_paths = [posixpath.join(root, IMAGE_PARTS, f"{c['name']}.parquet") for c in commits]
    tables = [pq.read_table(io.BytesIO(data)) for data in fs.cat(image_paths).values()] if image_paths else []
    images = pa.concat_tables(tables).sort_by("image_index") if tables else None
    if images is not None:
        write_bytes(fs, posixpath.join(root, IMAGES), _parquet_bytes(images))
    n_ok = sum(c["ok"] for c in commits)
    n_error = sum(c["error"] for c in commits)
    manifest = {
        "format_version": FORMAT_VERSION,
        "complete": True,
        "images": {"total": n_images, "ok": n_ok, "error": n_error, "file": IMAGES},
        "models": {
            str(mid): {
                "rows": sum(c["rows"].get(str(mid), 0) for c in commits),
                "parts": {fmt: [f"{str(mid)}/{c['name']}.{fmt}" for c in commits] for fmt in formats},
                "metadata": [f"{str(mid)}/metadata.json", f"{str(mid)}/metadata.npz"],
            } for mid in models},
        "chunks": len(commits),
        "job": job,
    }
    precision = job.get("options", {}).get("precision", "fp32")
    if precision != "fp32":
        manifest["precision"] = _precision_summary(precision, commits, models)
    write_bytes(fs, posixpath.join(root, MANIFEST), json.dumps(manifest, indent=2).encode())
    return manifest
