"""Decoding one shard of raw images into the uint8 inputs the models need (a Ray Data CPU task).

Each image is decoded once, converted to RGB uint8, made square (``--non-square``), and resized to
every input size the job's model groups need (``fwrf``: 227 px; ``vit``: 256-resize + 224 crop),
exactly as NED. Under ``--non-square shorter-side`` the ViT input is torchvision's transform of the
whole image (shorter side to 256, centre crop 224), as BERG defines non-square images.

Conversions (documented behaviour): grayscale, palette, CMYK and other modes -> RGB as Pillow
converts them; alpha channels are dropped (RGB values kept as stored); 16-bit images keep their high
byte; EXIF orientation is applied (the image is encoded as a viewer shows it). A bad image never
stops the job: it becomes a row with ``status="error"`` and a precise ``error``.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..models.group import INPUTS
from .plan import INPUT_SHAPES
from .sources import ImageSource, Skipped

__all__ = ["decode_image", "DecodeShard", "INPUT_SHAPES"]



def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)  # 16-bit -> high byte
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        gray = np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def decode_image(item: bytes | np.ndarray | Skipped | Exception, non_square: str = "center-crop",
                 max_pixels: int = 100_000_000) -> tuple[np.ndarray | None, str, int, int]:
    """(uint8 (H,W,3) or None, error message, width, height) for one raw image: made square by
    ``center-crop``, refused by ``error`` when not square, left whole by ``shorter-side`` (the ViT
    models then use torchvision's transform on the whole image, as BERG; fwrf the centre square)."""
    if isinstance(item, Skipped):
        return None, item.reason, 0, 0
    if isinstance(item, Exception):
        return None, f"cannot read: {type(item).__name__}: {item}", 0, 0
    if isinstance(item, np.ndarray):  # (3, H, W) uint8 from a .npy input
        rgb = item.transpose(1, 2, 0)
    else:
        if len(item) == 0:
            return None, "empty file (0 bytes)", 0, 0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                old_limit = Image.MAX_IMAGE_PIXELS
                try:
                    Image.MAX_IMAGE_PIXELS = None  # the size is checked here, from the header, before decoding
                    image = Image.open(io.BytesIO(item))
                    width, height = image.size
                    if width * height > max_pixels:
                        return None, (f"image too large: {width}x{height} = {width * height} pixels exceeds --max-pixels "
                                      f"{max_pixels} (checked from the header, not decoded)"), width, height
                    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own guard stays on while decoding (frames, tiles)
                    image = ImageOps.exif_transpose(image)
                    image.load()
                finally:
                    Image.MAX_IMAGE_PIXELS = old_limit
        except UnidentifiedImageError:
            return None, "not an image: Pillow cannot identify the file format", 0, 0
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return None, f"image too large (Pillow's decompression-bomb guard while decoding): {exc}", 0, 0
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            return None, f"corrupt or truncated image: {exc}", 0, 0
        try:
            rgb = _to_rgb(image)
        except (OSError, ValueError) as exc:
            return None, f"cannot convert mode {image.mode} to RGB: {exc}", *image.size
    height, width = rgb.shape[:2]
    if height != width:
        if non_square == "error":
            return None, f"non-square image {width}x{height} (rejected by --non-square error)", width, height
        if non_square == "center-crop":
            rgb = center_square(rgb.transpose(2, 0, 1)).transpose(1, 2, 0)
    return np.require(rgb, requirements=["C", "W"]), "", width, height  # writable: torch.from_numpy needs it


def center_square(chw):
    """The centred square of a (..., H, W) array or tensor (side min(H, W); offsets rounded down)."""
    height, width = chw.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return chw[..., top:top + side, left:left + side]


class DecodeShard:
    """Ray Data UDF: one shard row (start, stop) -> one row per image, with the inputs ``kinds`` need.

    ``listing`` is the input's listing put once in Ray's object store: every task maps the same copy
    (one per node) and slices its rows, so shards carry two integers, not their ids and URIs. (The
    in-process executor passes the Arrow table itself.)"""

    def __init__(self, source: ImageSource, listing: ray.ObjectRef | pa.Table, kinds: tuple[str, ...],
                 non_square: str, max_pixels: int) -> None:
        self.source, self.listing, self.kinds = source, listing, kinds
        self.non_square, self.max_pixels = non_square, max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        listing = ray.get(self.listing) if isinstance(self.listing, ray.ObjectRef) else self.listing
        columns: dict[str, list] = {k: [] for k in ("image_index", "image_id", "status", "error", "width", "height")}
        tensors: dict[str, list[np.ndarray]] = {k: [] for k in self.kinds}
        for start, stop in zip(batch["start"].tolist(), batch["stop"].tolist()):
            rows = listing.slice(start, stop - start)
            ids = rows.column("image_id").to_pylist()
            files = self.source.kind == "files"
            items = self.source.read(start, stop, rows.column("uri").to_pylist() if files else None,
                                     rows.column("skip").to_pylist() if files else None)
            for offset, item in enumerate(items):
                rgb, error, width, height = decode_image(item, self.non_square, self.max_pixels)
                columns["image_index"].append(start + offset)
                columns["image_id"].append(str(ids[offset]))
                columns["status"].append("ok" if rgb is not None else
                                         "skipped" if isinstance(item, Skipped) else "error")
                columns["error"].append(error)
                columns["width"].append(width)
                columns["height"].append(height)
                chw = None if rgb is None else torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
                for kind in self.kinds:
                    if chw is None:
                        tensors[kind].append(np.zeros(INPUT_SHAPES[kind], np.uint8))
                    else:  # fwrf always reads the centre square; ViT models the whole image under shorter-side
                        tensors[kind].append(INPUTS[kind](chw if kind == "vit" else center_square(chw))[0].numpy())
        out: dict[str, Any] = {
            "image_index": np.asarray(columns["image_index"], np.int64),
            "image_id": np.asarray(columns["image_id"], dtype=object),
            "status": np.asarray(columns["status"], dtype=object),
            "error": np.asarray(columns["error"], dtype=object),
            "width": np.asarray(columns["width"], np.int32),
            "height": np.asarray(columns["height"], np.int32),
        }
        for kind in self.kinds:
            out[kind] = np.stack(tensors[kind]) if tensors[kind] else np.zeros((0, *INPUT_SHAPES[kind]), np.uint8)
        return out
