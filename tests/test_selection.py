"""Selections: parsing, resolving against NED metadata, and clear errors for what selects nothing."""

from __future__ import annotations

import numpy as np
import pytest

from ned_ray.ids import ModelId
from ned_ray.modeldir import NedDir
from ned_ray.selection import Selection, parse_channels, parse_times

EEG = ModelId.parse("eeg/things_eeg_2/vit_b_32/sub-01")
FMRI = ModelId.parse("fmri/nsd/fwrf/sub-01/V1")


def test_parsing():
    assert parse_channels("O1, Oz,O2") == ("O1", "Oz", "O2") and parse_channels(None) is None
    assert parse_times("0.1:0.3") == (0.1, 0.3) and parse_times("") is None
    for bad in ("0.1", "a:b", "0.3:0.1"):
        with pytest.raises(ValueError, match="--times"):
            parse_times(bad)


def test_resolve_against_metadata(demo_dir):
    ned = NedDir(str(demo_dir))
    eeg, fmri = ned.metadata(EEG), ned.metadata(FMRI)
    names, times = list(eeg["eeg"]["ch_names"]), np.asarray(eeg["eeg"]["times"])
    picked = Selection(channels=("Oz", "O1"), times=(0.1, 0.2)).resolve(EEG, eeg)
    assert [names[i] for i in picked.channels] == ["Oz", "O1"]  # the order asked for
    assert np.all((times[picked.times] >= 0.1 - 1e-9) & (times[picked.times] <= 0.2 + 1e-9))
    assert len(picked.times) == int(((times >= 0.1 - 1e-9) & (times <= 0.2 + 1e-9)).sum()) > 0
    assert Selection(channels=("Oz",)).resolve(FMRI, fmri).empty  # EEG parts leave fMRI alone
    ncsnr = np.asarray(fmri["fmri"]["ncsnr"])
    threshold = float(np.median(ncsnr))
    kept = Selection(min_ncsnr=threshold).resolve(FMRI, fmri).voxels
    np.testing.assert_array_equal(kept, np.flatnonzero(ncsnr > threshold))
    values = np.arange(2 * len(ncsnr), dtype=np.float32).reshape(2, -1)
    np.testing.assert_array_equal(Selection(min_ncsnr=threshold).resolve(FMRI, fmri).apply(values), values[:, ncsnr > threshold])


def test_selections_that_keep_nothing_say_why(demo_dir):
    ned = NedDir(str(demo_dir))
    with pytest.raises(ValueError, match="--channels: Cz9 not among .*valid: "):
        Selection(channels=("Cz9",)).resolve(EEG, ned.metadata(EEG))
    with pytest.raises(ValueError, match="--times 5.0:6.0 keeps no time point"):
        Selection(times=(5.0, 6.0)).resolve(EEG, ned.metadata(EEG))
    with pytest.raises(ValueError, match="--min-ncsnr 1000.0 keeps no voxel of fmri/nsd/fwrf/sub-01/V1"):
        Selection(min_ncsnr=1000.0).resolve(FMRI, ned.metadata(FMRI))
