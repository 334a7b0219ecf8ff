"""The commit protocol: what makes written rows count, in one place.

Writers. Every model group's actors write their models' response parts themselves (responses never
travel through Ray's object store); the image sink writes each image's status. Each is a *writer*
with a key: ``models-<hash of its model ids>`` or ``images``.

Pieces. A writer cuts the rows it receives at shard boundaries (``shard = image_index //
shard_size``) into pieces of consecutive rows, named by indexes only: ``part-SSSSS`` for a whole
shard, ``part-SSSSS-IIIIIIIII`` (I = first image_index) for a part of one.

Invariants
1. A writer writes a piece's data files first, its marker ``_commits/<writer key>/<piece>.json``
   last; a marker exists only for data that is whole (local files are renamed into place, object
   store uploads are all-or-nothing).
2. A writer never commits a row twice: it is told which rows are committed for its models (or for
   images) and skips them, so across runs, crashes and retries each (model, image) and (images,
   image) pair is committed at most once.
3. An output is complete when every image is committed exactly once for images and for every
   model; only then is ``_manifest.json`` written, last. Markers hold all the piece's rows (bad
   images too); response parts hold the ``ok`` ones.
4. Files that no marker references are leftovers of unfinished writes: ``finalize`` deletes them.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..ids import ModelId
from ..storage import is_local

__all__ = ["MANIFEST", "JOB_FILE", "COMMITS", "IMAGE_PARTS", "IMAGES", "IMAGES_WRITER", "FORMAT_VERSION", "writer_key",
           "piece_name", "split_pieces", "write_bytes", "write_marker", "Ledger", "Ranges", "finalize", "parquet_bytes"]

MANIFEST = "_manifest.json"
JOB_FILE = "_job.json"
COMMITS = "_commits"
IMAGE_PARTS = "_images"
IMAGES = "images.parquet"
IMAGES_WRITER = "images"
FORMAT_VERSION = 1  # of what readers see (parts, images.parquet, manifest); markers are internal


def writer_key(models: Iterable[ModelId | str]) -> str:
    """The marker folder of a writer that hosts ``models`` (stable for the same set of models)."""
    names = ",".join(sorted(str(m) for m in models))
    return "models-" + hashlib.sha1(names.encode()).hexdigest()[:12]


def piece_name(first: int, n_rows: int, shard_size: int, n_images: int) -> str:
    shard = first // shard_size
    start, stop = shard * shard_size, min((shard + 1) * shard_size, n_images)
    return f"part-{shard:05d}" if (first, n_rows) == (start, stop - start) else f"part-{shard:05d}-{first:09d}"


def split_pieces(index: np.ndarray, shard_size: int) -> list[np.ndarray]:
    """Row positions of ``index`` (sorted here) cut into runs of consecutive images within one shard."""
    order = np.argsort(index, kind="stable")
    ordered = index[order]
    if len(ordered) == 0:
        return []
    cuts = np.flatnonzero((np.diff(ordered) != 1) | (np.diff(ordered // shard_size) != 0)) + 1
    return np.split(order, cuts)


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


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_marker(fs, root: str, key: str, piece: str, record: dict[str, Any]) -> None:
    """Commit a piece for a writer (invariant 1: after its data)."""
    write_bytes(fs, posixpath.join(root, COMMITS, key, f"{piece}.json"),
                json.dumps({**record, "piece": piece, "time": time.time()}).encode())


@dataclass(frozen=True)
class Ranges:
    """Sorted, disjoint [start, stop) ranges of image indexes: a compact set of committed images."""

    starts: tuple[int, ...] = ()
    stops: tuple[int, ...] = ()

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "Ranges":
        padded = np.concatenate([[False], mask.astype(bool), [False]])
        edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
        return cls(tuple(int(x) for x in edges[0::2]), tuple(int(x) for x in edges[1::2]))

    def contains(self, index: np.ndarray) -> np.ndarray:
        """Which of ``index`` lie in the ranges (vectorised)."""
        if not self.starts:
            return np.zeros(len(index), dtype=bool)
        slot = np.searchsorted(np.asarray(self.starts), index, side="right") - 1
        return (slot >= 0) & (index < np.asarray(self.stops)[np.clip(slot, 0, None)])

    def to_list(self) -> list[list[int]]:
        return [[a, b] for a, b in zip(self.starts, self.stops)]


@dataclass
class Ledger:
    """Every commit marker of an output, by writer."""

    markers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # writer key -> markers

    @classmethod
    def read(cls, fs, root: str) -> "Ledger":
        """All markers (from every run). Refuses the marker layout of older ned-ray versions."""
        folder = posixpath.join(root, COMMITS)
        if hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache(folder)  # object stores cache listings
        if not fs.isdir(folder):
            return cls()
        entries = fs.ls(folder, detail=True)
        if any(e["type"] != "directory" and posixpath.basename(e["name"]).startswith("part-") for e in entries):
            raise ValueError(f"'{posixpath.dirname(folder)}' was written by an older ned-ray (commit markers in "
                             f"{COMMITS}/ directly); rerun with --overwrite to rewrite it")
        paths = [p for e in entries if e["type"] == "directory" for p in fs.ls(e["name"], detail=False)
                 if p.endswith(".json") and not posixpath.basename(p).startswith(".")]
        markers: dict[str, list[dict[str, Any]]] = {}
        for path, data in (fs.cat(paths).items() if paths else ()):
            markers.setdefault(posixpath.basename(posixpath.dirname(path)), []).append(json.loads(data))
        for found in markers.values():
            found.sort(key=lambda m: m["image_index"][0] if m["image_index"] else -1)
        return cls(markers)

    def __bool__(self) -> bool:
        return any(self.markers.values())

    def images(self) -> list[dict[str, Any]]:
        return self.markers.get(IMAGES_WRITER, [])

    def model_markers(self, model: ModelId | str) -> list[dict[str, Any]]:
        """Markers of every writer that wrote ``model``."""
        name = str(model)
        found = [m for key, ms in self.markers.items() if key != IMAGES_WRITER for m in ms if name in m["models"]]
        return sorted(found, key=lambda m: m["image_index"][0] if m["image_index"] else -1)

    def coverage(self, markers: Sequence[dict[str, Any]], n_images: int) -> np.ndarray:
        """How many times each image is committed in ``markers``."""
        seen = np.zeros(n_images, dtype=np.int64)
        for marker in markers:
            index = np.asarray(marker["image_index"], np.int64)
            np.add.at(seen, index[(index >= 0) & (index < n_images)], 1)
        return seen

    def done(self, model: ModelId | str | None, n_images: int) -> np.ndarray:
        """Committed images of a model (or of the image sink, for ``None``)."""
        markers = self.images() if model is None else self.model_markers(model)
        return self.coverage(markers, n_images) > 0

    def images_committed(self) -> int:
        return sum(len(m["image_index"]) for m in self.images())


def _check_complete(ledger: Ledger, output: str, models: Sequence[ModelId], n_images: int) -> None:
    for label, markers in [("images", ledger.images())] + [(str(m), ledger.model_markers(m)) for m in models]:
        seen = ledger.coverage(markers, n_images)
        if (seen != 1).any():
            missing, doubled = np.flatnonzero(seen == 0), np.flatnonzero(seen > 1)
            raise RuntimeError(f"output {output} is inconsistent for {label}: {len(missing)} images missing, "
                               f"{len(doubled)} written twice (first: {missing[:5].tolist() or doubled[:5].tolist()}); "
                               "rerun the same command to finish it")


def _remove_orphans(fs, root: str, models: Sequence[ModelId], ledger: Ledger) -> None:
    """Delete files a crashed run left behind (uncommitted pieces, temp files): readers never see them."""
    folders = {posixpath.join(root, IMAGE_PARTS): {m["piece"] for m in ledger.images()}}
    for mid in models:
        folders[posixpath.join(root, str(mid))] = {m["piece"] for m in ledger.model_markers(mid)}
    for folder, committed in folders.items():
        if not fs.isdir(folder):
            continue
        for path in fs.ls(folder, detail=False):
            name = posixpath.basename(path.rstrip("/"))
            if name.startswith(".tmp-") or (name.startswith("part-") and name.split(".", 1)[0] not in committed):
                fs.rm(path)


def _precision_summary(precision: str, ledger: Ledger, models: Sequence[ModelId]) -> dict[str, Any]:
    """The largest deviation from fp32 seen on the checked images, per model (and relative to the
    fp32 responses' standard deviation)."""
    summary: dict[str, Any] = {"mode": precision, "reference": "fp32 on the first image of every block", "models": {}}
    for mid in models:
        checks = [m["precision_check"][str(mid)] for m in ledger.model_markers(mid)
                  if str(mid) in m.get("precision_check", {})]
        checked = sum(n for _, _, n in checks)
        deviation = max((d for d, _, n in checks if n), default=0.0)
        std = max((s for _, s, n in checks if n), default=0.0)
        summary["models"][str(mid)] = {"max_abs_deviation": deviation, "fp32_std": std, "checked_images": checked,
                                       "max_deviation_over_std": deviation / std if std > 0 else None}
    return summary


def device_summary(ledger: Ledger) -> list[dict[str, Any]]:
    """Per model group (writer): the device it was planned on, and where its images were computed."""
    groups = []
    for key, found in sorted(ledger.markers.items()):
        if key == IMAGES_WRITER or not found:
            continue
        ran: dict[str, int] = {}
        nodes: set[str] = set()
        for marker in found:
            ran[marker["device"]] = ran.get(marker["device"], 0) + len(marker["image_index"])
            nodes.add(marker.get("node", ""))
        groups.append({"pool": found[0].get("pool", ""), "writer": key, "models": found[0]["models"],
                       "planned": found[0].get("planned", ""),
                       "ran_on": ran, "nodes": sorted(n for n in nodes if n)})
    return sorted(groups, key=lambda g: (g["pool"], g["writer"]))


def finalize(fs, root: str, output: str, models: Sequence[ModelId], formats: Sequence[str], n_images: int,
             job: dict[str, Any], ledger: Ledger | None = None) -> dict[str, Any]:
    """Check the commits cover every image exactly once, write images.parquet, then the manifest."""
    ledger = ledger or Ledger.read(fs, root)
    _check_complete(ledger, output, models, n_images)
    _remove_orphans(fs, root, models, ledger)
    pieces = [m["piece"] for m in ledger.images()]
    paths = [posixpath.join(root, IMAGE_PARTS, f"{p}.parquet") for p in pieces]
    tables = [pq.read_table(io.BytesIO(data)) for data in fs.cat(paths).values()] if paths else []
    images = pa.concat_tables(tables).sort_by("image_index") if tables else None
    if images is not None:
        write_bytes(fs, posixpath.join(root, IMAGES), parquet_bytes(images))
    n_ok = sum(m["ok"] for m in ledger.images())
    manifest = {
        "format_version": FORMAT_VERSION,
        "complete": True,
        "images": {"total": n_images, "ok": n_ok, "error": n_images - n_ok, "file": IMAGES},
        "models": {
            str(mid): {
                "rows": sum(m["rows"] for m in ledger.model_markers(mid)),
                "parts": {fmt: [f"{mid}/{m['piece']}.{fmt}" for m in ledger.model_markers(mid)] for fmt in formats},
                "metadata": [f"{mid}/metadata.json", f"{mid}/metadata.npz"],
            } for mid in models},
        "chunks": len(pieces),
        "devices": device_summary(ledger),
        "job": job,
    }
    precision = job.get("options", {}).get("precision", "fp32")
    if precision != "fp32":
        manifest["precision"] = _precision_summary(precision, ledger, models)
    write_bytes(fs, posixpath.join(root, MANIFEST), json.dumps(manifest, indent=2).encode())
    return manifest
