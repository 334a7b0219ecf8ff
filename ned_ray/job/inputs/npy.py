"""A ``.npy`` array (N, 3, H, W) uint8 as an input: read by byte ranges, one request per shard. A
truncated file's whole images are read; the rest are error rows (and one warning says so)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import NoImagesError
from ...safeload import read_npy_header
from ...storage import filesystem
from .base import ImageSource, InputKind, Reader, Request, listing_table, version_of

__all__ = ["NpyArray", "NpyReader"]


@dataclass
class NpyReader(Reader):
    """Images [start, stop) of the array: one ranged read after its header."""

    offset: int  # where the data starts (after the header)
    shape: tuple[int, ...]
    name = "npy"

    def read(self, source: ImageSource, start: int, stop: int, rows) -> list[Any]:
        fs, path = filesystem(source.uri, source.storage_options)
        row = int(np.prod(self.shape[1:]))
        data = fs.cat_file(path, start=self.offset + start * row, end=self.offset + stop * row)
        whole = len(data) // row  # a truncated file: the images it does not hold whole are error rows
        images: list[Any] = list(np.frombuffer(data, np.uint8, count=whole * row).reshape(whole, *self.shape[1:]))
        return images + [ValueError(f"truncated .npy input: the file ends before image {start + i} (its header "
                                    f"promises {self.shape[0]} images)") for i in range(whole, stop - start)]


class NpyArray(InputKind):
    name, what = "npy", "a .npy array"

    def opens(self, fs, path: str, request: Request) -> bool:
        return path.lower().endswith(".npy") and not fs.isdir(path)

    def open(self, fs, path: str, request: Request) -> ImageSource:
        uri = request.uri
        with fs.open(path, "rb") as fh:
            shape, fortran, dtype = read_npy_header(fh, uri)
            offset = fh.tell()
        if dtype != np.uint8 or len(shape) != 4 or shape[1] != 3 or fortran:
            raise NoImagesError(f"'{uri}': a .npy input must be a C-ordered uint8 array (N, 3, H, W); got {dtype} {shape}")
        if shape[0] == 0:
            raise NoImagesError(f"no images found: '{uri}' holds 0 images (shape {tuple(shape)})")
        info = fs.info(path)
        version = version_of(info)
        n, row = shape[0], int(np.prod(shape[1:]))
        listing = listing_table([str(i) for i in range(n)], [""] * n, [row] * n, [version] * n, [""] * n)
        whole = max(0, int(info.get("size") or 0) - offset) // row
        notes = [] if whole >= n else [f"warning: '{uri}' is truncated: its header promises {n} images of {row} bytes, "
                                       f"the file holds {whole} whole; images {whole} to {n - 1} are error rows"]
        return ImageSource(uri, listing, NpyReader(offset, tuple(shape)), request.storage_options, notes=notes)
