"""Parquet files as an input (one file, or a folder, glob or pattern of shards: Hugging Face
``datasets`` and most pipelines write them): one row per table row, a shard of the job reading only
the row groups that hold its rows (:mod:`.parquet_files`). A table whose image column holds paths
or URIs instead (a metadata table) is read like a ``.txt`` list (:mod:`.lists`)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...errors import NoImagesError
from ...storage import filesystem
from .base import OFFSET_LISTING_SCHEMA, ImageSource, InputKind, Reader, Request, ShardKind, relative, version_of
from .lists import list_source
from .parquet_files import describe, holds, image_column, image_ids, read_rows, relative_name

__all__ = ["ParquetFile", "ParquetShards", "ParquetReader"]


@dataclass
class ParquetReader(Reader):
    """Rows of the input's tables by (file, row): the row groups holding them, one file at a time."""

    column: str  # the image column
    name = "parquet"
    row_columns = ("uri", "offset")

    def read(self, source: ImageSource, start: int, stop: int, rows) -> list[Any]:
        fs, _ = filesystem(source.uri, source.storage_options)
        paths = [fs._strip_protocol(u) for u in rows.column("uri").to_pylist()]
        return read_rows(fs, paths, rows.column("offset").to_numpy(), self.column)


def _is_table(path: str) -> bool:
    return path.lower().endswith(".parquet") and not posixpath.basename(path).startswith(".")


def parquet_source(fs, entries: list[tuple[str, int, str]], root: str, request: Request) -> ImageSource:
    """Parquet files (one, or the shards of a dataset) as an input: one row per table row."""
    uri, protocol = request.uri, request.protocol
    shards = describe(fs, [p for p, _, _ in entries])
    image, kind = image_column(uri, shards[0].schema, request.column)
    if kind == "paths":
        if len(shards) > 1:
            raise NoImagesError(f"'{uri}': {len(shards)} Parquet files whose column '{image}' holds image paths; give "
                                "one table of paths (or a .txt list), or tables of image bytes")
        with fs.open(shards[0].path, "rb") as fh:
            lines = pc.utf8_trim_whitespace(pq.ParquetFile(fh).read(columns=[image]).column(0).combine_chunks())
        where = posixpath.dirname(uri if protocol else shards[0].path)
        return list_source(uri, lines, pc.is_valid(lines), where, request.storage_options, f"row(s) of column '{image}'")
    for shard in shards[1:]:
        if image not in shard.schema.names or holds(shard.schema.field(image).type) != "bytes":
            found = shard.schema.field(image).type if image in shard.schema.names else "no such column"
            raise NoImagesError(f"'{protocol}{shard.path}': its column '{image}' ({found}) does not hold image bytes as "
                                f"'{protocol}{shards[0].path}' does; the Parquet files of one input share their image column")
    total = sum(s.rows for s in shards)
    if total == 0:
        raise NoImagesError(f"no images found: '{uri}' has 0 rows")
    ids, from_column = image_ids(uri, fs, shards, [relative_name(s.path, root) for s in shards], image, request.id_column)
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
    return ImageSource(uri, listing, ParquetReader(image), request.storage_options)


class ParquetFile(InputKind):
    name, what = "parquet", "a .parquet file"

    def opens(self, fs, path: str, request: Request) -> bool:
        return path.lower().endswith(".parquet") and not fs.isdir(path) and fs.isfile(path)  # (else a glob, or missing)

    def open(self, fs, path: str, request: Request) -> ImageSource:
        info = fs.info(path)
        return parquet_source(fs, [(path, int(info.get("size") or 0), version_of(info))], posixpath.dirname(path), request)


class ParquetShards(ShardKind):
    """A folder, glob or pattern of Parquet files (files of other kinds beside them are ignored, with a note)."""

    name = "parquet shards"

    def claims(self, entries: list[tuple[str, int, str]]) -> bool:
        return any(_is_table(p) for p, _, _ in entries)

    def open_shards(self, fs, entries: list[tuple[str, int, str]], root: str, request: Request) -> ImageSource:
        tables = [e for e in entries if _is_table(e[0])]
        source = parquet_source(fs, tables, root, request)
        others = [relative(e[0], root) for e in entries if e not in tables]
        if others:
            source.notes.append(f"note: '{request.uri}': {len(others)} file(s) beside its Parquet files are not inputs "
                                f"(e.g. {others[0]})")
        return source
