"""Inputs: every image the user pointed at, its stable ``image_index``/``image_id`` and identity, and
reading images by shard. One module per kind, behind one interface (:mod:`.base`), registered here
in the order they are asked whether they open ``--images``:

* :mod:`.npy`: a ``.npy`` array (N, 3, H, W) uint8;
* :mod:`.parquet`: a Parquet file of image bytes (or of image paths, read as a list), and Parquet
  shards found in a folder, glob or pattern;
* :mod:`.lists`: a ``.txt`` list of image URIs;
* :mod:`.files`: a folder, brace pattern or glob of image files;
* :mod:`.tar`: WebDataset tar shards found in a folder, glob or pattern.

A new kind is one module with an :class:`~.base.InputKind` (or :class:`~.base.ShardKind`) and its
:class:`~.base.Reader`, registered below; nothing else names it.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ...errors import NoImagesError
from ...storage import filesystem
from .base import KINDS, LISTING_SCHEMA, OFFSET_LISTING_SCHEMA, ImageSource, Request, Skipped, register
from .files import READABLE, BracePattern, Folder, Glob
from .lists import TextList
from .npy import NpyArray
from .parquet import ParquetFile, ParquetShards
from .tar import TarShards

__all__ = ["ImageSource", "open_source", "NoImagesError", "READABLE", "Skipped", "LISTING_SCHEMA",
           "OFFSET_LISTING_SCHEMA", "KINDS"]

for _kind in (NpyArray(), ParquetFile(), TextList(), Folder(), BracePattern(), Glob(), TarShards(), ParquetShards()):
    register(_kind)


def open_source(uri: str, storage_options: dict[str, Any] | None = None, column: str | None = None,
                exclude: str | None = None, id_column: str | None = None, known: pa.Table | None = None) -> ImageSource:
    """List an input (on the driver: cheap, no image is read) with the first kind that opens it.
    ``column``: a Parquet input's image column (bytes or paths); ``id_column``: its id column;
    ``exclude``: the job's output, never listed as an input; ``known``: the output's recorded listing
    (tar shards unchanged since are not indexed again)."""
    request = Request(uri, storage_options or {}, column, id_column, exclude, known)
    try:
        fs, path = filesystem(uri, request.storage_options)
    except (ImportError, ValueError) as exc:
        raise NoImagesError(f"cannot open images at '{uri}': {exc}") from None
    for kind in KINDS:
        if kind.opens(fs, path, request):
            return kind.open(fs, path, request)
    kinds = [k.what for k in KINDS]
    what = "does not exist" if not fs.exists(path) else f"is not {', '.join(kinds[:-1])} or {kinds[-1]}"
    raise NoImagesError(f"no images found: '{uri}' {what}")
