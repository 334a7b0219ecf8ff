"""Decoding one raw image into RGB uint8, as NED (the first step of the decode stage, :mod:`.stages`).

Each image is decoded once, converted to RGB uint8 and made square (``--non-square``); the decode
stage then resizes it to every input size the job's model groups need.

Conversions (documented behaviour): grayscale, palette, CMYK and other modes -> RGB as Pillow
converts them; alpha channels are dropped (RGB values kept as stored); 16-bit images keep their high
byte; EXIF orientation is applied (the image is encoded as a viewer shows it). A bad image never
stops the job: it becomes a row with ``status="error"`` and a precise ``error``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..preprocess import center_square
from .inputs import Skipped

__all__ = ["decode_image"]


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
