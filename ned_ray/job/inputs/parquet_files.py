"""Parquet files as an input: one file, or a folder or glob of shards (what Hugging Face ``datasets``
and most pipelines write), local, on ``hf://`` (with ``huggingface_hub``) or any fsspec URL.

* The image column (``--image-column``, else the first of :data:`BYTES_COLUMNS` holding bytes, else
  the one string column of :data:`PATH_COLUMNS`) holds image bytes (binary, or a struct with a
  binary ``bytes`` field: ``datasets``' ``Image`` feature) or image paths/URIs (a metadata table:
  read like a ``.txt`` list, by :mod:`ned_ray.job.inputs.parquet`).
* Image ids: the ``--id-column`` (any column, or ``<image column>.path`` for the struct's field),
  else the first of :data:`ID_COLUMNS`, else the struct's ``path`` field where every row has a
  distinct one, else row numbers (``<file>/<row>`` across several files). Ids must be unique.
* Each shard of the job reads only the row groups that hold its rows, one file at a time.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...errors import NoImagesError

__all__ = ["BYTES_COLUMNS", "ID_COLUMNS", "PATH_COLUMNS", "ParquetShard", "describe", "image_column", "holds",
           "image_ids", "read_rows"]

BYTES_COLUMNS = ("image", "bytes", "image_bytes", "content", "img")
ID_COLUMNS = ("image_id", "id", "path", "filename", "file_name")
PATH_COLUMNS = ("image", "img", "image_path", "image_uri", "image_url", "path", "uri", "url", "file", "filepath",
                "file_path", "filename", "file_name")  # string columns that may hold image paths or URIs
ACCEPTED = ("image bytes (binary, or a struct with a binary 'bytes' field, as Hugging Face datasets store them) or "
            "image paths/URIs (string; relative paths are read against the Parquet file's folder)")
THREADS = 16  # footers read at once (remote stores: latency-bound)


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)


def _is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def holds(kind: pa.DataType) -> str | None:
    """What an image column of this type holds: "bytes", "paths", or None (not an image column)."""
    if _is_binary(kind) or (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0
                            and _is_binary(kind.field("bytes").type)):
        return "bytes"
    return "paths" if _is_string(kind) else None


def image_column(uri: str, schema: pa.Schema, chosen: str | None) -> tuple[str, str]:
    """(column, "bytes" | "paths"): the Parquet input's image column, as chosen (``--image-column``),
    else the first bytes column of :data:`BYTES_COLUMNS`, else the only string column of
    :data:`PATH_COLUMNS`. One line naming the column and the types accepted otherwise."""
    names = schema.names
    if chosen:
        if chosen not in names:
            raise NoImagesError(f"'{uri}': --image-column '{chosen}' is not a column (columns: {', '.join(names)})")
        kind = holds(schema.field(chosen).type)
        if kind is None:
            raise NoImagesError(f"'{uri}': column '{chosen}' holds {schema.field(chosen).type}; an image column holds "
                                f"{ACCEPTED}")
        return chosen, kind
    for name in BYTES_COLUMNS:
        if name in names and holds(schema.field(name).type) == "bytes":
            return name, "bytes"
    paths = [c for c in PATH_COLUMNS if c in names and holds(schema.field(c).type) == "paths"]
    if len(paths) == 1:
        return paths[0], "paths"
    if len(paths) > 1:
        raise NoImagesError(f"'{uri}': several columns could hold image paths ({', '.join(paths)}); choose one with "
                            "--image-column")
    wrong = [c for c in dict.fromkeys(BYTES_COLUMNS + PATH_COLUMNS) if c in names]
    if wrong:
        raise NoImagesError(f"'{uri}': column '{wrong[0]}' holds {schema.field(wrong[0]).type}; an image column holds "
                            f"{ACCEPTED}")
    raise NoImagesError(f"'{uri}': no image column (looked for image bytes in {', '.join(BYTES_COLUMNS)} and image "
                        f"paths in {', '.join(PATH_COLUMNS)}; found {', '.join(names)}); name it with --image-column")


@dataclass(frozen=True)
class ParquetShard:
    """One Parquet file of the input: its path on the filesystem, schema and row count."""

    path: str
    schema: pa.Schema
    rows: int


def describe(fs, paths: list[str], threads: int = THREADS) -> list[ParquetShard]:
    """Every file's schema and row count, from its footer (files read at once)."""
    def one(path: str) -> ParquetShard:
        with fs.open(path, "rb") as fh:
            pfile = pq.ParquetFile(fh)
            return ParquetShard(path, pfile.schema_arrow, pfile.metadata.num_rows)

    with ThreadPoolExecutor(max(1, min(threads, len(paths)))) as pool:
        return list(pool.map(one, paths))


def _id_values(fs, shard: ParquetShard, column: str) -> pa.Array:
    name, _, field = column.partition(".")
    with fs.open(shard.path, "rb") as fh:
        values = pq.ParquetFile(fh).read(columns=[name]).column(0).combine_chunks()
    return pc.cast(values.field(field) if field else values, pa.string())


def image_ids(uri: str, fs, shards: list[ParquetShard], files: list[str], image: str,
              chosen: str | None) -> tuple[pa.Array, str | None]:
    """(image ids, the column they come from or None for row numbers); ``files``: each shard's name
    in ids (row-number ids are ``<file>/<row>`` when there are several)."""
    names = shards[0].schema.names
    struct = shards[0].schema.field(image).type
    candidates = [chosen] if chosen else [c for c in ID_COLUMNS if c in names]
    if not chosen and pa.types.is_struct(struct) and struct.get_field_index("path") >= 0:
        candidates.append(f"{image}.path")  # datasets' Image feature: the file name it was made from
    for column in candidates:
        name, _, field = column.partition(".")
        if name not in names or (field and (not pa.types.is_struct(shards[0].schema.field(name).type)
                                            or shards[0].schema.field(name).type.get_field_index(field) < 0)):
            raise NoImagesError(f"'{uri}': --id-column '{column}' is not a column (columns: {', '.join(names)})")
        ids = pa.concat_arrays([_id_values(fs, s, column) for s in shards])
        if column == f"{image}.path" and not chosen and (ids.null_count or len(pc.unique(ids)) < len(ids)):
            continue  # paths missing or repeated (images made from arrays): row numbers
        if ids.null_count:
            raise NoImagesError(f"'{uri}': column '{column}' has {ids.null_count} empty id(s); image ids must be set "
                                "(choose another --id-column)")
        return ids, column
    if len(shards) == 1:
        return pa.array(np.arange(shards[0].rows).astype(str), pa.string()), None
    return pa.array([f"{name}/{row}" for name, s in zip(files, shards) for row in range(s.rows)], pa.string()), None


def read_rows(fs, paths: list[str], rows: np.ndarray, column: str) -> list[bytes | Exception]:
    """The image bytes at ``rows`` of the files ``paths`` (one entry per image), each file opened
    once and only its row groups that hold the rows read."""
    out: list = [None] * len(paths)
    order = np.asarray(paths, dtype=object)
    for path in dict.fromkeys(paths):
        where = np.flatnonzero(order == path)
        want = rows[where]
        with fs.open(path, "rb") as fh:
            pfile = pq.ParquetFile(fh)
            sizes = np.array([pfile.metadata.row_group(g).num_rows for g in range(pfile.num_row_groups)], np.int64)
            starts = np.concatenate([[0], np.cumsum(sizes)])
            group_of = np.searchsorted(starts, want, side="right") - 1  # each wanted row's row group
            groups = np.unique(group_of)
            table = pfile.read_row_groups([int(g) for g in groups], columns=[column])
        base = np.concatenate([[0], np.cumsum(sizes[groups])])  # where each read group starts in ``table``
        local = base[np.searchsorted(groups, group_of)] + want - starts[group_of]
        values = table.column(0).take(pa.array(local)).combine_chunks()
        if pa.types.is_struct(values.type):
            values = values.field("bytes")
        for i, b in zip(where, values.to_pylist()):
            out[i] = b if b is not None else ValueError("null image bytes")
    return out


def relative_name(path: str, root: str) -> str:
    """A shard's name in ids: its path under the input's root."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else posixpath.basename(path)
