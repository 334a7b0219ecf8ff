"""The model families ned-ray serves, one module each, and their registry.

A family module states everything about its models: ids (subjects, variants), response axes and
layout, BERG's files and selection rules, how it is plotted and the backbone it shares
(:mod:`.base`); a module may define several (``FAMILIES``: :mod:`.alexnet`'s four). A family on an
existing backbone served from BERG's files is one module here, listed in ``_MODULES``, plus its tests
(tests/test_families.py runs a family defined outside the package end to end, added with
:func:`register`). Not here yet: NED's own file rules (``ned_ray/modeldir/paths.py``), each family's
demo model (``ned_ray/demo.py``), and a new backbone's model code (``ned_ray/models/``).
"""

from __future__ import annotations

from . import alexnet, eeg, fsaverage, fwrf, meg, things_fmri, tvsd
from .base import ALEXNET, ALEXNET_UNTRAINED, BACKBONES, BY_INPUT, BY_NAME, FWRF, VIT_B_32, Backbone, BergFiles, Family, Plot

__all__ = ["Family", "Backbone", "BergFiles", "Plot", "FAMILIES", "BY_KEY", "BERG_IDS", "VIT_B_32", "FWRF", "ALEXNET",
           "ALEXNET_UNTRAINED", "BACKBONES", "BY_INPUT", "BY_NAME", "family", "register", "unregister"]

_MODULES = (fwrf, eeg, fsaverage, things_fmri, meg, tvsd, alexnet)
FAMILIES: dict[tuple[str, str, str], Family] = {}  # (modality, train_dataset, model) -> family
BY_KEY: dict[str, Family] = {}
BERG_IDS: dict[str, Family] = {}


def register(new: Family) -> Family:
    """Add a family to the registry (each of its names unused); returns it. In this process only:
    Ray workers import the registry afresh, so a family a job runs on Ray belongs in ``_MODULES``."""
    path = (new.modality, new.train_dataset, new.model)
    for taken, name in ((path in FAMILIES, "/".join(path)), (new.key in BY_KEY, new.key), (new.berg_id in BERG_IDS, new.berg_id)):
        if taken:
            raise ValueError(f"a model family named '{name}' is already registered")
    FAMILIES[path], BY_KEY[new.key], BERG_IDS[new.berg_id] = new, new, new
    return new


def unregister(old: Family) -> None:
    """Remove a family :func:`register` added."""
    del FAMILIES[(old.modality, old.train_dataset, old.model)], BY_KEY[old.key], BERG_IDS[old.berg_id]


for _module in _MODULES:
    for _family in getattr(_module, "FAMILIES", None) or (_module.FAMILY,):
        register(_family)


def family(key: str) -> Family:
    """The family called ``key`` (fwrf, eeg, fsaverage, ...); an unknown one lists the valid ones."""
    try:
        return BY_KEY[key]
    except KeyError:
        raise ValueError(f"unknown model family '{key}'; valid: {', '.join(BY_KEY)}") from None
