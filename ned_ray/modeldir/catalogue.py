"""What a model directory holds: every complete model (:class:`ModelEntry`, in NED's or BERG's
format), every damaged one (a file of it missing), found from one listing per folder; and the check
that a metadata file has the fields ned-ray reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..families import FAMILIES
from ..families.fwrf import ROIS, SPLIT_ROIS
from ..ids import ModelId
from .files import ModelFiles
from .paths import (
    EEG_METADATA,
    EEG_PCA,
    EEG_REGRESSION,
    EEG_ROOT,
    EEG_SCALER,
    FMRI_ROOT,
    FWRF_METADATA,
    FWRF_WEIGHTS,
    berg_files,
    eeg_metadata,
    eeg_regression,
    family_root,
    fwrf_metadata,
    fwrf_weights,
)

__all__ = ["ModelEntry", "DamagedModel", "scan", "metadata_problem"]


@dataclass(frozen=True)
class ModelEntry:
    """One model of the catalogue: its id, its on-disk format and the files it is read from."""

    id: ModelId
    format: str  # "ned" (NED 0.2 files) or "berg" (BERG's per-subject ViT-B/32 files)
    weights: tuple[str, ...]  # paths relative to the directory
    metadata: str


@dataclass(frozen=True)
class DamagedModel:
    """A model of which some files are in the directory and one (at least) is missing."""

    entry: ModelEntry  # what the model would be read from
    missing: str  # the first file missing, relative to the directory


def scan(directory: ModelFiles) -> tuple[dict[ModelId, ModelEntry], dict[ModelId, DamagedModel]]:
    """(complete models, damaged models -> the first file missing), from one listing per folder."""
    found: list[tuple[ModelId, list[ModelEntry]]] = []  # each model: its possible entries, preferred first
    present: set[str] = set()  # relative paths of the files listed

    def listed(folder: str) -> list[str]:
        names = directory.listdir(folder)
        present.update(f"{folder}/{n}" for n in names)
        return names

    weights_dir, meta_dir = f"{FMRI_ROOT}/encoding_models_weights", f"{FMRI_ROOT}/metadata"
    rois: set[tuple[int, str]] = set()
    for name in listed(weights_dir):
        m = FWRF_WEIGHTS.match(name)
        if m and (m.group(3) is not None) == (m.group(2) in SPLIT_ROIS):
            rois.add((int(m.group(1)), m.group(2)))
    for name in listed(meta_dir):
        m = FWRF_METADATA.match(name)
        if m and m.group(2) in ROIS:
            rois.add((int(m.group(1)), m.group(2)))
    for subject, roi in sorted(rois):
        mid = ModelId("fmri", "nsd", "fwrf", subject, roi)
        found.append((mid, [ModelEntry(mid, "ned", fwrf_weights(subject, roi), fwrf_metadata(subject, roi))]))

    subjects = {int(m.group(1)) for name in listed(f"{EEG_ROOT}/encoding_models_weights") + listed(f"{EEG_ROOT}/metadata")
                for m in (EEG_REGRESSION.match(name) or EEG_METADATA.match(name),) if m}
    for subject in sorted(subjects):  # NED's EEG files; BERG's, in the same folders, come below
        mid = ModelId("eeg", "things_eeg_2", "vit_b_32", subject)
        found.append((mid, [ModelEntry(mid, "ned", (EEG_SCALER, EEG_PCA, eeg_regression(subject)),
                                       eeg_metadata(subject))]))

    for family in (f for f in FAMILIES.values() if f.berg_files is not None):
        root, files = family_root(family), family.berg_files
        per_file = family.variant == "split"  # a weight file per variant (MEG), else one per subject
        models: dict[tuple, None] = {}
        for name in listed(f"{root}/encoding_models_weights"):
            m = files.weights.match(name)
            if m:
                subject = int(m.group(1)) if m.group(1).isdigit() else m.group(1)
                variants = (m.group(2),) if per_file else family.variants or (None,)
                models.update({(subject, v): None for v in variants})
        for name in listed(f"{root}/metadata"):
            m = files.metadata.match(name)
            if m:
                subject = int(m.group(1)) if m.group(1).isdigit() else m.group(1)
                variants = family.variants[:1] if per_file else family.variants or (None,)
                if not per_file or not any(s == subject for s, _ in models):  # MEG: splits come from weights
                    models.update({(subject, v): None for v in variants})
        for subject, variant in models:
            mid = ModelId(family.modality, family.train_dataset, family.model, subject, variant)
            weights, meta = berg_files(mid)
            found.append((mid, [ModelEntry(mid, "berg", (weights,), meta)]))

    choices: dict[ModelId, list[ModelEntry]] = {}  # NED's files first: they win when both formats are whole
    for mid, options in found:
        choices.setdefault(mid, []).extend(options)
    entries: dict[ModelId, ModelEntry] = {}
    damaged: dict[ModelId, DamagedModel] = {}
    for mid, options in choices.items():
        whole = next((e for e in options if all(f in present for f in (*e.weights, e.metadata))), None)
        if whole is not None:
            entries[mid] = whole
        else:
            first = options[0]
            damaged[mid] = DamagedModel(first, next(f for f in (*first.weights, first.metadata) if f not in present))
    return dict(sorted(entries.items())), dict(sorted(damaged.items()))


def metadata_problem(mid: ModelId, meta: Any, format: str = "ned") -> str:
    """What is wrong with a metadata object, or ''."""
    if not isinstance(meta, dict):
        shape = getattr(meta, "shape", None)
        return f"expected a dict, got {type(meta).__name__}" + (f" of shape {shape}" if shape is not None else "")
    if format == "berg":  # the fields each family reads are checked when its head is read
        section = mid.family.metadata_section
        return "" if isinstance(meta.get(section), dict) else f"no '{section}' dict"
    section = meta.get(mid.modality)
    if not isinstance(section, dict):
        return f"no '{mid.modality}' dict"
    if mid.modality == "fmri":
        ncsnr = section.get("ncsnr")
        if ncsnr is None or np.ndim(ncsnr) != 1 or len(ncsnr) == 0:
            return "'fmri/ncsnr' must be a non-empty 1-D array (one value per voxel)"
    else:
        for key in ("ch_names", "times"):
            if key not in section or len(section[key]) == 0:
                return f"'eeg/{key}' is missing or empty"
    accuracy = meta.get("encoding_models", {}).get("encoding_accuracy") if isinstance(meta.get("encoding_models"), dict) \
        else None
    if not isinstance(accuracy, dict):
        return "no 'encoding_models/encoding_accuracy' dict"
    return ""
