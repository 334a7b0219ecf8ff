"""NSD on the fsaverage surface (berg-spec §5): subjects 1-8, two hemispheres (163,842 vertices each),
one weight file per subject for both; on ViT-B/32 features."""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import ModelFileError, SelectionError
from .base import VIT_B_32, BergFiles, Family, Plot
from .rules import Rows, binary, check_keys, lookup

__all__ = ["FAMILY", "FSAVERAGE_ROIS", "roi_rule"]

FSAVERAGE_ROIS = ("V1d V1v V2d V2v V3d V3v hV4 OFA FFA-1 FFA-2 mTL-faces aTL-faces OVWFA VWFA-1 VWFA-2 mfs-words "
                  "mTL-words OPA PPA RSC EBA FBA-1 FBA-2 mTL-bodies early midventral midlateral midparietal "
                  "parietal lateral ventral").split()


def roi_rule(valid_rois: list[str]) -> Callable[[Any, Mapping[str, Any], str], Rows]:
    """BERG's fsaverage selection (§5, §9) with these valid ROIs: two parts (lh, rh); ``roi`` (a str)
    wins over ``lh_vertices``/``rh_vertices``."""

    def select_rows(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
        check_keys(selection, ("roi", "lh_vertices", "rh_vertices"))
        fmri = lookup(meta, "fmri", where)
        total = {h: len(lookup(fmri, f"{h}_ncsnr", where)) for h in ("lh", "rh")}
        rows: dict[str, np.ndarray] = {}
        if "roi" in selection:
            roi = selection["roi"]
            if not isinstance(roi, str):
                raise SelectionError(f"ROI parameter must be a string, got {type(roi).__name__}")
            if roi not in valid_rois:
                raise SelectionError(f"Invalid ROI: '{roi}'. Valid ROIs are: {valid_rois}")
            for h in ("lh", "rh"):
                rois = lookup(fmri, f"{h}_fsaverage_rois", where)
                if roi not in rois.keys():  # BERG's cards name OVWFA where their metadata may hold OWFA
                    raise ModelFileError(f"{where}: ROI '{roi}' is valid for this model but its metadata "
                                         f"{h}_fsaverage_rois holds no such key (it holds {sorted(map(str, rois.keys()))})")
                rows[h] = np.asarray(rois[roi], np.int64)
        else:
            for h in ("lh", "rh"):
                key = f"{h}_vertices"
                rows[h] = binary(selection[key], key, total[h]) if key in selection else np.arange(total[h])
        return Rows(rows, {h: (len(rows[h]),) for h in rows}, total, {"vertices": rows})

    return select_rows



def labels(metadata: Any, shape: tuple[int, ...], resolved: Any, kept: dict) -> dict[str, np.ndarray]:
    """Each vertex's index on the fsaverage mesh (the ones the selection kept)."""
    return {"vertex": kept.get("vertices", np.arange(shape[0]))}


FAMILY = Family(
    "fsaverage", "fmri", "nsd_fsaverage", "vit_b_32", tuple(range(1, 9)), "hemisphere", ("lh", "rh"), ("vertex",),
    "fsaverage", backbone=VIT_B_32,
    response_layout="(vertex,) of one hemisphere of fsaverage (163,842 vertices before selection)",
    berg_outputs="tuple (lh (N, vertices <= 163842), rh (N, vertices <= 163842)) float32",
    selection_keys=("roi", "lh_vertices", "rh_vertices"), select_rows=roi_rule(FSAVERAGE_ROIS), metadata_section="fmri",
    accuracy=(("encoding_models", "{variant}_correlation"), "mean r"),
    berg_files=BergFiles(re.compile(r"^weights_subject-(\d{2})\.npy$"), "weights_subject-{s:02d}.npy",
                         re.compile(r"^metadata_subject-(\d{2})\.npy$"), "metadata_subject-{s:02d}.npy"),
    variant_is_part=True, labels=labels, plot=Plot("surface", "fsaverage_surface", "NSD fMRI on fsaverage"))
