"""The encode job on a real local Ray cluster: NED's numbers, the API's numbers, the output format."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ned_ray import NED, ModelGroup
from ned_ray.errors import OutputExistsError
from ned_ray.job.decode import decode_image
from ned_ray.job.inputs import NoImagesError
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.modeldir import NedDir
from ned_ray.output import IncompleteOutputError, open_output

from ..conftest import PARITY
from .conftest import torch_threads

FIXTURE_IDS = {
    "fmri_sub-01_V1": "fmri/nsd/fwrf/sub-01/V1", "fmri_sub-01_lateral": "fmri/nsd/fwrf/sub-01/lateral",
    "fmri_sub-02_V1": "fmri/nsd/fwrf/sub-02/V1", "eeg_sub-01": "eeg/things_eeg_2/vit_b_32/sub-01",
    "eeg_sub-02": "eeg/things_eeg_2/vit_b_32/sub-02",
}


@pytest.fixture(scope="module")
def fixture_job(ray_cluster, ned_dir, fixture_image_folder, tmp_path_factory, torch_home):
    """Every fixture model (fMRI with a split ROI, and EEG) in one job over PNG files of the fixtures."""
    out = tmp_path_factory.mktemp("job") / "out"
    config = EncodeConfig(ned_dir=str(ned_dir), images=str(fixture_image_folder), models="all", output=str(out),
                          device="cpu", batch_size=20, shard_size=20, formats=("parquet", "npy"), cpu_threads=1,
                          vit_weights=str(torch_home / "hub" / "checkpoints" / "vit_b_32-d86f8d99.pth"))
    summary = run_encode(config)
    return config, summary, open_output(str(out))


def test_job_matches_ned_fixtures(fixture_job, fixtures):
    _, summary, output = fixture_job
    assert summary["images"] == {"total": 20, "ok": 20, "error": 0, "skipped": 0, "file": "images.parquet"}
    ids = output.images().column("image_id").to_pylist()
    for tag, mid in FIXTURE_IDS.items():
        index, values = output.responses(mid)
        assert index.tolist() == list(range(20))
        for images in ("images", "images_small"):
            rows = [i for i, name in enumerate(ids) if name.rsplit("_", 1)[0] == images]
            expected = np.load(fixtures / "expected" / f"{tag}__{images}.npy")
            figure = float(np.abs(values[rows] - expected).max() / expected.std())
            PARITY[f"{tag} x {images} (Ray job)"] = figure
            assert figure <= 1e-4, (tag, images, figure)


def test_job_equals_the_api_on_the_same_images(fixture_job, fixture_image_folder, torch_home):
    config, _, output = fixture_job
    names = output.images().column("image_id").to_pylist()
    squares = [decode_image((fixture_image_folder / n).read_bytes())[0].transpose(2, 0, 1) for n in names]
    group = ModelGroup(config.ned_dir, list(FIXTURE_IDS.values()), "cpu", config.vit_weights)
    import torch

    prepared = [group.preprocess(s[None].copy()) for s in squares]
    batch = {k: torch.cat([p[k] for p in prepared]) for k in group.inputs}  # the job's batch: all 20 images
    with torch_threads(config.cpu_threads):
        reference = group.run(batch)
    for mid in group.model_ids:
        _, values = output.responses(mid)
        assert np.abs(values - reference[mid]).max() <= 1e-6, mid
    # and through the NED-compatible API, image size by image size
    ned = NED(config.ned_dir, vit_weights=config.vit_weights)
    model = ned.get_encoding_model("fmri", "nsd", "fwrf", 1, "lateral", device="cpu")
    small = [i for i, n in enumerate(names) if n.rsplit("_", 1)[0] == "images_small"]
    with torch_threads(config.cpu_threads):
        api = ned.encode(model, np.stack([squares[i] for i in small]), return_metadata=False)
    _, job = output.responses("fmri/nsd/fwrf/sub-01/lateral")
    assert np.abs(job[small] - api).max() <= 1e-6


def test_outputs_read_with_plain_pyarrow(fixture_job):
    """No ned_ray, no Ray: the schema is plain Arrow and the npy parts line up with the Parquet rows."""
    config, _, _ = fixture_job
    script = f"""
import json, sys, glob, numpy as np, pyarrow as pa, pyarrow.parquet as pq
out = {config.output!r}
manifest = json.load(open(out + "/_manifest.json"))
part = out + "/" + manifest["models"]["eeg/things_eeg_2/vit_b_32/sub-01"]["parts"]["parquet"][0]
table = pq.read_table(part)
def kind(t):
    return f"fixed_size_list<{{t.value_type}}>[{{t.list_size}}]" if pa.types.is_fixed_size_list(t) else str(t)
print(json.dumps({{"schema": [(f.name, kind(f.type)) for f in table.schema],
                  "images": [(f.name, str(f.type)) for f in pq.read_table(out + "/images.parquet").schema],
                  "npy_equal": bool(np.array_equal(np.load(part[:-8] + ".npy").reshape(len(table), -1),
                                                   np.stack(table.column("response").to_numpy(zero_copy_only=False)))),
                  "index_equal": bool(np.array_equal(np.load(part[:-8] + ".image_index.npy"), table.column("image_index").to_numpy())),
                  "imported": sorted(m for m in ("ray", "ned_ray", "torch") if m in sys.modules)}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    info = json.loads(result.stdout)
    assert info["schema"] == [["image_index", "int64"], ["image_id", "string"], ["response", "fixed_size_list<float>[35280]"]]
    assert info["images"] == [["image_index", "int64"], ["image_id", "string"], ["status", "string"],
                              ["error", "string"], ["width", "int32"], ["height", "int32"]]
    assert info["npy_equal"] and info["index_equal"] and info["imported"] == []


def test_metadata_carries_neds_metadata_and_provenance(fixture_job, ned_dir):
    _, _, output = fixture_job
    meta = output.metadata("fmri/nsd/fwrf/sub-01/lateral")
    reference = NED(ned_dir).get_metadata("fmri", "nsd", "fwrf", 1, "lateral")
    np.testing.assert_array_equal(meta["npz"]["fmri/roi_mask_volume"], reference["fmri"]["roi_mask_volume"])
    files = meta["json"]["provenance"]["files"]
    assert [f["file"].rsplit("/", 1)[1] for f in files] == [
        "weights_sub-01_roi-lateral_split-1.pt", "weights_sub-01_roi-lateral_split-2.pt", "metadata_sub-01_roi-lateral.npy"]
    assert all(len(f["sha256"]) == 64 for f in files)
    eeg = output.metadata("eeg/things_eeg_2/vit_b_32/sub-02")["json"]
    assert eeg["ned_metadata"]["eeg"]["ch_names"][:2] == ["Fp1", "F3"]
    assert eeg["provenance"]["files"][-1]["file"].endswith("vit_b_32-d86f8d99.pth")


def test_npy_and_parquet_inputs(ray_cluster, demo_dir, fixture_images, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = fixture_images["images_small"]
    np.save(tmp_path / "stimuli.npy", images)
    encoded = []
    for i, image in enumerate(images):
        path = tmp_path / f"s{i}.png"
        Image.fromarray(image.transpose(1, 2, 0)).save(path)
        encoded.append(path.read_bytes())
    pq.write_table(pa.table({"image_id": [f"stim-{i}" for i in range(4)], "image": encoded}), tmp_path / "stimuli.parquet")
    model = "fmri/nsd/fwrf/sub-02/V1"
    results = {}
    for name in ("stimuli.npy", "stimuli.parquet"):
        out = tmp_path / f"out_{name}"
        run_encode(EncodeConfig(ned_dir=str(demo_dir), images=str(tmp_path / name), models=model, output=str(out),
                                device="cpu", cpu_threads=1))
        results[name] = open_output(str(out))
    with torch_threads(1):
        reference = ModelGroup(demo_dir, [model], "cpu").encode(images)
    for output in results.values():
        np.testing.assert_allclose(output.responses(model)[1], reference[next(iter(reference))], rtol=0, atol=1e-6)
    assert results["stimuli.parquet"].images().column("image_id").to_pylist() == [f"stim-{i}" for i in range(4)]


def test_non_square_images_center_crop_or_error(ray_cluster, demo_dir, tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    wide = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    Image.fromarray(wide).save(folder / "wide.png")
    Image.fromarray(wide[:, 15:75]).save(folder / "square.png")
    model = "fmri/nsd/fwrf/sub-01/V1"
    crop = open_output(run_encode(EncodeConfig(str(demo_dir), str(folder), model, str(tmp_path / "crop"), device="cpu"))
                       and str(tmp_path / "crop"))
    _, values = crop.responses(model)
    # square.png is wide.png's center crop: same input, two rows of one batch (float32 GEMM blocking
    # can differ between rows at ~1e-6; a wrong crop differs by orders of magnitude more)
    np.testing.assert_allclose(values[0], values[1], rtol=0, atol=1e-5)
    summary = run_encode(EncodeConfig(str(demo_dir), str(folder), model, str(tmp_path / "strict"), device="cpu",
                                      non_square="error"))
    assert summary["images"]["ok"] == 1 and summary["images"]["error"] == 1
    images = open_output(str(tmp_path / "strict")).images().to_pylist()
    assert images[1]["image_id"] == "wide.png" and images[1]["status"] == "error"
    assert images[1]["error"] == "non-square image 90x60 (rejected by --non-square error)"
    assert open_output(str(tmp_path / "strict")).responses(model)[0].tolist() == [0]


def test_reduced_precision_is_measured_and_recorded(ray_cluster, demo_dir, tmp_path):
    from ned_ray.demo import write_demo_images

    write_demo_images(tmp_path / "imgs")  # 14 images, shards of 5 -> 3 blocks, 3 checked images per model
    models = "fmri/nsd/fwrf/sub-01/V1,eeg/things_eeg_2/vit_b_32/sub-02"
    runs = {}
    for precision in ("fp32", "bf16"):
        config = EncodeConfig(str(demo_dir), str(tmp_path / "imgs"), models, str(tmp_path / precision), device="cpu",
                              precision=precision, shard_size=5, cpu_threads=1)
        runs[precision] = (run_encode(config), open_output(config.output))
    assert "precision" not in runs["fp32"][0]
    record = runs["bf16"][0]["precision"]
    assert record == runs["bf16"][1].manifest["precision"] and record["mode"] == "bf16"
    for mid in models.split(","):
        _, exact = runs["fp32"][1].responses(mid)
        _, reduced = runs["bf16"][1].responses(mid)
        entry = record["models"][mid]
        assert entry["checked_images"] == 3
        # the recorded figure is the true deviation on the checked images (the first of each shard)
        true = float(np.abs(reduced[[0, 5, 10]] - exact[[0, 5, 10]]).max())
        assert entry["max_abs_deviation"] == pytest.approx(true, rel=1e-5)
        assert 0 < entry["max_abs_deviation"] <= float(np.abs(reduced - exact).max())
        assert entry["max_deviation_over_std"] == pytest.approx(entry["max_abs_deviation"] / entry["fp32_std"])
    # precision changes the numbers, so it is part of the output's identity
    with pytest.raises(OutputExistsError, match="differs in: precision"):
        run_encode(EncodeConfig(str(demo_dir), str(tmp_path / "imgs"), models, str(tmp_path / "bf16"), device="cpu",
                                shard_size=5, cpu_threads=1))


def test_rerun_resumes_and_other_options_are_refused(ray_cluster, demo_dir, tmp_path):
    from ned_ray.demo import write_demo_images

    write_demo_images(tmp_path / "imgs")
    config = EncodeConfig(str(demo_dir), str(tmp_path / "imgs"), "fmri/nsd/fwrf/sub-01/V1", str(tmp_path / "out"),
                          device="cpu", shard_size=4)
    first = run_encode(config)
    assert first["run"]["encoded_images"] == 14 and first["chunks"] == 4
    again = run_encode(config)
    assert again["run"]["encoded_images"] == 0 and again["run"]["skipped_images"] == 14
    other = EncodeConfig(**{**config.__dict__, "models": "fmri/nsd/fwrf/sub-02/V1"})
    with pytest.raises(OutputExistsError, match="holds 1 model.s. that --models leaves out"):  # models are added, not swapped
        run_encode(other)
    other.overwrite = True
    assert run_encode(other)["run"]["encoded_images"] == 14
    # the same options with other weights at the same paths: refused too
    changed = tmp_path / "ned"
    shutil.copytree(demo_dir, changed)
    first_dir = EncodeConfig(**{**config.__dict__, "ned_dir": str(changed), "output": str(tmp_path / "out2")})
    run_encode(first_dir)
    weights = changed / NedDir(str(changed)).fwrf_weights(1, "V1")[0]
    swapped = (changed / NedDir(str(changed)).fwrf_weights(2, "V1")[0]).read_bytes()
    weights.write_bytes(swapped)
    with pytest.raises(OutputExistsError, match="other weights for fmri/nsd/fwrf/sub-01/V1 .*weights_sub-01_roi-V1.pt changed"):
        run_encode(first_dir)


def test_clear_errors_before_any_work(ray_cluster, demo_dir, tmp_path):
    with pytest.raises(NoImagesError, match="no images found in"):
        (tmp_path / "empty").mkdir()
        run_encode(EncodeConfig(str(demo_dir), str(tmp_path / "empty"), "all", str(tmp_path / "o1")))
    with pytest.raises(ValueError, match="no model matches 'fmri/nsd/fwrf/sub-05/V1'"):
        run_encode(EncodeConfig(str(demo_dir), str(tmp_path), "fmri/nsd/fwrf/sub-05/V1", str(tmp_path / "o2")))
    with pytest.raises(IncompleteOutputError, match="no _manifest.json"):
        open_output(str(tmp_path))


def test_selections_equal_slicing_the_full_output(demo_output, demo_dir, tmp_path):
    from ned_ray.demo import write_demo_images

    full = open_output(str(demo_output))
    eeg, fmri = "eeg/things_eeg_2/vit_b_32/sub-01", "fmri/nsd/fwrf/sub-01/lateral"
    ncsnr = full.metadata(fmri)["npz"]["fmri/ncsnr"]
    threshold = float(np.quantile(ncsnr, 0.6))
    write_demo_images(tmp_path / "imgs")
    config = EncodeConfig(str(demo_dir), str(tmp_path / "imgs"), f"{eeg},{fmri}", str(tmp_path / "sel"), device="cpu",
                          channels="Oz,O1,Pz", times="0.1:0.3", min_ncsnr=threshold, shard_size=5, cpu_threads=1)
    run_encode(config)
    sel = open_output(config.output)
    coords = full.coords(eeg)
    channels = [list(coords["channel"]).index(c) for c in ("Oz", "O1", "Pz")]
    times = np.flatnonzero((coords["time"] >= 0.1 - 1e-9) & (coords["time"] <= 0.3 + 1e-9))
    expected_eeg = full.responses(eeg)[1][:, :, channels][..., times]
    expected_fmri = full.responses(fmri)[1][:, ncsnr > threshold]
    assert sel.shape(eeg) == (4, 3, len(times)) and sel.shape(fmri) == (int((ncsnr > threshold).sum()),)
    np.testing.assert_allclose(sel.responses(eeg)[1], expected_eeg, rtol=0, atol=1e-6)
    np.testing.assert_allclose(sel.responses(fmri)[1], expected_fmri, rtol=0, atol=1e-6)
    # the metadata records the selection, and xarray coordinates follow it
    meta = sel.metadata(eeg)["json"]
    assert meta["selection"]["channels"] == ["Oz", "O1", "Pz"] and len(meta["selection"]["times"]) == len(times)
    assert meta["selection"]["asked"] == {"channels": ["Oz", "O1", "Pz"], "times": [0.1, 0.3], "min_ncsnr": threshold}
    assert list(sel.to_xarray(eeg).coords["channel"].values) == ["Oz", "O1", "Pz"]
    np.testing.assert_array_equal(sel.to_xarray(fmri).coords["voxel"].values, np.flatnonzero(ncsnr > threshold))
    assert sel.metadata(fmri)["json"]["selection"]["voxels"]["count"] == int((ncsnr > threshold).sum())
    # the NIfTI export puts the kept voxels where they belong, and zeros where they were dropped
    import nibabel as nib

    volume = np.asarray(nib.load(sel.to_nifti(fmri, str(tmp_path / "sel.nii.gz"), images=[2])).dataobj)[..., 0]
    mask = full.metadata(fmri)["npz"]["fmri/roi_mask_volume"]
    expected = np.where(ncsnr > threshold, full.responses(fmri)[1][2], 0)
    np.testing.assert_allclose(volume[mask], expected, rtol=0, atol=1e-6)
