"""``.txt`` lists of image URIs (one per line: local paths, relative to the list, or any fsspec URL),
and any column of paths read the same way (a Parquet metadata table: :mod:`.parquet`). A list's
entries are all read (they were asked for); an entry listed twice is encoded once, and reported.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ...errors import NoImagesError
from .base import LISTING_SCHEMA, ImageSource, InputKind, Request
from .files import FilesReader

__all__ = ["TextList", "listed", "list_source"]


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
    """Each URI relative to ``root`` where it lies under it, else the URI itself (vectorised)."""
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


def listed(uri: str, uris: pa.StringArray, duplicates: list[dict[str, Any]], root: str,
           storage_options: dict[str, Any]) -> ImageSource:
    """A list's URIs (a .txt file, a Parquet column of paths) as an input of loose files."""
    if len(uris) == 0:
        raise NoImagesError(f"no images found: '{uri}' lists no image URIs")
    sizes, versions = _local_identities(uris)
    listing = pa.table([_relative_ids(uris, root), uris, sizes, versions, pa.repeat(pa.scalar("", pa.string()), len(uris))],
                       schema=LISTING_SCHEMA)
    return ImageSource(uri, listing, FilesReader(), storage_options, duplicates=duplicates)


def list_source(uri: str, lines: pa.StringArray, keep: pa.BooleanArray, root: str, storage_options: dict[str, Any],
                what: str) -> ImageSource:
    """A column of paths or URIs, read as a .txt list is (relative ones against ``root``)."""
    blank = len(lines) - int(pc.sum(pc.and_(keep, pc.not_equal(pc.fill_null(lines, ""), ""))).as_py() or 0)
    uris, duplicates = _uris_of(pc.fill_null(lines, ""), pc.fill_null(keep, False), root)
    source = listed(uri, uris, duplicates, root, storage_options)  # duplicates' "lines" are 1-based rows here
    if blank:
        source.notes.append(f"note: '{uri}': {blank} {what} are empty or null: no image there, nothing listed for them")
    return source


class TextList(InputKind):
    name, what = "list", "a .txt list"

    def opens(self, fs, path: str, request: Request) -> bool:
        return path.lower().endswith((".txt", ".lst")) and not fs.isdir(path)

    def open(self, fs, path: str, request: Request) -> ImageSource:
        root = posixpath.dirname(request.uri if request.protocol else path)  # local: absolute, so workers anywhere read it
        with fs.open(path, "rb") as fh:
            try:
                uris, duplicates = _read_list(fh, root)
            except pa.ArrowInvalid as exc:
                raise NoImagesError(f"'{request.uri}' is not a list of image URIs (one per line, UTF-8 text): "
                                    f"{str(exc).splitlines()[0]}") from None
        return listed(request.uri, uris, duplicates, root, request.storage_options)
