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
5. A marker lists its files with their sizes and its rows; a marker whose files are missing, of
   another size, or hold another number of rows is damaged: a run drops it (and re-encodes those
   rows) before it starts, and ``finalize`` refuses to declare an output with one complete.
6. One job writes an output at a time: it holds ``_lease.json`` (created exclusively, renewed while
   it runs); every write, clean-up and ``--overwrite`` happens under the lease (:mod:`.lease`).
7. The images an output holds are its recorded listing, ``_listing.parquet`` (image_index order;
   fingerprint in ``_job.json``); markers carry the image ids they hold. A rerun whose input lost or
   changed images is refused; images added to the input are appended (new indexes, old ones kept).
8. Listings that decide completeness bypass fsspec's caches (object stores cache them).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ListingChangedError, OutputDamagedError, OutputExistsError, storage_error
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
LEASE = "_lease.json"  # who writes the output now (invariant 6, job/lease.py)
FORMAT_VERSION = 1  # of what readers see (parts, images.parquet, manifest); markers are internal
TMP_PREFIX = ".tmp-"  # files being written (local disks); finalize deletes any left by a killed run


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
    """Write a whole file so that readers never see half of it (rename on local disks). A failure
    (a full disk, no permission) is a :class:`~ned_ray.errors.StorageError` naming the file, and
    leaves no temporary file behind."""
    parent = posixpath.dirname(path)
    try:
        if is_local(fs):
            fs.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(path)}")
            try:
                with fs.open(tmp, "wb") as fh:
                    fh.write(data)
                fs.mv(tmp, path)  # atomic rename on one filesystem
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
        else:
            fs.pipe_file(path, data)  # object stores: the upload is all-or-nothing
    except Exception as exc:  # noqa: BLE001 - OS, botocore and gcsfs errors alike
        raise storage_error("write", _uri(fs, path), exc) from exc


def _uri(fs, path: str) -> str:
    """A path as the user wrote it (with its protocol on object stores), for messages."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def parquet_bytes(table: pa.Table, plain: Sequence[str] = ()) -> bytes:
    """A whole Parquet file (zstd). Columns in ``plain`` (float responses) are written without
    dictionary encoding or statistics: neither helps float data, and they cost a quarter of the
    write (58 -> 43 ms per 200-image EEG part; the files are 2% smaller)."""
    buffer = io.BytesIO()
    others = [c for c in table.column_names if c not in plain]
    pq.write_table(table, buffer, compression="zstd", use_dictionary=others if plain else True,
                   write_statistics=others if plain else True)
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


def fresh_ls(fs, path: str, detail: bool = True):
    """List a folder from the store itself, not from fsspec's listing cache (invariant 8)."""
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
    return fs.ls(path, detail=detail)


def fresh_exists(fs, path: str) -> bool:
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
    return fs.exists(path)


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
        from concurrent.futures import ThreadPoolExecutor

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
            path = posixpath.join(root, COMMITS, key, f"{marker['piece']}.json")
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
            from ..safeload import read_npy_header

            shape, _, _ = read_npy_header(fh, path)
            return int(shape[0]) if shape else 0
        return pq.ParquetFile(fh).metadata.num_rows


def _check_complete(ledger: Ledger, output: str, models: Sequence[ModelId], n_images: int, fs=None,
                    root: str = "") -> None:
    for label, markers in [("images", ledger.images())] + [(str(m), ledger.model_markers(m)) for m in models]:
        seen = ledger.coverage(markers, n_images)
        if (seen != 1).any():
            missing, doubled = np.flatnonzero(seen == 0), np.flatnonzero(seen > 1)
            raise OutputDamagedError(f"output {output} is inconsistent for {label}: {len(missing)} images missing, "
                               f"{len(doubled)} written twice (first: {missing[:5].tolist() or doubled[:5].tolist()}); "
                               "rerun the same command to finish it")
    damaged = ledger.damaged(fs, root) if fs is not None else []
    if damaged:
        raise OutputDamagedError(f"output {output} has {len(damaged)} damaged commit(s) ({damaged[0][2]}); rerun the same "
                           "command to encode them again")


def _remove_orphans(fs, root: str, models: Sequence[ModelId], ledger: Ledger) -> None:
    """Delete files a crashed run left behind (uncommitted pieces, temporary files in any of the
    output's folders): readers never see them."""
    folders: dict[str, set[str] | None] = {posixpath.join(root, IMAGE_PARTS): {m["piece"] for m in ledger.images()}}
    for mid in models:
        folders[posixpath.join(root, str(mid))] = {m["piece"] for m in ledger.model_markers(mid)}
    commits = posixpath.join(root, COMMITS)
    for folder in [root] + (fresh_ls(fs, commits, detail=False) if fresh_exists(fs, commits) else []):
        folders.setdefault(folder, None)  # only temporary files are removed here
    for folder, committed in folders.items():
        if not fresh_exists(fs, folder):
            continue
        for path in fresh_ls(fs, folder, detail=False):
            name = posixpath.basename(path.rstrip("/"))
            if name.endswith(f"-{LEASE}"):
                continue  # the lease's own temporary files are the lease's to remove (Lease.release)
            if name.startswith(TMP_PREFIX) or (committed is not None and name.startswith("part-")
                                               and name.split(".", 1)[0] not in committed):
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
    _check_complete(ledger, output, models, n_images, fs, root)
    _remove_orphans(fs, root, models, ledger)
    pieces = [m["piece"] for m in ledger.images()]
    paths = [posixpath.join(root, IMAGE_PARTS, f"{p}.parquet") for p in pieces]
    tables = [pq.read_table(io.BytesIO(data)) for data in fs.cat(paths).values()] if paths else []
    images = pa.concat_tables(tables).sort_by("image_index") if tables else None
    if images is not None:
        write_bytes(fs, posixpath.join(root, IMAGES), parquet_bytes(images))
    n_ok = sum(m["ok"] for m in ledger.images())
    n_skipped = sum(m.get("skipped", 0) for m in ledger.images())
    manifest = {
        "format_version": FORMAT_VERSION,
        "complete": True,
        "images": {"total": n_images, "ok": n_ok, "error": n_images - n_ok - n_skipped, "skipped": n_skipped,
                   "file": IMAGES},
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


# -- the listing an output holds (invariant 7) --------------------------------------------------------
LISTING = "_listing.parquet"


def listing_fingerprint(listing: pa.Table, chunk_rows: int = 65_536) -> str:
    """sha256 of the listing's rows (id, size, version), in order: equal listings, equal fingerprints.

    Streamed by chunks of rows (one digest of every row's length, one of all the rows' bytes,
    combined): memory stays bounded whatever the listing's length, and the value does not depend
    on the chunking."""
    import pyarrow.compute as pc

    lengths, data = hashlib.sha256(), hashlib.sha256()
    for start in range(0, listing.num_rows, chunk_rows):
        chunk = listing.slice(start, chunk_rows)
        rows = pc.binary_join_element_wise(chunk.column("image_id"), pc.cast(chunk.column("bytes"), pa.string()),
                                           chunk.column("version"), "\t")
        rows = rows.combine_chunks() if isinstance(rows, pa.ChunkedArray) else rows
        offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32)[rows.offset:rows.offset + len(rows) + 1]
        lengths.update(np.diff(offsets).astype("<i4").tobytes())
        data.update(memoryview(rows.buffers()[2])[offsets[0]:offsets[-1]])
    return hashlib.sha256(lengths.digest() + data.digest()).hexdigest()


def read_listing(fs, root: str) -> pa.Table | None:
    path = posixpath.join(root, LISTING)
    if not fresh_exists(fs, path):
        return None
    return pq.read_table(io.BytesIO(fs.cat_file(path)))


def write_listing(fs, root: str, listing: pa.Table) -> None:
    write_bytes(fs, posixpath.join(root, LISTING), parquet_bytes(listing))


def reconcile(previous: pa.Table, current: pa.Table, output: str) -> tuple[pa.Table, int]:
    """The listing a rerun works on: the output's recorded listing (its image_index order kept), plus
    images added to the input since, appended in sorted order. Returns (listing, number added).
    Refuses, in one line, inputs that lost images or changed ones (other size or version).
    Compared with one Arrow join (no Python object per image)."""
    import pyarrow.compute as pc

    keys = ["image_id", "bytes", "version"]
    joined = previous.select(keys).join(current.select(keys), keys="image_id", join_type="full outer",
                                        left_suffix="_old", right_suffix="_new", coalesce_keys=True)
    old_here, new_here = pc.is_valid(joined.column("bytes_old")), pc.is_valid(joined.column("bytes_new"))
    removed = joined.filter(pc.and_(old_here, pc.invert(new_here)))
    both = joined.filter(pc.and_(old_here, new_here))
    modified = both.filter(pc.or_(pc.not_equal(both.column("bytes_old"), both.column("bytes_new")),
                                  pc.not_equal(both.column("version_old"), both.column("version_new"))))
    added = joined.filter(pc.invert(old_here)).column("image_id")
    if removed.num_rows or modified.num_rows:
        removed, modified = removed.sort_by("image_id"), modified.sort_by("image_id")
        parts = [f"{removed.num_rows} removed" + (f" (e.g. {removed['image_id'][0]})" if removed.num_rows else ""),
                 f"{modified.num_rows} modified" + (
                     f" (e.g. {modified['image_id'][0]}: size/version ({modified['bytes_old'][0]}, "
                     f"'{modified['version_old'][0]}') -> ({modified['bytes_new'][0]}, '{modified['version_new'][0]}'))"
                     if modified.num_rows else "")]
        raise ListingChangedError(f"the input changed since output '{output}' was started: {', '.join(parts)}, "
                                  f"{len(added)} added; use --overwrite to start over, or another --output")
    if len(added) == 0:
        return previous, 0
    appended = current.filter(pc.is_in(current.column("image_id"), added)).sort_by("image_id")
    return pa.concat_tables([previous, appended.cast(previous.schema)]), len(added)
