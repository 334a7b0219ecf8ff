"""Model ids: ``fmri/nsd/fwrf/sub-01/V1``, ``eeg/things_eeg_2/vit_b_32/sub-01``, and BERG's families.

A :class:`ModelId` names one encoding model the way NED's and BERG's ``get_encoding_model``
arguments do: modality, train dataset, model, subject, and for some families a *variant* (the fwrf
ROI, the fsaverage hemisphere, the MEG train split). Its string form is also the model's folder
name in job outputs, so every part is validated to be a plain name: no separators, no ``..``.
Each (modality, train dataset, model) is a :class:`Family`; :data:`FAMILIES` lists them, with
BERG's id for each (``meg-things_meg_1-vit_b_32``), which :func:`select` accepts too.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import ModelIdError, UnknownModelError
from .families import BERG_IDS, FAMILIES, Family
from .families.eeg import CHANNELS
from .families.fwrf import ROIS, SPLIT_ROIS

__all__ = [
    "ModelId", "Family", "FAMILIES", "UnknownModelError", "MODALITIES", "TRAIN_DATASETS", "MODELS", "SUBJECTS",
    "ROIS", "SPLIT_ROIS", "CHANNELS", "select",
]

# NED's published catalogue (ned-spec §4). A NED directory may hold a subset of it.
MODALITIES = ("fmri", "eeg")
TRAIN_DATASETS = {"fmri": ("nsd",), "eeg": ("things_eeg_2",)}
MODELS = {"fmri": ("fwrf",), "eeg": ("vit_b_32",)}
SUBJECTS = {"fmri": tuple(range(1, 9)), "eeg": tuple(range(1, 11))}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SUBJECT = re.compile(r"^sub-(?:(\d{2})|([A-Z]))$")


def _families() -> str:
    return ", ".join(f"{f.path} ({f.berg_id})" for f in FAMILIES.values())


@dataclass(frozen=True, order=True)
class ModelId:
    """One encoding model: a family, a subject (an int; TVSD's monkeys 'N' and 'F'), and the
    family's variant (fwrf: ROI, fsaverage: hemisphere, MEG: train split) or ``None``."""

    modality: str
    train_dataset: str
    model: str
    subject: int | str
    variant: str | None = None

    def __post_init__(self) -> None:
        for name in ("modality", "train_dataset", "model"):
            _check_name(name, getattr(self, name))
        if self.variant is not None:
            _check_name("variant", self.variant)
        family = FAMILIES.get((self.modality, self.train_dataset, self.model))
        if family is None:
            raise ModelIdError(f"'{self.modality}/{self.train_dataset}/{self.model}' is not a known model family; "
                             f"known: {_families()}")
        subject_ok = (isinstance(self.subject, str) and bool(re.fullmatch(r"[A-Z]", self.subject))) or (
            isinstance(self.subject, int) and not isinstance(self.subject, bool) and 0 < self.subject < 100)
        if not subject_ok:
            raise ModelIdError(f"subject must be an int in 1..99 (or a monkey letter such as 'F'), got {self.subject!r}")
        if (family.variant is None) != (self.variant is None):
            raise ModelIdError(f"{family.path} ids take {'a ' + family.variant if family.variant else 'no 5th part'} "
                             f"(e.g. '{family.example()}'), got {self.subject_tag}/{self.variant}")

    @property
    def family(self) -> Family:
        return FAMILIES[(self.modality, self.train_dataset, self.model)]

    @property
    def roi(self) -> str | None:
        """The NSD ROI of an fwrf model (None for other families)."""
        return self.variant if self.family.variant == "roi" else None

    @property
    def subject_tag(self) -> str:
        return f"sub-{self.subject:02d}" if isinstance(self.subject, int) else f"sub-{self.subject}"

    def __str__(self) -> str:
        base = f"{self.modality}/{self.train_dataset}/{self.model}/{self.subject_tag}"
        return f"{base}/{self.variant}" if self.variant is not None else base

    @property
    def label(self) -> str:
        """A short name for figures: 'fMRI sub-01 V1', 'EEG sub-01', 'MEG sub-01 full'."""
        return " ".join(p for p in (self.family.title, self.subject_tag, self.variant) if p)

    @property
    def is_split(self) -> bool:
        """True for fwrf ROIs stored as two checkpoints (``lateral``, ``ventral``)."""
        return self.roi in SPLIT_ROIS

    @property
    def source(self) -> str:
        """What names the file it is read from: fsaverage's two hemispheres share one file."""
        return f"{self.family.path}/{self.subject_tag}" if self.family.variant_is_part else str(self)

    @property
    def berg(self) -> tuple[str, dict]:
        """BERG's ``get_encoding_model`` id and keyword arguments for this model."""
        kwargs: dict = {"subject": self.subject}
        if self.family.variant_argument:  # MEG's train_split, fwrf's roi
            kwargs[self.family.variant_argument] = self.variant
        return self.family.berg_id, kwargs

    @classmethod
    def parse(cls, text: str) -> "ModelId":
        """Parse ``fmri/nsd/fwrf/sub-01/V1``, ``eeg/things_eeg_2/vit_b_32/sub-01``,
        ``meg/things_meg_1/vit_b_32/sub-01/full``, ``utah_array/tvsd/vit_b_32/sub-F``, ..."""
        if not isinstance(text, str):
            raise TypeError(f"a model id must be a string, got {type(text).__name__}")
        parts = text.strip().strip("/").split("/")
        family = FAMILIES.get(tuple(parts[:3])) if len(parts) >= 3 else None
        if family is None or len(parts) != (5 if family.variant else 4):
            raise UnknownModelError(
                f"'{text}' is not a model id: expected e.g. 'fmri/nsd/fwrf/sub-01/V1' or "
                f"'eeg/things_eeg_2/vit_b_32/sub-01' (families: {_families()}; run `ned-ray models DIR` to list "
                "a directory's models)"
            )
        match = _SUBJECT.match(parts[3])
        if not match:
            raise UnknownModelError(f"'{text}': the subject part must look like '{family.example().split('/')[3]}' "
                                    f"(as in '{family.example()}')")
        subject = int(match.group(1)) if match.group(1) else match.group(2)
        try:
            return cls(parts[0], parts[1], parts[2], subject, parts[4] if family.variant else None)
        except ValueError as exc:
            raise UnknownModelError(f"'{text}': {exc}") from None


def _check_name(field: str, value: object) -> None:
    if not isinstance(value, str) or not _NAME.match(value) or value in {".", ".."}:
        raise ModelIdError(
            f"{field} {value!r} is not a plain name (letters, digits, '_', '-', '.'; no path separators)"
        )


def _pattern(text: str) -> str:
    """A pattern with a leading BERG id (``meg-things_meg_1-vit_b_32``) written as its family path."""
    head, _, rest = text.partition("/")
    family = BERG_IDS.get(head)
    return f"{family.path}/{rest}".rstrip("/") if family else text


def select(available: Sequence[ModelId], spec: str | Iterable[str]) -> list[ModelId]:
    """Models matching a spec: comma-separated ids or globs (``eeg/*``, ``fmri/*/*/sub-0*/V1``), BERG
    model ids (``meg-things_meg_1-vit_b_32``: all its subjects and variants), or ``all``.

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
            pattern = _pattern(pattern.strip("/"))
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + "/*")]
        if not hits:
            listing = "\n  ".join(sorted(names)) or "(none: the directory holds no models)"
            raise UnknownModelError(f"no model matches '{pattern}'. Valid model ids:\n  {listing}")
        for n in hits:
            chosen[n] = names[n]
    return sorted(chosen.values())
