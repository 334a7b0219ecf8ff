"""BERG's four AlexNet models (berg-spec §9): THINGS-EEG-2 and NSD fsaverage, on torchvision's
AlexNet trained on ImageNet (``alexnet``) or untrained (``alexnet_untrained``, BERG's seeded
initialisation). Files, selections and head maths are those of the ViT-B/32 families (§4, §5):
only the backbone differs, and fsaverage's ROIs add ``nsdgeneral``. The network code is
``ned_ray/models/alexnet.py``."""

from __future__ import annotations

import dataclasses

from . import eeg, fsaverage
from .base import ALEXNET, ALEXNET_UNTRAINED, Backbone, Family, Plot

__all__ = ["FAMILIES", "FSAVERAGE_ROIS"]

FSAVERAGE_ROIS = [*fsaverage.FSAVERAGE_ROIS, "nsdgeneral"]  # BERG's cards: 32 ROIs


def _variant(base: Family, backbone: Backbone, key: str, title: str, **changes) -> Family:
    """``base``'s family on another backbone: its files, selections and axes, BERG's id for ``backbone``."""
    return dataclasses.replace(base, key=key, model=backbone.name, backbone=backbone, title=title, pool="alexnet",
                               ned_options=(), ned_accuracy=None, **changes)


def _eeg(backbone: Backbone, key: str, title: str) -> Family:
    return _variant(eeg.FAMILY, backbone, key, title, plot=Plot("timecourses", f"{key}_timecourses", title, eeg.unit_groups),
                    maps=Plot("topomaps", f"{key}_topomaps", title))


def _fsaverage(backbone: Backbone, key: str, title: str) -> Family:
    return _variant(fsaverage.FAMILY, backbone, key, title, select_rows=fsaverage.roi_rule(FSAVERAGE_ROIS),
                    accuracy=(("encoding_models", "{variant}_correlation_nsdcore"), "mean r (NSD core)"),
                    plot=Plot("surface", f"{key}_surface", title))


FAMILIES = (
    _eeg(ALEXNET, "eeg_alexnet", "EEG (AlexNet)"),
    _eeg(ALEXNET_UNTRAINED, "eeg_alexnet_untrained", "EEG (untrained AlexNet)"),
    _fsaverage(ALEXNET, "fsaverage_alexnet", "fsaverage (AlexNet)"),
    _fsaverage(ALEXNET_UNTRAINED, "fsaverage_alexnet_untrained", "fsaverage (untrained AlexNet)"),
)
