"""Image checks and NED-exact preprocessing (ned-spec §2, §3, §5).

Images stay ``uint8`` until the device: the CPU side resizes and crops with torchvision's own
functions (bilinear, antialias, rounded back to uint8, exactly as NED), and the device side turns
them into normalised float32 (:func:`fwrf_normalise`, :func:`vit_normalise`).
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF

__all__ = [
    "FWRF_SIZE", "VIT_RESIZE", "VIT_CROP", "IMAGENET_MEAN", "IMAGENET_STD",
    "check_images", "center_square", "fwrf_input", "vit_input", "fwrf_normalise", "vit_normalise",
]

FWRF_SIZE = 227
VIT_RESIZE = 256
VIT_CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def center_square(chw):
    """The centred square of a (..., H, W) array or tensor (side min(H, W); offsets rounded down)."""
    height, width = chw.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return chw[..., top:top + side, left:left + side]


def check_images(images: object, square: bool = True) -> np.ndarray:
    """Validate a batch the way NED means to, but strictly: returns it as a uint8 (N,3,H,W) array.

    NED silently accepts float and int64 arrays (and returns wrong EEG numbers for them), crashes
    on lists and on empty batches. Here each of those is a clear ``TypeError``/``ValueError``.
    ``square=False`` accepts non-square images (BERG's ViT transform defines them: shorter side to
    256, centre crop 224).
    """
    if not isinstance(images, np.ndarray):
        raise TypeError(
            f"'images' must be a numpy array of dtype uint8, got {type(images).__name__}. "
            "Stack your images with np.stack(...) into shape (N, 3, H, W), dtype uint8."
        )
    if images.ndim != 4:
        raise ValueError("'images' must be a 4-D array of shape (Batch size x 3 RGB Channels x Width x Height)!")
    if images.shape[1] != 3:
        raise ValueError("'images' must have 3 RGB channels!")
    if images.shape[0] == 0:
        raise ValueError("'images' is empty: the batch holds 0 images; pass at least one image.")
    if square and images.shape[2] != images.shape[3]:
        raise ValueError(
            "'images' must be squared (i.e., equal width and height)! Got "
            f"{images.shape[2]}x{images.shape[3]}; center-crop them to a square first."
        )
    if images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.number) or images.dtype == np.bool_:
            lo, hi = images.min(), images.max()
            if lo < 0 or hi > 255:
                raise ValueError(
                    f"'images' values must lie in [0, 255] as uint8 pixels; got dtype {images.dtype} with "
                    f"values in [{lo}, {hi}]. Convert your images to uint8 RGB (0-255) first."
                )
        raise TypeError(
            f"'images' must have dtype uint8 (0-255 RGB), got {images.dtype}. NED's results are only "
            "defined for uint8; if your values are already 0-255 integers use images.astype(np.uint8), "
            "if they are floats in [0, 1] use (images * 255).round().astype(np.uint8)."
        )
    if min(images.shape[2:]) < 1:
        raise ValueError("'images' must be at least 1x1 pixels.")
    return images


def _as_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if tensor.dtype != torch.uint8:
        raise TypeError(f"preprocessing expects uint8 images, got {tensor.dtype}")
    return tensor


def fwrf_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,227,227): NED's ``Resize((227,227))`` (bilinear, antialias, rounded); a no-op at 227."""
    tensor = _as_tensor(images)
    if tuple(tensor.shape[-2:]) == (FWRF_SIZE, FWRF_SIZE):
        return tensor
    return TF.resize(tensor, [FWRF_SIZE, FWRF_SIZE], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def vit_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,224,224): ViT_B_32 IMAGENET1K_V1's resize (shorter side 256) and center crop 224."""
    tensor = _as_tensor(images)
    tensor = TF.resize(tensor, [VIT_RESIZE], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(tensor, [VIT_CROP])


def fwrf_normalise(u8: torch.Tensor) -> torch.Tensor:
    """float32 in [0,1] (the fwrf network subtracts its own stimulus mean)."""
    return u8.to(torch.float32).div(255)


def vit_normalise(u8: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation after dividing by 255, as torchvision's preset does it."""
    x = u8.to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub(mean).div(std)
