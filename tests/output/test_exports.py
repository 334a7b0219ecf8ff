"""Exports (ned_ray/output/exports.py, ``ned-ray export``): each format read back with the library its
users use (nibabel, mne, xarray) gives the output's values, axes and names."""

from __future__ import annotations

import numpy as np
import pytest

from ned_ray.cli import main
from ned_ray.errors import OutputError
from ned_ray.output import open_output

FSAVG = "fmri/nsd_fsaverage/vit_b_32/sub-01/lh"  # selected: ROI V1v
FSAVG_ALEXNET = "fmri/nsd_fsaverage/alexnet_untrained/sub-01/rh"  # whole hemisphere
THINGS = "fmri/things_fmri_1/vit_b_32/sub-01"
FWRF = "fmri/nsd/fwrf/sub-01/V1"
NED_EEG = "eeg/things_eeg_2/vit_b_32/sub-01"
MEG = "meg/things_meg_1/vit_b_32/sub-01/full"
TVSD = "utah_array/tvsd/vit_b_32/sub-F"


@pytest.fixture(scope="module")
def output(families_output):
    return open_output(str(families_output))


def test_fsaverage_to_gifti_and_mgh_on_the_whole_mesh(output, tmp_path):
    import nibabel as nib

    _, values = output.responses(FSAVG)
    kept = output.coords(FSAVG)["vertex"]
    total = len(output.metadata(FSAVG)["npz"]["fmri/lh_ncsnr"])
    assert len(kept) < total
    gifti = nib.load(output.export(FSAVG, "gifti", str(tmp_path / "lh.func.gii"), images=[2, 5]))
    assert len(gifti.darrays) == 2 and gifti.meta["AnatomicalStructurePrimary"] == "CortexLeft"
    ids = output.images().column("image_id").to_pylist()
    for array, row in zip(gifti.darrays, (2, 5)):
        assert array.data.shape == (total,) and array.data.dtype == np.float32 and array.meta["Name"] == ids[row]
        np.testing.assert_array_equal(array.data[kept], values[row])
        assert np.isnan(np.delete(array.data, kept)).all()  # the vertices the selection left out
    mgh = nib.load(output.export(FSAVG_ALEXNET, "mgh", str(tmp_path / "rh.mgz")))
    _, whole = output.responses(FSAVG_ALEXNET)
    assert mgh.shape == (whole.shape[1], 1, 1, len(whole))
    np.testing.assert_array_equal(np.asarray(mgh.dataobj)[:, 0, 0, :].T, whole)


def test_volumes_to_nifti_through_neds_mask_and_bergs_voxel_coords(output, tmp_path):
    import nibabel as nib

    volume = nib.load(output.export(THINGS, "nifti", str(tmp_path / "things.nii.gz"), images=slice(0, 3)))
    coords = output.metadata(THINGS)["npz"]["fmri/voxel_coords"]
    _, values = output.responses(THINGS)
    data = np.asarray(volume.dataobj)
    assert data.shape == (*(coords.max(0) + 1), 3)
    unique = np.unique(coords, axis=0, return_index=True)[1]  # random demo coordinates may repeat: the last wins
    last = {tuple(c): v for v, c in enumerate(coords)}
    for v in unique[:50]:
        x, y, z = coords[v]
        np.testing.assert_array_equal(data[x, y, z], values[:3, last[(x, y, z)]])
    fwrf = nib.load(output.export(FWRF, "nifti", str(tmp_path / "v1.nii.gz")))
    mask = output.metadata(FWRF)["npz"]["fmri/roi_mask_volume"].astype(bool)
    np.testing.assert_array_equal(np.asarray(fwrf.dataobj)[mask].T, output.responses(FWRF)[1])
    with pytest.raises(OutputError, match="is not a volume model"):
        output.export(MEG, "nifti", str(tmp_path / "meg.nii"))


def test_sensor_models_to_mne_evoked_and_epochs(output, tmp_path):
    import mne

    _, eeg = output.responses(NED_EEG)
    coords = output.coords(NED_EEG)
    epochs = mne.read_epochs(output.export(NED_EEG, "mne", str(tmp_path / "eeg-epo.fif"), images=slice(0, 4)),
                             verbose=False)
    assert epochs.ch_names == list(coords["channel"]) and len(epochs) == 4
    np.testing.assert_allclose(epochs.times, coords["time"], atol=1e-9)
    np.testing.assert_allclose(epochs.get_data(), eeg[:4].mean(axis=1), rtol=1e-6)  # repetitions averaged
    assert epochs.get_montage() is not None and epochs.metadata["image_id"].tolist()[0] == \
        output.images().column("image_id").to_pylist()[0]
    evoked = mne.read_evokeds(output.export(MEG, "mne", str(tmp_path / "meg-ave.fif"), mean=True), verbose=False)[0]
    _, meg = output.responses(MEG)
    assert evoked.nave == len(meg) and evoked.ch_names == [str(n) for n in output.coords(MEG)["sensor"]]
    assert set(evoked.get_channel_types()) == {"mag"}
    np.testing.assert_allclose(evoked.data, meg.mean(axis=0), rtol=1e-5, atol=1e-7)
    one = output.to_mne(TVSD, images=[3])
    np.testing.assert_allclose(one.data, output.responses(TVSD)[1][3], rtol=1e-6)
    assert one.info["sfreq"] == pytest.approx(1000.0)  # TVSD's 1 ms steps
    with pytest.raises(OutputError, match="must end with '-ave.fif'"):
        output.export(MEG, "mne", str(tmp_path / "meg.fif"), mean=True)
    with pytest.raises(OutputError, match="has no sensors and times"):
        output.to_mne(THINGS)


def test_any_model_to_netcdf_and_zarr_through_xarray(output, tmp_path):
    import xarray as xr

    for model in (NED_EEG, FSAVG_ALEXNET):
        expected = output.to_xarray(model)
        back = xr.open_dataset(output.export(model, "netcdf", str(tmp_path / f"{model.replace('/', '_')}.nc")),
                               engine="h5netcdf")["responses"]
        assert back.dims == expected.dims
        np.testing.assert_array_equal(back.values, expected.values)
        assert list(back["image"].values) == list(expected["image"].values)
    zarr = xr.open_zarr(output.export(MEG, "zarr", str(tmp_path / "meg.zarr"), images=[0, 1]), consolidated=False)["responses"]
    np.testing.assert_array_equal(zarr.values, output.responses(MEG)[1][[0, 1]])


def test_the_export_command(output, tmp_path, capsys):
    dest = tmp_path / "rh.func.gii"
    assert main(["export", output.uri, "--model", FSAVG_ALEXNET, "--to", "gifti", "--dest", str(dest),
                 "--images", "0:2"]) == 0
    assert capsys.readouterr().out.strip() == str(dest) and dest.exists()
    assert main(["export", output.uri, "--model", MEG, "--to", "gifti", "--dest", str(tmp_path / "x.gii")]) == 2
    assert "is not a surface (fsaverage) model" in capsys.readouterr().err
    assert main(["export", output.uri, "--model", MEG, "--to", "netcdf", "--dest", str(tmp_path / "x.nc"),
                 "--images", "a:b"]) == 2
    assert "--images must be START:END" in capsys.readouterr().err
