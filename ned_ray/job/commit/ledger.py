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

    @classmethod
    def read(cls, fs, root: str) -> "Ledger":
        """All markers (from every run). Refuses the marker layout of older ned-ray versions."""
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
        for key, marker, _ in damaged:
            path = posixpath.join(root, marker_path(key, marker["piece"]))
            if fs.exists(path):
                fs.rm(path)
            for rel in marker.get("files", {}):
                if fs.exists(posixpath.join(root, rel)):
                    fs.rm(posixpath.join(root, rel))
        gone = {id(m) for _, m, _ in damaged}
        return Ledger({key: [m for m in found if id(m) not in gone] for key, found in self.markers.items()})


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
