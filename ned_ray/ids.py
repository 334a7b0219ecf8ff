"""Model ids: ``fmri/nsd/fwrf/sub-01/V1`` and ``eeg/things_eeg_2/vit_b_32/sub-01``.

A :class:`ModelId` names one encoding model the way NED's ``get_encoding_model`` arguments do
(modality, train dataset, model, subject, ROI). Its string form is also the model's folder name in
job outputs, so every part is validated to be a plain name: no separators, no ``..``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = [
    "ModelId", "UnknownModelError", "MODALITIES", "TRAIN_DATASETS", "MODELS", "SUBJECTS", "ROIS",
    "SPLIT_ROIS", "CHANNELS", "select",
]

# NED's published catalogue (ned-spec §4). A NED directory may hold a subset of it.
MODALITIES = ("fmri", "eeg")
TRAIN_DATASETS = {"fmri": ("nsd",), "eeg": ("things_eeg_2",)}
MODELS = {"fmri": ("fwrf",), "eeg": ("vit_b_32",)}
SUBJECTS = {"fmri": tuple(range(1, 9)), "eeg": tuple(range(1, 11))}
ROIS = (
    "V1", "V2", "V3", "hV4", "EBA", "FBA-2", "OFA", "FFA-1", "FFA-2", "PPA", "RSC", "OPA", "OWFA",
    "VWFA-1", "VWFA-2", "mfs-words", "early", "midventral", "midlateral", "midparietal", "parietal",
    "lateral", "ventral",
)
SPLIT_ROIS = ("lateral", "ventral")  # stored as two checkpoints, one model
CHANNELS = (
    "Fp1 F3 F7 FT9 FC5 FC1 C3 T7 TP9 CP5 CP1 Pz P3 P7 O1 Oz O2 P4 P8 TP10 CP6 CP2 Cz C4 T8 FT10 FC6 "
    "FC2 F4 F8 Fp2 AF7 AF3 AFz F1 F5 FT7 FC3 FCz C1 C5 TP7 CP3 P1 P5 PO7 PO3 POz PO4 PO8 P6 P2 CPz "
    "CP4 TP8 C6 C2 FC4 FT8 F6 F2 AF4 AF8"
).split()

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SUBJECT = re.compile(r"^sub-(\d{2})$")


class UnknownModelError(ValueError):
    """A model id or pattern that names no model in the NED directory."""


@dataclass(frozen=True, order=True)
class ModelId:
    """One encoding model. ``roi`` is set for fMRI and ``None`` for EEG."""

    modality: str
    train_dataset: str
    model: str
    subject: int
    roi: str | None = None

    def __post_init__(self) -> None:
        for name in ("modality", "train_dataset", "model"):
            _check_name(name, getattr(self, name))
        if self.roi is not None:
            _check_name("roi", self.roi)
        if isinstance(self.subject, bool) or not isinstance(self.subject, int) or not 0 < self.subject < 100:
            raise ValueError(f"subject must be an int in 1..99, got {self.subject!r}")
        if (self.modality == "fmri") != (self.roi is not None):
            raise ValueError(f"fMRI model ids need a ROI and EEG ids take none: {self}")

    def __str__(self) -> str:
        base = f"{self.modality}/{self.train_dataset}/{self.model}/sub-{self.subject:02d}"
        return f"{base}/{self.roi}" if self.roi is not None else base

    @property
    def label(self) -> str:
        """A short name for figures: 'sub-01 V1' or 'EEG sub-01'."""
        return f"sub-{self.subject:02d} {self.roi}" if self.modality == "fmri" else f"EEG sub-{self.subject:02d}"

    @property
    def is_split(self) -> bool:
        """True for ROIs stored as two checkpoints (``lateral``, ``ventral``)."""
        return self.roi in SPLIT_ROIS

    @classmethod
    def parse(cls, text: str) -> "ModelId":
        """Parse ``fmri/nsd/fwrf/sub-01/V1`` or ``eeg/things_eeg_2/vit_b_32/sub-01``."""
        if not isinstance(text, str):
            raise TypeError(f"a model id must be a string, got {type(text).__name__}")
        parts = text.strip().strip("/").split("/")
        modality = parts[0] if parts else ""
        want = 5 if modality == "fmri" else 4
        example = "fmri/nsd/fwrf/sub-01/V1" if modality == "fmri" else "eeg/things_eeg_2/vit_b_32/sub-01"
        if modality not in MODALITIES or len(parts) != want:
            raise UnknownModelError(
                f"'{text}' is not a model id: expected e.g. 'fmri/nsd/fwrf/sub-01/V1' or "
                "'eeg/things_eeg_2/vit_b_32/sub-01' (run `ned-ray models NED_DIR` to list them)"
            )
        match = _SUBJECT.match(parts[3])
        if not match:
            raise UnknownModelError(f"'{text}': the subject part must look like 'sub-01' (as in '{example}')")
        roi = parts[4] if modality == "fmri" else None
        try:
            return cls(parts[0], parts[1], parts[2], int(match.group(1)), roi)
        except ValueError as exc:
            raise UnknownModelError(f"'{text}': {exc}") from None


def _check_name(field: str, value: object) -> None:
    if not isinstance(value, str) or not _NAME.match(value) or value in {".", ".."}:
        raise ValueError(
            f"{field} {value!r} is not a plain name (letters, digits, '_', '-', '.'; no path separators)"
        )


def select(available: Sequence[ModelId], spec: str | Iterable[str]) -> list[ModelId]:
    """Models matching a spec: comma-separated ids or globs (``eeg/*``, ``fmri/*/*/sub-0*/V1``), or ``all``.

    Each pattern must match at least one model; the error lists what is available.
    """
    patterns = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p.strip()]
    if not patterns:
        raise UnknownModelError("no models requested: give model ids, globs, or 'all'")
    names = {str(m): m for m in available}
    chosen: dict[str, ModelId] = {}
    for pattern in patterns:
        if pattern == "all":
            hits = list(names)
        else:
            pattern = pattern.strip("/")
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + "/*")]
        if not hits:
            listing = "\n  ".join(sorted(names)) or "(none: the directory holds no NED models)"
            raise UnknownModelError(f"no model matches '{pattern}'. Valid model ids:\n  {listing}")
        for n in hits:
            chosen[n] = names[n]
    return sorted(chosen.values())
