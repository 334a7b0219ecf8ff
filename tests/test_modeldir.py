"""NED's layout: the catalogue, missing files, and directories on non-local fsspec filesystems."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest

from ned_ray import NED
from ned_ray.ids import UnknownModelError
from ned_ray.modeldir import MissingFileError, NedDir

from .conftest import PARITY


def test_catalogue_lists_what_the_directory_holds(ned_dir):
    ned = NedDir(str(ned_dir))
    assert [str(m) for m in ned.catalogue] == [
        "eeg/things_eeg_2/vit_b_32/sub-01", "eeg/things_eeg_2/vit_b_32/sub-02",
        "fmri/nsd/fwrf/sub-01/V1", "fmri/nsd/fwrf/sub-01/lateral", "fmri/nsd/fwrf/sub-02/V1"]
    lateral = ned.entry("fmri/nsd/fwrf/sub-01/lateral")
    assert [w.rsplit("/", 1)[1] for w in lateral.weights] == [
        "weights_sub-01_roi-lateral_split-1.pt", "weights_sub-01_roi-lateral_split-2.pt"]


def test_incomplete_models_are_not_listed(tmp_path, demo_dir):
    import shutil

    copy = tmp_path / "ned"
    shutil.copytree(demo_dir, copy)
    ned = NedDir(str(copy))
    (copy / ned.fwrf_weights(1, "lateral")[1]).unlink()  # half of a split ROI
    (copy / ned.fwrf_metadata(2, "V1")).unlink()
    names = {str(m) for m in NedDir(str(copy)).catalogue}
    assert "fmri/nsd/fwrf/sub-01/lateral" not in names and "fmri/nsd/fwrf/sub-02/V1" not in names
    assert "fmri/nsd/fwrf/sub-01/V1" in names


def test_unknown_model_lists_valid_ids(ned_dir):
    ned = NedDir(str(ned_dir))
    with pytest.raises(UnknownModelError) as info:
        ned.entry("fmri/nsd/fwrf/sub-09/V1")  # NED has no subject 9
    assert "fmri/nsd/fwrf/sub-02/V1" in str(info.value)
    with pytest.raises(MissingFileError) as info:  # a NED model whose files are not here
        ned.entry("fmri/nsd/fwrf/sub-03/V1")
    assert "weights_sub-03_roi-V1.pt" in str(info.value) and "fmri/nsd/fwrf/sub-02/V1" in str(info.value)


def test_missing_directory_and_file_name_the_expected_path(tmp_path):
    with pytest.raises(MissingFileError, match="NED directory not found: '.*nowhere'"):
        NedDir(str(tmp_path / "nowhere"))
    ned = NedDir(str(tmp_path))
    with pytest.raises(MissingFileError, match="expected '.*metadata_sub-01_roi-V1.npy'"):
        ned.load_npy(ned.fwrf_metadata(1, "V1"))
    assert isinstance(MissingFileError("x"), FileNotFoundError)  # NED raised FileNotFoundError


def test_ned_directory_on_another_fsspec_filesystem(ned_dir, fixtures, fixture_images):
    """A NED directory read through fsspec (memory://, as s3:// or gs:// would be) gives NED's numbers."""
    memory = fsspec.filesystem("memory")
    local = NedDir(str(ned_dir))
    for rel in (*local.fwrf_weights(1, "lateral"), local.fwrf_metadata(1, "lateral")):
        memory.pipe(f"/ned_remote/{rel}", (ned_dir / rel).read_bytes())
    remote = NED("memory://ned_remote")
    assert remote.models() == ["fmri/nsd/fwrf/sub-01/lateral"]
    model = remote.get_encoding_model("fmri", "nsd", "fwrf", 1, "lateral", device="cpu")
    ours = remote.encode(model, fixture_images["images_small"], return_metadata=False)
    expected = np.load(fixtures / "expected" / "fmri_sub-01_lateral__images_small.npy")
    figure = float(np.abs(ours - expected).max() / expected.std())
    PARITY["fmri_sub-01_lateral x images_small (memory://)"] = figure
    assert figure <= 1e-4
