"""Inputs: every file the user pointed at, its stable ``image_index``/``image_id`` and identity, and
reading images by shard.

* a folder (searched recursively, symlinked folders followed once each), a glob, or a ``.txt`` file
  listing one URI per line (local paths, relative to the list, or any fsspec URL). Folder and glob
  names are taken literally (``stimuli [v2]/a [1].png`` is a name, not a pattern). Files whose
  extension ned-ray does not read are listed too, with ``skip`` saying why (they become rows of
  ``images.parquet`` with status ``skipped``); a list's entries are all read (they were asked for).
* a ``.npy`` array (N, 3, H, W) uint8: read by byte ranges, one request per shard.
* WebDataset tar shards: a folder or glob of ``.tar`` files, or a brace pattern
  (``shards/{0000..0099}.tar``); one row per sample, ``image_id = <shard>/<key>``
  (:mod:`ned_ray.job.tarshards`: indexed once, read by ranged reads).
* a Parquet file with an image-bytes column (``image``, ``bytes``, ``image_bytes``, ``content``, or a
  Hugging Face-style struct with ``bytes``) and an optional ``image_id``/``id``/``path`` column; a
  shard reads only the row groups that hold its rows. A Parquet file whose image column holds paths
  or URIs instead (a metadata table: ``path``, ``uri``, ``file``, ...) is read like a ``.txt`` list;
  ``column`` (``--image-column``) picks the column where several fit.

The job's own output is never an input: when ``exclude`` (the output) lies inside a folder or glob
being listed, its files are left out (and a note says so).

The listing is an Arrow table (compact at millions of entries): ``image_id`` (the URI relative to the
input root, the id column, or the row number), ``uri``, ``bytes`` and ``version`` (the store's
size and ETag/generation/mtime, where listing gives them: folders and globs; local list entries;
the whole file for .npy and Parquet; a tar member's size and its shard's version), ``skip`` (why a
file is not read, or empty); tar shards add ``offset`` (where the member's bytes start).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field, replace
from typing import Any

import braceexpand
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from PIL import features

from ..errors import NoImagesError
from ..safeload import read_npy_header
from ..storage import file_identity, filesystem, is_local
from .parquet_input import describe, holds, image_column, image_ids, read_rows, relative_name
from .tarshards import index_shards, read_members, sample_rows

__all__ = ["ImageSource", "open_source", "NoImagesError", "READABLE", "Skipped", "LISTING_SCHEMA", "OFFSET_LISTING_SCHEMA"]

# Raster formats Pillow decodes by itself (animated GIF/APNG/WebP: the first frame), read from folders
# and globs; JPEG 2000 and AVIF where this Pillow build has their codecs.
READABLE = tuple([".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
                  ".tga", ".ppm", ".pgm", ".pbm", ".pnm", ".qoi", ".ico", ".pcx", ".sgi", ".psd"]
                 + ([".jp2", ".j2k", ".jpx", ".jpf", ".j2c"] if features.check("jpg_2000") else [])
                 + ([".avif"] if features.check("avif") else []))
LISTING_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("bytes", pa.int64()),
                            ("version", pa.string()), ("skip", pa.string())])
# inputs read by position inside a file: tar shards (the member's byte offset), Parquet files (the row)
OFFSET_LISTING_SCHEMA = LISTING_SCHEMA.append(pa.field("offset", pa.int64()))


@dataclass(frozen=True)
class Skipped:
    """A listed file that is not read: why."""

    reason: str


def _table(ids: list[str], uris: list[str], sizes: list[int], versions: list[str], skips: list[str]) -> pa.Table:
    return pa.table([pa.array(ids, pa.string()), pa.array(uris, pa.string()), pa.array(sizes, pa.int64()),
                     pa.array(versions, pa.string()), pa.array(skips, pa.string())], schema=LISTING_SCHEMA)


@dataclass
class ImageSource:
    """A listed input. ``read(start, stop)`` returns raw items for images [start, stop): bytes,
    uint8 arrays, :class:`Skipped`, or the exception that reading raised."""

    uri: str
    kind: str  # files | tar | npy | parquet
    listing: pa.Table
    storage_options: dict[str, Any] = field(default_factory=dict)
    npy_offset: int = 0
    npy_shape: tuple[int, ...] = ()
    parquet_column: str = ""  # the image column of a Parquet input
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # .txt lines naming a URI listed before
    notes: list[str] = field(default_factory=list)  # what a person should know about the listing (printed once)

    def __len__(self) -> int:
        return self.listing.num_rows

    @property
    def ids(self) -> list[str]:
        return self.listing.column("image_id").to_pylist()

    @property
    def uris(self) -> list[str]:
        return self.listing.column("uri").to_pylist()

    def with_listing(self, listing: pa.Table) -> "ImageSource":
        """The same input with another listing (an output's recorded order plus appended images)."""
        return replace(self, listing=listing)

    def description(self) -> "ImageSource":
        """A copy without the per-image listing: what a decode task needs besides its shard item."""
        return replace(self, listing=self.listing.slice(0, 0), duplicates=[], notes=[])

    @property
    def row_columns(self) -> list[str]:
        """The listing columns :meth:`read` needs of each image (files and tar shards)."""
        return {"files": ["uri", "skip"], "tar": ["uri", "skip", "offset", "bytes"], "parquet": ["uri", "offset"]}.get(
            self.kind, [])

    def read(self, start: int, stop: int, rows: pa.Table | None = None) -> list[bytes | np.ndarray | Skipped | Exception]:
        """Raw items of images [start, stop); ``rows``: their listing rows (:attr:`row_columns`) when
        this copy does not hold the listing."""
        if self.kind in ("files", "tar"):
            rows = rows if rows is not None else self.listing.slice(start, stop - start)
            uris, skip = rows.column("uri").to_pylist(), rows.column("skip").to_pylist()
            wanted = [i for i, s in enumerate(skip) if not s]
            if self.kind == "files":
                data = _read_files([uris[i] for i in wanted], self.storage_options)
            else:
                fs, _ = filesystem(self.uri, self.storage_options)
                offsets, sizes = rows.column("offset").to_pylist(), rows.column("bytes").to_pylist()
                data = read_members(fs, [fs._strip_protocol(uris[i]) for i in wanted], [offsets[i] for i in wanted],
                                    [sizes[i] for i in wanted])
            found = dict(zip(wanted, data))
            return [Skipped(s) if s else found[i] for i, s in enumerate(skip)]
        fs, path = filesystem(self.uri, self.storage_options)
        if self.kind == "npy":
            row = int(np.prod(self.npy_shape[1:]))
            data = fs.cat_file(path, start=self.npy_offset + start * row, end=self.npy_offset + stop * row)
            whole = len(data) // row  # a truncated file: the images it does not hold whole are error rows
            images: list[Any] = list(np.frombuffer(data, np.uint8, count=whole * row).reshape(whole, *self.npy_shape[1:]))
            return images + [ValueError(f"truncated .npy input: the file ends before image {start + i} (its header "
                                        f"promises {self.npy_shape[0]} images)") for i in range(whole, stop - start)]
        rows = rows if rows is not None else self.listing.slice(start, stop - start)
        paths = [fs._strip_protocol(u) for u in rows.column("uri").to_pylist()]
        return read_rows(fs, paths, rows.column("offset").to_numpy(), self.parquet_column)


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def _read_files(uris: list[str], storage_options: dict[str, Any]) -> list[bytes | Exception]:
    """The bytes of each URI (or the exception reading it), each through its own protocol's filesystem
    and options: a local ``.txt`` list may name ``s3://`` or ``gs://`` objects."""
    found: dict[str, bytes | Exception] = {}
    for protocol in dict.fromkeys(_protocol(u) for u in uris):
        wanted = [u for u in uris if _protocol(u) == protocol]
        try:
            fs, _ = filesystem(wanted[0], storage_options)
            paths = [filesystem(u, storage_options)[1] for u in wanted]
            # concurrent on object stores; paths are taken literally (no glob expansion of '[', '*', '?')
            data = fs.cat_ranges(paths, None, None, on_error="return")
        except Exception as exc:  # no such filesystem, unreachable store: every image of it is an error row
            data = [exc] * len(wanted)
        found.update(zip(wanted, data))
    return [found[u] for u in uris]


def _read_list(fh, root: str) -> tuple[pa.StringArray, list[dict[str, Any]]]:
    """A .txt list's URIs, absolute (relative entries joined to ``root``), sorted, each once; and the
    URIs named more than once with their line numbers. Read and sorted in Arrow: no Python object
    per line, so a list of millions of entries costs a few hundred bytes per entry at peak."""
    if not fh.read(1):
        return pa.array([], pa.string()), []
    fh.seek(0)
    table = pacsv.read_csv(fh, read_options=pacsv.ReadOptions(column_names=["line"]),
                           parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False, ignore_empty_lines=False),
                           convert_options=pacsv.ConvertOptions(column_types={"line": pa.string()},
                                                                strings_can_be_null=False))
    lines = pc.utf8_trim_whitespace(table.column("line").combine_chunks())
    keep = pc.invert(pc.starts_with(lines, "#"))
    return _uris_of(lines, keep, root)


def _uris_of(lines: pa.StringArray, keep: pa.BooleanArray, root: str) -> tuple[pa.StringArray, list[dict[str, Any]]]:
    """The URIs of a list's entries (``keep``, non-empty), absolute, sorted, each once; the repeated
    ones with their entry numbers (1-based: lines of a .txt, rows of a Parquet file)."""
    numbers = pa.array(np.arange(1, len(lines) + 1, dtype=np.int64))
    keep = pc.and_(keep, pc.not_equal(lines, ""))
    lines, numbers = lines.filter(keep), numbers.filter(keep)
    absolute = pc.or_(pc.match_substring(lines, "://"), pc.starts_with(lines, "/"))
    uris = pc.if_else(absolute, lines, pc.binary_join_element_wise(root.rstrip("/"), lines, "/"))
    order = pc.sort_indices(uris)  # stable: a URI's first line comes first
    uris, numbers = uris.take(order), numbers.take(order)
    first = np.ones(len(uris), bool)
    if len(uris) > 1:
        first[1:] = pc.not_equal(uris.slice(1), uris.slice(0, len(uris) - 1)).to_numpy(zero_copy_only=False)
    duplicates: list[dict[str, Any]] = []
    if not first.all():  # only the repeated URIs become Python objects
        starts = np.flatnonzero(first)
        ends = np.append(starts[1:], len(uris))
        for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
            duplicates.append({"uri": uris[int(start)].as_py(), "lines": numbers.slice(start, end - start).to_pylist()})
    return uris.filter(pa.array(first)), duplicates


def _relative_ids(uris: pa.StringArray, root: str) -> pa.StringArray:
    """Each URI relative to ``root`` where it lies under it, else the URI itself (vectorised _relative)."""
    prefix = root.rstrip("/") + "/"
    under = pc.starts_with(uris, prefix)
    return pc.if_else(under, pc.utf8_slice_codeunits(uris, len(prefix)), uris)


def _local_identities(uris: pa.StringArray, chunk: int = 65_536) -> tuple[pa.Array, pa.Array]:
    """Size and mtime of local entries (cheap: one stat each, by chunks); remote ones get none (-1, "")
    without a request per file."""
    sizes = np.full(len(uris), -1, np.int64)
    versions: list[str] = [""] * len(uris)
    local = np.flatnonzero(~pc.match_substring(uris, "://").to_numpy(zero_copy_only=False))
    for begin in range(0, len(local), chunk):
        rows = local[begin:begin + chunk]
        for row, u in zip(rows, uris.take(pa.array(rows)).to_pylist()):
            try:
                st = os.stat(u)
            except OSError:
                continue
            sizes[row], versions[row] = st.st_size, str(st.st_mtime_ns)
    return pa.array(sizes), pa.array(versions, pa.string())


def _relative(uri: str, root: str) -> str:
    root = root.rstrip("/") + "/"
    return uri[len(root):] if uri.startswith(root) else uri


def _skip_reason(path: str) -> str:
    name = posixpath.basename(path)
    if name.startswith("."):
        return "hidden file"
    ext = posixpath.splitext(name)[1].lower()
    if ext not in READABLE:
        return (f"not a format ned-ray reads ({ext or 'no extension'}); it reads "
                f"{', '.join(READABLE)}; list the file in a .txt input to try it anyway")
    return ""


def _walk_local(root: str, exclude: str | None = None) -> list[tuple[str, int, str]]:
    """Every file under ``root`` (path, size, mtime), following symlinked folders once each (loops cut);
    the folder ``exclude`` (the job's output) is not entered."""
    found = []
    seen: set[tuple[int, int]] = set()
    skip = _stat_key(exclude) if exclude else None
    for folder, dirs, files in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen or (stat.st_dev, stat.st_ino) == skip:
            dirs[:] = []  # a symlink back up the tree, a folder linked twice, or the output
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs.sort()
        for name in files:
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:  # a dangling symlink: listed, and its read fails with the reason
                found.append((path, -1, ""))
                continue
            found.append((path, int(st.st_size), str(st.st_mtime_ns)))
    return found


def _stat_key(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _list_folder(fs, path: str, exclude: str | None = None) -> list[tuple[str, int, str]]:
    if is_local(fs):
        return [e for e in _walk_local(path, exclude) if not _under(e[0], exclude)]
    return [(name, int(info.get("size") or 0), _version(info))
            for name, info in sorted(fs.find(path, detail=True).items())
            if info.get("type") != "directory" and not _under(name, exclude)]


def _under(path: str, folder: str | None) -> bool:
    return bool(folder) and (path == folder or path.startswith(folder.rstrip("/") + "/"))


def _output_inside(fs, root: str, output: str | None, storage_options: dict[str, Any]) -> str | None:
    """The output's path on ``fs`` when it lies inside the listed folder ``root``, else None."""
    if not output:
        return None
    try:
        out_fs, out_path = filesystem(output, storage_options)
    except (ImportError, ValueError):
        return None
    if is_local(fs) != is_local(out_fs) or (not is_local(fs) and out_fs.protocol != fs.protocol):
        return None
    if is_local(fs):
        out_path, root = os.path.realpath(out_path), os.path.realpath(root)
    out_path = out_path.rstrip("/")
    return out_path if _under(out_path, root) and out_path != root.rstrip("/") else None


def _excluded(source: ImageSource, inside: str | None, output: str | None) -> ImageSource:
    if inside:
        source.notes.append(f"note: the output '{output}' lies inside the input '{source.uri}': its files are not "
                            "inputs (left out of the listing)")
    return source


def _version(info: dict[str, Any]) -> str:
    identity = file_identity(info)
    return next((str(v) for k, v in identity.items() if k != "bytes"), "")


def _listed(uri: str, uris: pa.StringArray, duplicates: list[dict[str, Any]], root: str,
            storage_options: dict[str, Any]) -> ImageSource:
    """A list's URIs (a .txt file, a Parquet column of paths) as a files input."""
    if len(uris) == 0:
        raise NoImagesError(f"no images found: '{uri}' lists no image URIs")
    sizes, versions = _local_identities(uris)
    listing = pa.table([_relative_ids(uris, root), uris, sizes, versions, pa.repeat(pa.scalar("", pa.string()), len(uris))],
                       schema=LISTING_SCHEMA)
    return ImageSource(uri, "files", listing, storage_options, duplicates=duplicates)


def _list_source(uri: str, lines: pa.StringArray, keep: pa.BooleanArray, root: str, storage_options: dict[str, Any],
                 what: str) -> ImageSource:
    """A Parquet column of paths or URIs, read as a .txt list is (relative ones against ``root``)."""
    blank = len(lines) - int(pc.sum(pc.and_(keep, pc.not_equal(pc.fill_null(lines, ""), ""))).as_py() or 0)
    uris, duplicates = _uris_of(pc.fill_null(lines, ""), pc.fill_null(keep, False), root)
    source = _listed(uri, uris, duplicates, root, storage_options)  # duplicates' "lines" are 1-based rows here
    if blank:
        source.notes.append(f"note: '{uri}': {blank} {what} are empty or null: no image there, nothing listed for them")
    return source


def _is_shard(path: str) -> bool:
    return path.lower().endswith(".tar") and not posixpath.basename(path).startswith(".")


def _files_source(uri: str, entries: list[tuple[str, int, str]], root: str, protocol: str,
                  storage_options: dict[str, Any], fs=None, column: str | None = None,
                  id_column: str | None = None, known: pa.Table | None = None) -> ImageSource:
    """Listed files as an input: loose images; or, where the files hold no image, tar shards or
    Parquet shards (the files of the other kind beside them are skipped rows or ignored)."""
    entries = sorted(entries)
    if fs is not None and not any(not _skip_reason(p) for p, _, _ in entries):
        if any(_is_shard(p) for p, _, _ in entries):
            return _tar_source(uri, fs, entries, root, protocol, storage_options, known)
        tables = [e for e in entries if e[0].lower().endswith(".parquet") and not posixpath.basename(e[0]).startswith(".")]
        if tables:
            source = _parquet_source(uri, fs, tables, root, protocol, storage_options, column, id_column)
            others = [_relative(e[0], root) for e in entries if e not in tables]
            if others:
                source.notes.append(f"note: '{uri}': {len(others)} file(s) beside its Parquet files are not inputs "
                                    f"(e.g. {others[0]})")
            return source
    uris = [protocol + p if protocol else p for p, _, _ in entries]
    ids = [_relative(p, root) for p, _, _ in entries]
    listing = _table(ids, uris, [s for _, s, _ in entries], [v for _, _, v in entries],
                     [_skip_reason(p) for p, _, _ in entries])
    return ImageSource(uri, "files", listing, storage_options)


def _recorded_samples(known: pa.Table | None, versions: dict[str, str]) -> dict[str, list[tuple[str, int, int, str]]]:
    """The rows an earlier listing (an output's) holds for each tar shard URI whose version it
    recorded is ``versions[uri]`` still: those shards need no indexing."""
    if known is None or "offset" not in known.column_names:
        return {}
    keep = pc.is_in(known.column("uri"), pa.array(list(versions), pa.string()))
    rows = known.filter(keep)
    found: dict[str, list[tuple[str, int, int, str]]] = {}
    stale: set[str] = set()
    for image_id, shard, size, version, skip, offset in zip(*(rows.column(c).to_pylist() for c in (
            "image_id", "uri", "bytes", "version", "skip", "offset"))):
        if version != versions[shard]:
            stale.add(shard)
        found.setdefault(shard, []).append((image_id, offset, size, skip))
    return {shard: samples for shard, samples in found.items() if shard not in stale}


def _tar_source(uri: str, fs, entries: list[tuple[str, int, str]], root: str, protocol: str,
                storage_options: dict[str, Any], known: pa.Table | None = None) -> ImageSource:
    """Tar shards (and files beside them, listed as skipped) as an input: one row per sample. Shards
    that ``known`` (an output's recorded listing) holds at their current version are not indexed again."""
    shards = [e for e in entries if _is_shard(e[0])]
    recorded = _recorded_samples(known, {(protocol + p if protocol else p): v for p, _, v in shards})
    new = [(p, s) for p, s, _ in shards if (protocol + p if protocol else p) not in recorded]
    indexes = dict(zip([p for p, _ in new], index_shards(fs, new))) if new else {}
    ids, uris, sizes, versions, skips, offsets = [], [], [], [], [], []
    for path, size, version in entries:
        shard_id, shard_uri = _relative(path, root), protocol + path if protocol else path
        if shard_uri in recorded:
            rows = recorded[shard_uri]
        elif path in indexes:
            rows = sample_rows(fs, path, shard_id, indexes[path], READABLE)
        else:
            rows = [(shard_id, 0, size, "not a tar shard (this input is a set of tar shards)")]
        for image_id, offset, member_size, skip in rows:
            ids.append(image_id), uris.append(shard_uri), sizes.append(member_size), versions.append(version)
            skips.append(skip), offsets.append(offset)
    if not ids:
        raise NoImagesError(f"no images found in '{uri}': its tar shards hold no members")
    listing = pa.table([pa.array(ids, pa.string()), pa.array(uris, pa.string()), pa.array(sizes, pa.int64()),
                        pa.array(versions, pa.string()), pa.array(skips, pa.string()), pa.array(offsets, pa.int64())],
                       schema=OFFSET_LISTING_SCHEMA)
    if all(skips):
        raise NoImagesError(f"no images found in '{uri}': {len(shards)} tar shard(s), no sample with an image member "
                            f"(e.g. {ids[0]}: {skips[0]})")
    return ImageSource(uri, "tar", listing, storage_options)


def _parquet_source(uri: str, fs, entries: list[tuple[str, int, str]], root: str, protocol: str,
                    storage_options: dict[str, Any], column: str | None, id_column: str | None) -> ImageSource:
    """Parquet files (one, or the shards of a dataset) as an input: one row per table row."""
    shards = describe(fs, [p for p, _, _ in entries])
    image, kind = image_column(uri, shards[0].schema, column)
    if kind == "paths":
        if len(shards) > 1:
            raise NoImagesError(f"'{uri}': {len(shards)} Parquet files whose column '{image}' holds image paths; give "
                                "one table of paths (or a .txt list), or tables of image bytes")
        with fs.open(shards[0].path, "rb") as fh:
            lines = pc.utf8_trim_whitespace(pq.ParquetFile(fh).read(columns=[image]).column(0).combine_chunks())
        where = posixpath.dirname(uri if protocol else shards[0].path)
        return _list_source(uri, lines, pc.is_valid(lines), where, storage_options, f"row(s) of column '{image}'")
    for shard in shards[1:]:
        if image not in shard.schema.names or holds(shard.schema.field(image).type) != "bytes":
            found = shard.schema.field(image).type if image in shard.schema.names else "no such column"
            raise NoImagesError(f"'{protocol}{shard.path}': its column '{image}' ({found}) does not hold image bytes as "
                                f"'{protocol}{shards[0].path}' does; the Parquet files of one input share their image column")
    total = sum(s.rows for s in shards)
    if total == 0:
        raise NoImagesError(f"no images found: '{uri}' has 0 rows")
    ids, from_column = image_ids(uri, fs, shards, [relative_name(s.path, root) for s in shards], image, id_column)
    order = pc.sort_indices(ids)
    ordered = ids.take(order)
    repeated = np.flatnonzero(pc.equal(ordered.slice(1), ordered.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)) \
        if len(ids) > 1 else []
    if len(repeated):
        first = order.to_numpy()[repeated[0]:repeated[0] + 2]
        raise NoImagesError(f"'{uri}': column '{from_column}' has duplicate ids ('{ordered[int(repeated[0])]}' at rows "
                            f"{min(first)} and {max(first)}); image ids must be unique (give --id-column, or drop the "
                            "column to use row numbers)")
    files = np.repeat(np.arange(len(shards)), [s.rows for s in shards])
    uris = pa.array([protocol + s.path if protocol else s.path for s in shards], pa.string()).take(pa.array(files))
    versions = pa.array([v for _, _, v in entries], pa.string()).take(pa.array(files))
    offsets = np.concatenate([np.arange(s.rows) for s in shards])
    listing = pa.table([ids, uris, pa.array(np.full(total, -1, np.int64)), versions,
                        pa.repeat(pa.scalar("", pa.string()), total), pa.array(offsets)], schema=OFFSET_LISTING_SCHEMA)
    return ImageSource(uri, "parquet", listing, storage_options, parquet_column=image)


def _expanded(fs, path: str, uri: str) -> list[tuple[str, int, str]]:
    """The files a brace pattern names (``shards/{0000..0099}.tar``), each of which must exist; one
    listing per folder, not a request per file."""
    paths = list(dict.fromkeys(braceexpand.braceexpand(path)))
    folders: dict[str, dict[str, dict]] = {}
    for folder in dict.fromkeys(posixpath.dirname(p) for p in paths):
        try:
            folders[folder] = {fs._strip_protocol(e["name"]).rstrip("/"): e for e in fs.ls(folder, detail=True)}
        except (FileNotFoundError, NotADirectoryError):
            folders[folder] = {}
    found = [(p, folders[posixpath.dirname(p)].get(p.rstrip("/"))) for p in paths]
    missing = [p for p, info in found if info is None or info.get("type") == "directory"]
    if missing:
        raise NoImagesError(f"the pattern '{uri}' names {len(paths)} files and {len(missing)} of them do not exist "
                            f"(e.g. '{missing[0]}'); fix the pattern or restore the files")
    return [(p, int(info.get("size") or 0), _version(info)) for p, info in found]


def _no_readable(uri: str, listing: pa.Table) -> None:
    if listing.num_rows and all(listing.column("skip").to_pylist()):
        names = listing.column("image_id").to_pylist()
        raise NoImagesError(f"no images found in '{uri}': {len(names)} file(s), none in a format ned-ray reads "
                            f"(e.g. {names[0]}); it reads {', '.join(READABLE)}")


def open_source(uri: str, storage_options: dict[str, Any] | None = None, column: str | None = None,
                exclude: str | None = None, id_column: str | None = None, known: pa.Table | None = None) -> ImageSource:
    """List an input (on the driver: cheap, no image is read). ``column``: a Parquet input's image
    column (bytes or paths); ``id_column``: its id column; ``exclude``: the job's output, never
    listed as an input; ``known``: the output's recorded listing (tar shards unchanged since are
    not indexed again)."""
    storage_options = storage_options or {}
    try:
        fs, path = filesystem(uri, storage_options)
    except (ImportError, ValueError) as exc:
        raise NoImagesError(f"cannot open images at '{uri}': {exc}") from None
    lower = path.lower()
    protocol = uri.split("://", 1)[0] + "://" if "://" in uri else ""
    literal_dir = fs.isdir(path)

    if lower.endswith(".npy") and not literal_dir:
        with fs.open(path, "rb") as fh:
            shape, fortran, dtype = read_npy_header(fh, uri)
            offset = fh.tell()
        if dtype != np.uint8 or len(shape) != 4 or shape[1] != 3 or fortran:
            raise NoImagesError(f"'{uri}': a .npy input must be a C-ordered uint8 array (N, 3, H, W); got {dtype} {shape}")
        if shape[0] == 0:
            raise NoImagesError(f"no images found: '{uri}' holds 0 images (shape {tuple(shape)})")
        info = fs.info(path)
        version = _version(info)
        n, row = shape[0], int(np.prod(shape[1:]))
        listing = _table([str(i) for i in range(n)], [""] * n, [row] * n, [version] * n, [""] * n)
        whole = max(0, int(info.get("size") or 0) - offset) // row
        notes = [] if whole >= n else [f"warning: '{uri}' is truncated: its header promises {n} images of {row} bytes, "
                                       f"the file holds {whole} whole; images {whole} to {n - 1} are error rows"]
        return ImageSource(uri, "npy", listing, storage_options, npy_offset=offset, npy_shape=tuple(shape), notes=notes)

    if lower.endswith(".parquet") and not literal_dir and fs.isfile(path):  # (else a glob, or missing)
        info = fs.info(path)
        entry = (path, int(info.get("size") or 0), _version(info))
        return _parquet_source(uri, fs, [entry], posixpath.dirname(path), protocol, storage_options, column, id_column)

    if lower.endswith((".txt", ".lst")) and not literal_dir:
        root = posixpath.dirname(uri if protocol else path)  # local: absolute, so workers anywhere read it
        with fs.open(path, "rb") as fh:
            try:
                uris, duplicates = _read_list(fh, root)
            except pa.ArrowInvalid as exc:
                raise NoImagesError(f"'{uri}' is not a list of image URIs (one per line, UTF-8 text): "
                                    f"{str(exc).splitlines()[0]}") from None
        return _listed(uri, uris, duplicates, root, storage_options)

    if literal_dir:
        inside = _output_inside(fs, path, exclude, storage_options)
        entries = _list_folder(fs, path, inside)
        if not entries:
            raise NoImagesError(f"no images found in '{uri}': the folder is empty")
        source = _files_source(uri, entries, path, protocol, storage_options, fs, column, id_column, known)
        _no_readable(uri, source.listing)
        return _excluded(source, inside, exclude)
    if "{" in path and "}" in path and not fs.exists(path):  # a brace pattern (a literal name with braces wins)
        root_path = path.split("{")[0].rsplit("/", 1)[0]
        source = _files_source(uri, _expanded(fs, path, uri), root_path, protocol, storage_options, fs, column, id_column, known)
        _no_readable(uri, source.listing)
        return source
    if any(ch in path for ch in "*?["):
        root_path = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
        inside = _output_inside(fs, root_path, exclude, storage_options)
        matches = {name: info for name, info in fs.glob(path, detail=True).items()
                   if info.get("type") != "directory" and not _under(os.path.realpath(name) if is_local(fs) else name, inside)}
        if not matches:
            raise NoImagesError(f"no images found: the pattern '{uri}' matches no file")
        entries = [(name, int(info.get("size") or 0), _version(info)) for name, info in matches.items()]
        source = _files_source(uri, entries, root_path, protocol, storage_options, fs, column, id_column, known)
        _no_readable(uri, source.listing)
        return _excluded(source, inside, exclude)
    what = "does not exist" if not fs.exists(path) else "is not a folder, glob, brace pattern, .txt list, .npy or .parquet"
    raise NoImagesError(f"no images found: '{uri}' {what}")
