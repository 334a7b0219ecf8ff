"""Decoding: modes converted to RGB uint8, bad images become precise errors (never exceptions)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ned_ray.job.decode import decode_image


def _encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


RGB = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)


@pytest.mark.parametrize("image, check", [
    (Image.fromarray(RGB), lambda out: np.array_equal(out, RGB)),
    (Image.fromarray(RGB[..., 0]), lambda out: np.array_equal(out, np.repeat(RGB[..., :1], 3, 2))),  # L
    (Image.fromarray(np.dstack([RGB, np.full((20, 20), 7, np.uint8)])), lambda out: np.array_equal(out, RGB)),  # RGBA
    (Image.fromarray(RGB).convert("P"), lambda out: out.shape == (20, 20, 3)),
    (Image.fromarray((RGB[..., 0].astype(np.uint16) * 257)), lambda out: np.array_equal(out[..., 0], RGB[..., 0])),  # 16-bit
])
def test_modes_become_rgb_uint8(image, check):
    out, error, width, height = decode_image(_encode(image))
    assert error == "" and out.dtype == np.uint8 and out.shape == (20, 20, 3) and (width, height) == (20, 20)
    assert check(out)


def test_cmyk_jpeg_and_exif_orientation():
    cmyk = Image.fromarray(RGB).convert("CMYK")
    out, error, *_ = decode_image(_encode(cmyk, "JPEG"))
    assert error == "" and out.shape == (20, 20, 3)
    tall = Image.fromarray(np.zeros((30, 10, 3), np.uint8))
    exif = tall.getexif()
    exif[0x0112] = 6  # rotate 90: a viewer shows it 30 wide x 10 high
    out, error, width, height = decode_image(_encode(tall, "JPEG", exif=exif.tobytes()), non_square="error")
    assert (width, height) == (30, 10) and "non-square image 30x10" in error


@pytest.mark.parametrize("data, message", [
    (b"", "empty file"),
    (b"this is not an image", "not an image"),
    (_encode(Image.fromarray(RGB), "JPEG")[:200], "corrupt or truncated"),
    (_encode(Image.fromarray(RGB))[:-30], "corrupt or truncated"),
    (FileNotFoundError("s3://b/x.png"), "cannot read"),
])
def test_bad_images_become_errors(data, message):
    out, error, *_ = decode_image(data)
    assert out is None and message in error


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    big = _encode(Image.new("L", (4000, 4000)))
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    out, error, width, height = decode_image(big, max_pixels=1_000_000)
    # our guard fired, from the header: exact size in the message, nothing decoded
    assert out is None and (width, height) == (4000, 4000) and not decoded
    assert error == ("image too large: 4000x4000 = 16000000 pixels exceeds --max-pixels 1000000 "
                     "(checked from the header, not decoded)")


def test_one_pixel_and_center_crop():
    out, error, *_ = decode_image(_encode(Image.fromarray(RGB[:1, :1])))
    assert error == "" and out.shape == (1, 1, 3)
    wide = np.zeros((4, 8, 3), np.uint8)
    wide[:, 2:6] = 255
    out, *_ = decode_image(_encode(Image.fromarray(wide)))
    assert out.shape == (4, 4, 3) and (out == 255).all()
