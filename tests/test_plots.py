"""Figures (ned_ray/plots.py): fsaverage on the cortical surface (nilearn), EEG and MEG topographies
(MNE), one per family, each drawn (not a blank canvas)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ned_ray.errors import OutputError
from ned_ray.output import open_output
from ned_ray.plots import FSAVERAGE5, plot_output


def _coloured(path) -> float:
    """The share of clearly coloured (red or blue, not grey) pixels of a PNG."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)
    return float((np.abs(rgb[..., 0] - rgb[..., 2]) > 60).mean())


def test_every_family_has_its_figures_and_each_is_drawn(families_output, tmp_path):
    out = open_output(str(families_output))
    paths = plot_output(out, tmp_path, times=(0.1, 0.25))
    names = sorted(p.name for p in paths)
    assert names == ["eeg_timecourses.png", "eeg_topomaps.png", "fmri_distributions.png",
                     "fsaverage_alexnet_untrained_surface.png", "fsaverage_surface.png", "heatmap.png",
                     "meg_timecourses.png", "meg_topomaps.png", "things_fmri_distributions.png", "tvsd_timecourses.png"]
    for name in ("fsaverage_alexnet_untrained_surface.png", "eeg_topomaps.png", "meg_topomaps.png"):
        assert _coloured(tmp_path / name) > 0.02, name  # the maps are painted
    # the ViT fsaverage models keep ROI V1v only: their surface is mostly unpainted, the AlexNet one's whole
    assert _coloured(tmp_path / "fsaverage_surface.png") < _coloured(tmp_path / "fsaverage_alexnet_untrained_surface.png")


def test_a_surface_needs_an_fsaverage_hemisphere(families_output, tmp_path, monkeypatch):
    import ned_ray.plots as plots

    out = open_output(str(families_output))
    monkeypatch.setattr(plots, "FSAVERAGE5", 200_000)  # more vertices than a hemisphere has
    with pytest.raises(OutputError, match="not an fsaverage hemisphere"):
        plots.plot_output(out, tmp_path, models=["fmri/nsd_fsaverage/alexnet_untrained/sub-01/lh"])
    assert FSAVERAGE5 == 10_242
