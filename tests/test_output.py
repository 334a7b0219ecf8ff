"""Reading outputs: numpy arrays, Arrow tables and xarray objects agree; NIfTI export follows NED's mask."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ned_ray.output import IncompleteOutputError, open_output

EEG = "eeg/things_eeg_2/vit_b_32/sub-02"
FMRI = "fmri/nsd/fwrf/sub-01/lateral"


def test_numpy_arrow_and_xarray_agree(demo_output):
    out = open_output(str(demo_output))
    ids = out.images().column("image_id").to_pylist()
    assert len(ids) == 15 and ids[-1] == "zz_corrupt.jpg"
    for mid in (EEG, FMRI):
        index, values = out.responses(mid)
        assert index.tolist() == list(range(14))  # the corrupt image has no row
        table = out.table(mid)
        flat = np.stack(table.column("response").to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(flat.reshape(values.shape), values)
        data = out.to_xarray(mid)
        np.testing.assert_array_equal(data.values, values)
        assert list(data.coords["image"].values) == ids[:14]
        assert data.coords["image_index"].values.tolist() == index.tolist()
        assert data.sel(image="astronaut.jpg").values.tolist() == values[ids.index("astronaut.jpg")].tolist()
    eeg = out.to_xarray(EEG)
    meta = out.metadata(EEG)
    assert eeg.dims == ("image", "repetition", "channel", "time")
    assert list(eeg.coords["channel"].values) == meta["json"]["ned_metadata"]["eeg"]["ch_names"]
    np.testing.assert_array_equal(eeg.coords["time"].values, meta["npz"]["eeg/times"])
    assert eeg.coords["repetition"].values.tolist() == [1, 2, 3, 4]
    # a named selection equals positional indexing
    oz = list(eeg.coords["channel"].values).index("Oz")
    np.testing.assert_array_equal(eeg.sel(channel="Oz").values, out.responses(EEG)[1][:, :, oz])
    fmri = out.to_xarray(FMRI)
    assert fmri.dims == ("image", "voxel") and fmri.coords["voxel"].values.tolist() == list(range(fmri.shape[1]))


def test_nifti_export_puts_each_voxel_where_neds_mask_says(demo_output, tmp_path):
    out = open_output(str(demo_output))
    _, values = out.responses(FMRI)
    meta = out.metadata(FMRI)["npz"]
    mask, affine = meta["fmri/roi_mask_volume"], meta["fmri/fmri_affine"]
    path = out.to_nifti(FMRI, str(tmp_path / "lateral.nii.gz"), images=[0, 3])
    image = nib.load(path)
    volume = np.asarray(image.dataobj)
    assert volume.shape == (*mask.shape, 2)
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)  # NIfTI headers keep the affine in float32
    # NED's tutorial: vol = zeros(mask.shape); vol[mask] = response (the v-th True entry in C order)
    coords = np.argwhere(mask)  # C order
    for v in (0, 1, len(coords) // 2, len(coords) - 1):
        x, y, z = coords[v]
        assert volume[x, y, z, 1] == values[3, v]
    assert np.all(volume[~mask] == 0)
    with pytest.raises(ValueError, match="is not a volume model .NSD fwrf or THINGS-fMRI."):
        out.to_nifti(EEG, str(tmp_path / "eeg.nii"))


def test_an_unfinished_output_does_not_open(demo_output, tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "_job.json").write_text(json.dumps({}))
    with pytest.raises(IncompleteOutputError, match="rerun the same command"):
        open_output(str(tmp_path / "half"))
    with pytest.raises(KeyError, match="has no model 'eeg/x'"):
        open_output(str(demo_output)).responses("eeg/x")


# -- lazy reads: batches, rows, parts --------------------------------------------------------------

@pytest.fixture(scope="module")
def parted_output(demo_dir, tmp_path_factory):
    """Two models over the built-in photographs in parts of 3 images (5 parts), Parquet and .npy."""
    from ned_ray.demo import write_demo_images
    from ned_ray.job.options import EncodeConfig
    from ned_ray.job.run import run_encode

    root = tmp_path_factory.mktemp("parted")
    write_demo_images(root / "images")
    run_encode(EncodeConfig(str(demo_dir), str(root / "images"), f"{EEG},fmri/nsd/fwrf/sub-01/V1", str(root / "out"),
                            device="cpu", formats=("parquet", "npy"), shard_size=3, cpu_threads=1, executor="local"))
    return root / "out"


@pytest.mark.parametrize("layout", ["parquet", "npy", "earlier manifest"])
def test_batches_stream_in_order_and_rows_read_only_the_parts_holding_them(parted_output, layout):
    out = open_output(str(parted_output))
    for model in out.models:
        if layout == "npy":
            out.manifest["models"][model]["parts"].pop("parquet")
        if layout == "earlier manifest":  # written before index ranges were recorded: found from the parts
            out.manifest["models"][model].pop("index_ranges")
        index, values = out.responses(model)
        assert len(out._parts(model)) == 5 and len(index) == 14
        batches = list(out.iter_batches(model, rows_per_batch=2))
        assert all(len(i) <= 2 for i, _ in batches) and np.array_equal(np.concatenate([i for i, _ in batches]), index)
        np.testing.assert_array_equal(np.concatenate([v for _, v in batches]), values)
        assert [p["lo"] for p in out._parts(model, out._rows(slice(4, 8)))] == [3, 6]  # 2 of the 5 parts
        some, picked = out.responses(model, rows=slice(4, 8))
        assert some.tolist() == [4, 5, 6, 7] and np.array_equal(picked, values[4:8])
        assert out.responses(model, rows=[13, 0])[0].tolist() == [0, 13]
        assert len(out.responses(model, rows=[99])[0]) == 0
        if layout != "npy":
            assert out.table(model, rows=range(2, 4)).column("image_index").to_pylist() == [2, 3]


def test_a_lazy_xarray_and_a_zarr_store_hold_what_the_eager_reader_does(parted_output, tmp_path):
    import xarray as xr

    out = open_output(str(parted_output))
    for model in out.models:
        eager = out.to_xarray(model)
        lazy = out.to_xarray(model, chunks=4)
        assert lazy.chunks[0] == (4, 4, 4, 2) and type(lazy.data).__module__.startswith("dask")  # nothing read yet
        xr.testing.assert_identical(lazy.compute(), eager)
        xr.testing.assert_identical(lazy.isel(image=slice(5, 7)).compute(), eager.isel(image=slice(5, 7)))
        store = out.to_zarr(model, str(tmp_path / f"{model.replace('/', '_')}.zarr"), chunks=4)
        with xr.open_zarr(store, consolidated=False) as back:
            assert back.attrs["model_id"] == model
            xr.testing.assert_equal(back["responses"].compute(), eager.rename("responses"))
    with pytest.raises(FileExistsError):  # an existing store is never overwritten unless asked (mode="w")
        out.to_zarr(out.models[0], store, chunks=4)
