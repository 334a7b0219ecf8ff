"""THINGS-fMRI (berg-spec §6): subjects 1-3, 211,339 voxels in THINGS' order, on ViT-B/32 features."""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from .base import VIT_B_32, BergFiles, Family, Plot
from .rules import Rows, binary, check_keys, lookup, names

__all__ = ["FAMILY"]


def select_rows(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§6: ROI voxels concatenated in the order given (duplicates kept), then the mask's; none = all."""
    check_keys(selection, ("roi", "voxel_index"))
    n = int(lookup(lookup(meta, "fmri", where), "n_voxels", where))
    rois = lookup(meta, "roi", where)
    parts = []
    if "roi" in selection:
        parts += [np.asarray(rois[r], np.int64) for r in names(selection["roi"], "ROI", list(rois.keys()))]
    if "voxel_index" in selection:
        parts.append(binary(selection["voxel_index"], "voxel_index", n))
    rows = np.concatenate(parts) if parts else np.empty(0, np.int64)
    if len(rows) == 0:
        rows = np.arange(n)  # BERG: an empty selection means every voxel
    return Rows({"": rows}, {"": (len(rows),)}, {"": n}, {"voxels": rows})



def labels(metadata: Any, shape: tuple[int, ...], resolved: Any, kept: dict) -> dict[str, np.ndarray]:
    """Each voxel's index in THINGS-fMRI's order (the ones the selection kept, in BERG's order)."""
    return {"voxel": kept.get("voxels", np.arange(shape[0]))}


FAMILY = Family(
    "things_fmri", "fmri", "things_fmri_1", "vit_b_32", (1, 2, 3), None, (), ("voxel",), "THINGS-fMRI",
    backbone=VIT_B_32,
    response_layout="(voxel,) in THINGS-fMRI's voxel order (211,339 before selection; BERG's order and duplicates "
                    "under a selection)",
    berg_outputs="(N, voxels <= 211339) float32",
    selection_keys=("roi", "voxel_index"), select_rows=select_rows, metadata_section="roi",
    accuracy=(("encoding_model", "correlation_results"), "mean r"),
    berg_files=BergFiles(re.compile(r"^weights_sub-0(\d)\.npy$"), "weights_sub-0{s}.npy",
                         re.compile(r"^metadata_sub-0(\d)\.npy$"), "metadata_sub-0{s}.npy"),
    labels=labels, plot=Plot("distributions", "things_fmri_distributions", "THINGS-fMRI"))
