"""Inputs: what the images are, their stable ``image_index``/``image_id``, and reading them by shard.

* a folder (searched recursively), a glob, or a ``.txt`` file listing one URI per line: image files
  (JPEG, PNG, WebP, BMP, TIFF) on any fsspec filesystem. ``image_index`` is the position in the
  sorted list, ``image_id`` the URI relative to the input root.
* a ``.npy`` array (N, 3, H, W) uint8: read by byte ranges, one request per shard.
* a Parquet file with an image-bytes column (``image``, ``bytes``, ``image_bytes``, ``content``, or a
  Hugging Face-style struct with ``bytes``) and an optional ``image_id``/``id``/``path`` column.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..safeload import read_npy_header
from ..storage import filesystem

__all__ = ["ImageSource", "open_source", "NoImagesError", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
BYTES_COLUMNS = ("image", "bytes", "image_bytes", "content", "img")
ID_COLUMNS = ("image_id", "id", "path", "filename", "file_name")


class NoImagesError(ValueError):
    """The input names no images."""


@dataclass
class ImageSource:
    """A listed input. ``read(start, stop)`` returns raw items for images [start, stop): bytes or uint8 arrays."""

    uri: str
    kind: str  # files | npy | parquet
    ids: list[str]
    uris: list[str] = field(default_factory=list)  # files: one per image
    storage_options: dict[str, Any] = field(default_factory=dict)
    npy_offset: int = 0
    npy_shape: tuple[int, ...] = ()
    parquet_column: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def description(self) -> "ImageSource":
        """A copy without the per-image listing: what a decode task needs besides its shard item."""
        return replace(self, ids=[], uris=[])

    def shard_items(self, ranges: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """One item per [start, stop) range, carrying its own image ids (and URIs for files)."""
        return [{"start": start, "stop": stop, "ids": self.ids[start:stop],
                 "uris": self.uris[start:stop] if self.kind == "files" else []} for start, stop in ranges]

    def read(self, start: int, stop: int, uris: list[str] | None = None) -> list[bytes | np.ndarray | Exception]:
        """Raw items of images [start, stop); ``uris`` are theirs when the listing is not held."""
        if self.kind == "files":
            return _read_files(list(uris) if uris is not None else self.uris[start:stop], self.storage_options)
        fs, path = filesystem(self.uri, self.storage_options)
        if self.kind == "npy":
            row = int(np.prod(self.npy_shape[1:]))
            data = fs.cat_file(path, start=self.npy_offset + start * row, end=self.npy_offset + stop * row)
            return list(np.frombuffer(data, np.uint8).reshape(stop - start, *self.npy_shape[1:]))
        with fs.open(path, "rb") as fh:
            table = pq.ParquetFile(fh).read(columns=[self.parquet_column]).slice(start, stop - start)
        column = table.column(0).combine_chunks()
        if pa.types.is_struct(column.type):
            column = column.field("bytes")
        return [b if b is not None else ValueError("null image bytes") for b in column.to_pylist()]


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


def _relative(uri: str, root: str) -> str:
    root = root.rstrip("/") + "/"
    return uri[len(root):] if uri.startswith(root) else uri


def open_source(uri: str, storage_options: dict[str, Any] | None = None) -> ImageSource:
    """List an input (on the driver: cheap, no image is read)."""
    storage_options = storage_options or {}
    try:
        fs, path = filesystem(uri, storage_options)
    except (ImportError, ValueError) as exc:
        raise NoImagesError(f"cannot open images at '{uri}': {exc}") from None
    lower = path.lower()
    protocol = uri.split("://", 1)[0] + "://" if "://" in uri else ""

    if lower.endswith(".npy"):
        with fs.open(path, "rb") as fh:
            shape, fortran, dtype = read_npy_header(fh, uri)
            offset = fh.tell()
        if dtype != np.uint8 or len(shape) != 4 or shape[1] != 3 or fortran:
            raise NoImagesError(f"'{uri}': a .npy input must be a C-ordered uint8 array (N, 3, H, W); got {dtype} {shape}")
        return ImageSource(uri, "npy", [str(i) for i in range(shape[0])], storage_options=storage_options,
                           npy_offset=offset, npy_shape=tuple(shape))

    if lower.endswith(".parquet"):
        with fs.open(path, "rb") as fh:
            pfile = pq.ParquetFile(fh)
            names = pfile.schema_arrow.names
            column = next((c for c in BYTES_COLUMNS if c in names), None)
            if column is None:
                raise NoImagesError(f"'{uri}': no image-bytes column (looked for {', '.join(BYTES_COLUMNS)}; found {', '.join(names)})")
            id_column = next((c for c in ID_COLUMNS if c in names), None)
            ids = ([str(x) for x in pfile.read(columns=[id_column]).column(0).to_pylist()] if id_column
                   else [str(i) for i in range(pfile.metadata.num_rows)])
        return ImageSource(uri, "parquet", ids, storage_options=storage_options, parquet_column=column)

    if lower.endswith((".txt", ".lst")):
        root = posixpath.dirname(uri if protocol else path)  # local: absolute, so workers anywhere read it
        with fs.open(path, "rt") as fh:
            listed = [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
        uris = sorted({u if "://" in u or u.startswith("/") else posixpath.join(root, u) for u in listed})
        if not uris:
            raise NoImagesError(f"no images found: '{uri}' lists no image URIs")
        return ImageSource(uri, "files", [_relative(u, root) for u in uris], uris, storage_options)

    if any(ch in path for ch in "*?["):
        matches = [p for p in fs.glob(path) if p.lower().endswith(IMAGE_EXTENSIONS)]
        root_path = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
    elif fs.isdir(path):
        matches = [p for p in fs.find(path) if p.lower().endswith(IMAGE_EXTENSIONS)]
        root_path = path
    else:
        what = "does not exist" if not fs.exists(path) else "is not a folder, glob, .txt list, .npy or .parquet"
        raise NoImagesError(f"no images found: '{uri}' {what}")
    if not matches:
        raise NoImagesError(f"no images found in '{uri}' (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
    matches = sorted(matches)
    uris = [protocol + p if protocol else p for p in matches]
    ids = [_relative(p, root_path) for p in matches]
    return ImageSource(uri, "files", ids, uris, storage_options)
