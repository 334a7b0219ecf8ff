"""Strict image checks, and preprocessing equal to torchvision's own NED transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import transforms
from torchvision.models import ViT_B_32_Weights

from ned_ray.preprocess import check_images, fwrf_input, fwrf_normalise, vit_input, vit_normalise


@pytest.mark.parametrize("images, error, message", [
    ([[0]], TypeError, "must be a numpy array of dtype uint8, got list"),
    (np.zeros((2, 3, 8, 8), np.float32), TypeError, "must have dtype uint8.*float32"),
    (np.zeros((2, 3, 8, 8), np.int64), TypeError, r"must have dtype uint8.*astype\(np.uint8\)"),
    (np.full((2, 3, 8, 8), 300, np.int64), ValueError, r"must lie in \[0, 255\].*\[300, 300\]"),
    (np.full((2, 3, 8, 8), -1.0), ValueError, r"must lie in \[0, 255\]"),
    (np.zeros((0, 3, 8, 8), np.uint8), ValueError, "is empty"),
    (np.zeros((2, 3, 8, 9), np.uint8), ValueError, r"must be squared.*8x9"),
    (np.zeros((3, 8, 8), np.uint8), ValueError, "must be a 4-D array"),
    (np.zeros((2, 4, 8, 8), np.uint8), ValueError, "must have 3 RGB channels!"),
])
def test_bad_images_are_rejected(images, error, message):
    with pytest.raises(error, match=message):
        check_images(images)


def test_good_images_pass_unchanged():
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 1, 1), dtype=np.uint8)
    assert check_images(images) is images


def test_vit_preprocessing_equals_torchvision_preset():
    images = np.random.default_rng(1).integers(0, 256, (3, 3, 300, 300), dtype=np.uint8)
    preset = ViT_B_32_Weights.IMAGENET1K_V1.transforms()
    expected = preset(torch.from_numpy(images))
    u8 = vit_input(images)
    assert u8.dtype == torch.uint8 and tuple(u8.shape) == (3, 3, 224, 224)
    assert torch.equal(vit_normalise(u8), expected)


def test_fwrf_preprocessing_equals_torchvision_resize():
    images = np.random.default_rng(2).integers(0, 256, (2, 3, 425, 425), dtype=np.uint8)
    expected = transforms.Resize((227, 227))(torch.from_numpy(images)).float() / 255
    u8 = fwrf_input(images)
    assert u8.dtype == torch.uint8 and tuple(u8.shape) == (2, 3, 227, 227)
    assert torch.equal(fwrf_normalise(u8), expected)
    same = np.random.default_rng(3).integers(0, 256, (1, 3, 227, 227), dtype=np.uint8)
    assert torch.equal(fwrf_input(same), torch.from_numpy(same))  # no-op at 227


def test_resize_is_antialiased_and_rounded():
    """A wrong resize (no antialias) differs: guards against a silent regression."""
    images = np.random.default_rng(4).integers(0, 256, (1, 3, 425, 425), dtype=np.uint8)
    plain = torch.nn.functional.interpolate(torch.from_numpy(images).float(), size=(227, 227), mode="bilinear",
                                            align_corners=False, antialias=False).round().to(torch.uint8)
    assert not torch.equal(fwrf_input(images), plain)
