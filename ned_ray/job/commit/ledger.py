"""The commit markers of an output (its ledger), and what they leave to do.

A marker ``_commits/<writer>/<piece>.json`` commits one piece of one writer (:mod:`.transaction`,
invariants 1-5): its rows' image indexes and ids, its files and their sizes.
"""

from __future__ import annotations

import json
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow.parquet as pq

from ...errors import OutputExistsError
from ...ids import ModelId
from ...output import layout
from ...output.layout import COMMITS, IMAGES_WRITER
from ...output.layout import marker as marker_path
from ...safeload import read_npy_header
from ...storage import fresh_exists, fresh_ls, write_bytes

__all__ = ["Ranges", "Ledger", "Work", "write_marker", "split_pieces"]


def split_pieces(index: np.ndarray, shard_size: int) -> list[np.ndarray]:
    """Row positions of ``index`` (sorted here) cut into runs of consecutive images within one shard."""
    order = np.argsort(index, kind="stable")
    ordered = index[order]
    if len(ordered) == 0:
        return []
    cuts = np.flatnonzero((np.diff(ordered) != 1) | (np.diff(ordered // shard_size) != 0)) + 1
    return np.split(order, cuts)


def write_marker(fs, root: str, key: str, piece: str, record: dict[str, Any]) -> None:
    """Commit a piece for a writer (invariant 1: after its data)."""
    write_bytes(fs, posixpath.join(root, marker_path(key, piece)),
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


@dataclass
class Ledger:
    """Every commit marker of an output, by writer."""

    markers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # writer key -> markers
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (marker path, why): not followed

    @classmethod
    def read(cls, fs, root: str) -> "Ledger":
        """All markers (from every run). Refuses the marker layout of older ned-ray versions. A marker
        that is not one ned-ray wrote (unreadable, another shape, a path leading out of the output or
        to a file of another piece) is listed in ``invalid`` and never followed."""
        folder = posixpath.join(root, COMMITS)
        if not fresh_exists(fs, folder):
            return cls()
        entries = fresh_ls(fs, folder)
        if any(e["type"] != "directory" and posixpath.basename(e["name"]).startswith("part-") for e in entries):
            raise OutputExistsError(f"'{posixpath.dirname(folder)}' was written by an older ned-ray (commit markers in "
                             f"{COMMITS}/ directly); rerun with --overwrite to rewrite it")
        paths = [p for e in entries if e["type"] == "directory" for p in fresh_ls(fs, e["name"], detail=False)
                 if p.endswith(".json") and not posixpath.basename(p).startswith(".")]
        markers: dict[str, list[dict[str, Any]]] = {}
        invalid: list[tuple[str, str]] = []
        for path, data in (fs.cat(paths).items() if paths else ()):
            key = posixpath.basename(posixpath.dirname(path))
            marker, why = _checked(key, posixpath.basename(path), data)
            if why:
                invalid.append((path, why))
            else:
                markers.setdefault(key, []).append(marker)
        for found in markers.values():
            found.sort(key=lambda m: m["image_index"][0] if m["image_index"] else -1)
        return cls(markers, invalid)

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

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        return [(key, m) for key, found in self.markers.items() for m in found]

    def damaged(self, fs, root: str) -> list[tuple[str, dict[str, Any], str]]:
        """(writer key, marker, why) of every marker whose files are missing, of another size, or hold
        another number of rows than it recorded (invariant 5)."""
        listed: dict[str, dict[str, int]] = {}
        for folder in sorted({posixpath.dirname(rel) for _, m in self.entries() for rel in m.get("files", {})}):
            path = posixpath.join(root, folder)
            entries = fresh_ls(fs, path) if fresh_exists(fs, path) else []
            listed[folder] = {posixpath.basename(e["name"]): int(e.get("size") or 0) for e in entries}
        found, to_count = [], []
        for key, marker in self.entries():
            for rel, size in marker.get("files", {}).items():
                actual = listed.get(posixpath.dirname(rel), {}).get(posixpath.basename(rel))
                if actual is None:
                    found.append((key, marker, f"{rel} is missing"))
                    break
                if actual != size:
                    found.append((key, marker, f"{rel} has {actual} bytes, its commit recorded {size}"))
                    break
            else:
                to_count += [(key, marker, rel) for rel in marker.get("files", {})]
        bad = {id(m) for _, m, _ in found}

        with ThreadPoolExecutor(16) as pool:  # row counts from Parquet footers and .npy headers
            counts = list(pool.map(lambda item: _rows_in(fs, posixpath.join(root, item[2])), to_count))
        for (key, marker, rel), rows in zip(to_count, counts):
            expected = len(marker["image_index"]) if key == IMAGES_WRITER else marker["rows"]
            if rows != expected and id(marker) not in bad:
                found.append((key, marker, f"{rel} holds {rows} rows, its commit recorded {expected}"))
                bad.add(id(marker))
        return found

    def drop(self, fs, root: str, damaged: list[tuple[str, dict[str, Any], str]]) -> "Ledger":
        """Uncommit damaged markers (marker first, then their files): their rows are encoded again."""
        from .owned import remove

        for key, marker, _ in damaged:
            remove(fs, root, [marker_path(key, marker["piece"])])
            remove(fs, root, list(marker.get("files", {})))
        gone = {id(m) for _, m, _ in damaged}
        return Ledger({key: [m for m in found if id(m) not in gone] for key, found in self.markers.items()}, self.invalid)

    def drop_invalid(self, fs, root: str) -> "Ledger":
        """Remove the markers that are not ned-ray's (:attr:`invalid`): the marker files themselves,
        inside the output's ``_commits/``, never a file they name."""
        from .owned import remove

        remove(fs, root, [posixpath.relpath(path, root.rstrip("/")) for path, _ in self.invalid])
        return Ledger(self.markers)


def _checked(key: str, name: str, data: bytes) -> tuple[dict[str, Any], str]:
    """(marker, "") for a marker ned-ray wrote, else ({}, why): its folder a writer key, its piece its
    own file name, its rows whole numbers, and every file it lists one of that piece's files inside
    the output (the image sink's under ``_images/``, a model writer's in its models' folders)."""
    try:
        marker = json.loads(data)
    except ValueError:
        return {}, "not JSON"
    if not isinstance(marker, dict):
        return {}, "not a JSON object"
    piece, files = marker.get("piece"), marker.get("files", {})
    if not layout.is_writer_key(key):
        return {}, f"'{key}' is not a writer's folder"
    if not layout.is_piece(piece) or f"{piece}.json" != name:
        return {}, f"its piece {piece!r} is not its own name"
    index, ids = marker.get("image_index"), marker.get("image_id")
    if not isinstance(index, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in index):
        return {}, "its image_index is not a list of image indexes"
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(index) or not all(isinstance(i, str) for i in ids)):
        return {}, "its image_id is not a list of ids, one per image_index"
    if not isinstance(files, dict) or not all(isinstance(v, int) for v in files.values()):
        return {}, "its files are not a {path: bytes} object"
    models = marker.get("models", [])
    if key == IMAGES_WRITER:
        folders = {layout.IMAGE_PARTS}
        if not all(isinstance(marker.get(k, 0), int) for k in ("ok", "error", "skipped")) or "ok" not in marker:
            return {}, "its ok/error/skipped counts are not numbers"
    elif isinstance(models, list) and models and all(isinstance(m, str) and layout.is_model_folder(m) for m in models):
        folders = set(models)
        if not isinstance(marker.get("rows"), int):
            return {}, "its rows are not a number"
    else:
        return {}, "its models are not model ids"
    for rel in files:
        if not layout.is_inside(rel):
            return {}, f"it names a file outside the output: {rel!r}"
        folder, base = posixpath.split(rel)
        if folder not in folders or not layout.owns(rel) or layout.piece_of(base) != piece:
            return {}, f"it names a file that is not one of its piece's: {rel!r}"
    return marker, ""


def _rows_in(fs, path: str) -> int:
    """Rows of a part file, read from its footer (Parquet) or header (.npy) only."""
    with fs.open(path, "rb") as fh:
        if path.endswith(".npy"):
            shape, _, _ = read_npy_header(fh, path)
            return int(shape[0]) if shape else 0
        return pq.ParquetFile(fh).metadata.num_rows


def _ranges(todo: np.ndarray, shard_size: int) -> list[tuple[int, int]]:
    """Contiguous runs of images still to do, cut at shard boundaries."""
    index = np.flatnonzero(todo)
    if len(index) == 0:
        return []
    breaks = np.flatnonzero((np.diff(index) != 1) | (np.diff(index // shard_size) != 0)) + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(index, breaks)]


@dataclass
class Work:
    """What this run still has to do, from the commit markers of earlier runs."""

    remaining: list[tuple[int, int]]  # [start, stop) ranges to decode, within shard bounds
    committed: dict[str, Ranges]  # per model: images already committed
    images_committed: Ranges
    skipped: int  # images complete before this run
    unfinished: list[str] = field(default_factory=list)  # models with images left to commit

    @classmethod
    def of(cls, ledger: Ledger, models: list[ModelId], n_images: int, shard_size: int) -> "Work":
        done = {str(m): ledger.done(m, n_images) for m in models}
        images = ledger.done(None, n_images)
        complete = np.logical_and.reduce([images, *done.values()])
        return cls(_ranges(~complete, shard_size), {m: Ranges.from_mask(d) for m, d in done.items()},
                   Ranges.from_mask(images), int(complete.sum()), [m for m, d in done.items() if not d.all()])

    def to_run(self, models: list[ModelId]) -> list[ModelId]:
        """The models this run computes: those with images left (a model added to an output, the
        unfinished ones of a resumed job); all of them when only images' status is left to write."""
        left = [m for m in models if str(m) in self.unfinished]
        return left or list(models)

    @property
    def images(self) -> int:
        """Images this run encodes."""
        return sum(stop - start for start, stop in self.remaining)
