"""NED's fMRI models (ned-spec §3): NSD, subjects 1-8, 23 ROIs; an AlexNet-like backbone and a
per-voxel pooling head per model (ned_ray/models/fwrf.py), each model its own backbone pass."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import FWRF, Family, Plot

__all__ = ["FAMILY", "ROIS", "SPLIT_ROIS"]

ROIS = (
    "V1", "V2", "V3", "hV4", "EBA", "FBA-2", "OFA", "FFA-1", "FFA-2", "PPA", "RSC", "OPA", "OWFA",
    "VWFA-1", "VWFA-2", "mfs-words", "early", "midventral", "midlateral", "midparietal", "parietal",
    "lateral", "ventral",
)
SPLIT_ROIS = ("lateral", "ventral")  # stored as two checkpoints, one model

def full_shape(metadata: Any, variant: str | None) -> tuple[int, ...]:
    """(voxels,) of one ROI, from NED's metadata."""
    return (len(metadata["fmri"]["ncsnr"]),)


def labels(metadata: Any, shape: tuple[int, ...], resolved: Any, kept: dict) -> dict[str, np.ndarray]:
    """Each voxel's index in NED's voxel order (the ones ``--min-ncsnr`` kept)."""
    return {"voxel": resolved.voxels if resolved.voxels is not None else np.arange(shape[0])}


def ned_accuracy(metadata: Any) -> float:
    """100 x the mean of NED's ``noise_normalized_encoding`` (r2 / noise ceiling, a fraction) over voxels:
    the percent of the explainable variance."""
    return float(100 * np.mean(metadata["encoding_models"]["encoding_accuracy"]["noise_normalized_encoding"]))


FAMILY = Family(
    "fwrf", "fmri", "nsd", "fwrf", tuple(range(1, 9)), "roi", ROIS, ("voxel",), "fMRI", backbone=FWRF,
    response_layout="(voxel,) in NED's voxel order (the roi_mask_volume's True entries, C order)",
    berg_outputs="(N, voxels) float32 for one ROI (pass roi=...)", variant_argument="roi", full_shape=full_shape,
    labels=labels, plot=Plot("distributions", "fmri_distributions", "NSD fMRI (fwrf)"), pool="fmri",
    ned_options=("min_ncsnr",), ned_accuracy=ned_accuracy)
