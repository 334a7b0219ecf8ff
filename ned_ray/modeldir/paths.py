"""Where NED's and BERG's files live inside a model directory (ned-spec §1, berg-spec §1): names and
patterns only, no filesystem access.

NED's two families (fwrf, EEG) keep NED 0.2's own names; BERG keeps them in the same folders and adds
per-subject EEG files and one folder per ViT-B/32 family, named by the family's
:class:`~ned_ray.families.BergFiles`.
"""

from __future__ import annotations

import re

from ..families import Family
from ..families.fwrf import SPLIT_ROIS
from ..ids import ModelId

__all__ = ["FMRI_ROOT", "EEG_ROOT", "VIT_IN_NED_DIR", "EEG_SCALER", "EEG_PCA", "family_root", "berg_files",
           "fwrf_weights", "fwrf_metadata", "eeg_regression", "eeg_metadata", "pregenerated", "published", "expected"]

FMRI_ROOT = "encoding_models/modality-fmri/train_dataset-nsd/model-fwrf"
EEG_ROOT = "encoding_models/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32"
# ned-ray's own, optional place for the ViT-B/32 backbone inside a NED directory (so a cluster can
# keep it in the same bucket). NED itself never reads it.
VIT_IN_NED_DIR = f"{EEG_ROOT}/backbone/vit_b_32.pth"
EEG_SCALER = f"{EEG_ROOT}/encoding_models_weights/StandardScaler_param.npy"
EEG_PCA = f"{EEG_ROOT}/encoding_models_weights/pca_param.npy"

FWRF_WEIGHTS = re.compile(r"^weights_sub-(\d{2})_roi-([A-Za-z0-9.\-]+?)(?:_split-([12]))?\.pt$")
FWRF_METADATA = re.compile(r"^metadata_sub-(\d{2})_roi-([A-Za-z0-9.\-]+)\.npy$")
EEG_REGRESSION = re.compile(r"^LinearRegression_param_sub-(\d{2})\.npy$")
EEG_METADATA = re.compile(r"^metadata_sub-(\d{2})\.npy$")


def family_root(family: Family) -> str:
    """The folder of a family's files, relative to the directory."""
    return f"encoding_models/modality-{family.modality}/train_dataset-{family.train_dataset}/model-{family.model}"


def berg_files(mid: ModelId) -> tuple[str, str]:
    """(weights, metadata) of a BERG ViT-B/32 model, relative to the directory (berg-spec §1)."""
    family = mid.family
    root, files = family_root(family), family.berg_files
    weights = files.weights_name.format(s=mid.subject, v=mid.variant)
    meta = files.metadata_name.format(s=mid.subject)  # MEG's does not depend on the train split
    return f"{root}/encoding_models_weights/{weights}", f"{root}/metadata/{meta}"


def fwrf_weights(subject: int, roi: str) -> tuple[str, ...]:
    """NED's checkpoint(s) of an fwrf model: two for the split ROIs (lateral, ventral)."""
    stem = f"{FMRI_ROOT}/encoding_models_weights/weights_sub-{subject:02d}_roi-{roi}"
    if roi in SPLIT_ROIS:
        return (f"{stem}_split-1.pt", f"{stem}_split-2.pt")
    return (f"{stem}.pt",)


def fwrf_metadata(subject: int, roi: str) -> str:
    return f"{FMRI_ROOT}/metadata/metadata_sub-{subject:02d}_roi-{roi}.npy"


def eeg_regression(subject: int) -> str:
    return f"{EEG_ROOT}/encoding_models_weights/LinearRegression_param_sub-{subject:02d}.npy"


def eeg_metadata(subject: int) -> str:
    return f"{EEG_ROOT}/metadata/metadata_sub-{subject:02d}.npy"


def pregenerated(modality: str, imageset: str, subject: int, roi: str | None) -> tuple[str, str]:
    """(responses .h5, metadata .npy) of NED's pre-generated responses."""
    ds, model = ("nsd", "fwrf") if modality == "fmri" else ("things_eeg_2", "vit_b_32")
    folder = (
        f"pregenerated_insilico_neural_responses/modality-{modality}/train_dataset-{ds}/"
        f"model-{model}/imageset-{imageset}"
    )
    tag = f"sub-{subject:02d}" + (f"_roi-{roi}" if modality == "fmri" else "")
    return (
        f"{folder}/synthetic_neural_responses_{tag}.h5",
        f"{folder}/synthetic_neural_responses_metadata_{tag}.npy",
    )


def published(mid: ModelId) -> bool:
    """Whether NED's or BERG's release has this model (ned-spec §4, berg-spec)."""
    family = mid.family
    return mid.subject in family.subjects and (family.variant is None or mid.variant in family.variants)


def expected(mid: ModelId) -> tuple[str, ...]:
    """The weight files a published model is looked for in (for the message when it is absent):
    NED's own names for fwrf and NED's EEG, BERG's for the rest."""
    if mid.roi is not None:
        return fwrf_weights(mid.subject, mid.roi)
    if mid.family.ned_options:  # NED's EEG: its per-subject regression
        return (eeg_regression(mid.subject),)
    return berg_files(mid)
