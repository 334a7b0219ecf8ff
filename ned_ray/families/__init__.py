"""The model families ned-ray serves, one module each, and their registry.

A family module states everything about its models: ids (subjects, variants), response axes and
layout, BERG's files and selection rules, and the backbone it shares (:mod:`.base`). Adding a family
is one module here, listed in ``_MODULES``, plus its tests; model code for a new backbone lives in
``ned_ray/models/``.
"""

from __future__ import annotations

from . import eeg, fsaverage, fwrf, meg, things_fmri, tvsd
from .base import VIT_B_32, BergFiles, Family

__all__ = ["Family", "BergFiles", "FAMILIES", "BY_KEY", "BERG_IDS", "VIT_B_32", "family"]

_MODULES = (fwrf, eeg, fsaverage, things_fmri, meg, tvsd)
FAMILIES: dict[tuple[str, str, str], Family] = {(m.FAMILY.modality, m.FAMILY.train_dataset, m.FAMILY.model): m.FAMILY
                                                 for m in _MODULES}
BY_KEY: dict[str, Family] = {f.key: f for f in FAMILIES.values()}
BERG_IDS: dict[str, Family] = {f.berg_id: f for f in FAMILIES.values()}


def family(key: str) -> Family:
    """The family called ``key`` (fwrf, eeg, fsaverage, ...); an unknown one lists the valid ones."""
    try:
        return BY_KEY[key]
    except KeyError:
        raise ValueError(f"unknown model family '{key}'; valid: {', '.join(BY_KEY)}") from None
