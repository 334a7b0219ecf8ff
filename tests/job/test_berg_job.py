"""BERG's models in the Ray job: one job over one folder of images runs NED's fwrf and EEG models and
all five BERG families (one ViT pass for every ViT model), gives BERG's numbers for every fixture
case (selections through ``--selection``), equals each model run alone, and labels every axis."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ned_ray import open_output
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.models.group import ModelGroup

from ..conftest import berg_selection
from .conftest import check_berg_cases, torch_threads

pytestmark = pytest.mark.slow

EEG = "encoding_models/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32"
FSAVG = "encoding_models/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32"
# fixture case -> (ned-ray model ids in the mixed directory, the selection comes from the case)
FULL = {  # job 1: no selection
    "eeg_sub-01": ["eeg/things_eeg_2/vit_b_32/sub-03"],
    "fsavg_sub-01": ["fmri/nsd_fsaverage/vit_b_32/sub-01/lh", "fmri/nsd_fsaverage/vit_b_32/sub-01/rh"],
    "thfmri_sub-01": ["fmri/things_fmri_1/vit_b_32/sub-01"],
    "meg_P1_full": ["meg/things_meg_1/vit_b_32/sub-01/full"],
    "tvsd_F": ["utah_array/tvsd/vit_b_32/sub-F"],
}
SELECTED = {  # job 2: BERG's selections, one model each (the EEG and fsaverage files are linked twice)
    "eeg_sub-01_sel": ["eeg/things_eeg_2/vit_b_32/sub-04"],
    "fsavg_sub-01_V1v": ["fmri/nsd_fsaverage/vit_b_32/sub-01/lh", "fmri/nsd_fsaverage/vit_b_32/sub-01/rh"],
    "fsavg_sub-01_vertices": ["fmri/nsd_fsaverage/vit_b_32/sub-02/lh", "fmri/nsd_fsaverage/vit_b_32/sub-02/rh"],
    "thfmri_sub-01_rois": ["fmri/things_fmri_1/vit_b_32/sub-01"],
    "meg_P1_split2_sel": ["meg/things_meg_1/vit_b_32/sub-01/split2"],
    "tvsd_F_V4": ["utah_array/tvsd/vit_b_32/sub-F"],
}
NED_MODELS = ["fmri/nsd/fwrf/sub-01/V1", "fmri/nsd/fwrf/sub-01/lateral", "eeg/things_eeg_2/vit_b_32/sub-01"]


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory, ned_dir: Path, berg_dir: Path, berg_eeg_file: Path) -> Path:
    """NED's fixture models and BERG's, in one directory (files linked, not copied): BERG's EEG file
    as subjects 3 and 4 beside NED's EEG subjects 1-2, its fsaverage file as subjects 1 and 2."""
    root = tmp_path_factory.mktemp("mixed") / "models"
    for family in ("modality-fmri/train_dataset-nsd", "modality-eeg/train_dataset-things_eeg_2"):
        for path in (ned_dir / "encoding_models" / family).rglob("*.np[yz]"):
            _link(path, root / path.relative_to(ned_dir))
        for path in (ned_dir / "encoding_models" / family).rglob("*.pt"):
            _link(path, root / path.relative_to(ned_dir))
    for family in ("modality-fmri/train_dataset-things_fmri_1", "modality-meg", "modality-utah_array"):
        for path in (berg_dir / "encoding_models" / family).rglob("*.npy"):
            _link(path, root / path.relative_to(berg_dir))
    for subject in (1, 2):
        _link(berg_dir / FSAVG / "encoding_models_weights" / "weights_subject-01.npy",
              root / FSAVG / "encoding_models_weights" / f"weights_subject-0{subject}.npy")
        _link(berg_dir / FSAVG / "metadata" / "metadata_subject-01.npy",
              root / FSAVG / "metadata" / f"metadata_subject-0{subject}.npy")
    for subject in (3, 4):
        _link(berg_eeg_file, root / EEG / "encoding_models_weights" / f"weights_subject-0{subject}.npy")
        _link(berg_dir / EEG / "metadata" / "metadata_subject-01.npy",
              root / EEG / "metadata" / f"metadata_subject-0{subject}.npy")
    return root


def _job(mixed_dir, images, out, torch_home, models, selection=None) -> tuple[EncodeConfig, dict]:
    config = EncodeConfig(ned_dir=str(mixed_dir), images=str(images), models=",".join(models), output=str(out),
                          device="cpu", shard_size=20, cpu_threads=1, berg_selection=selection or {},
                          vit_weights=str(torch_home / "hub" / "checkpoints" / "vit_b_32-d86f8d99.pth"))
    return config, run_encode(config)


def _check_cases(output, cases: dict[str, list[str]], berg_fixtures) -> None:
    check_berg_cases(output, cases, berg_fixtures)


@pytest.fixture(scope="module")
def mixed_job(ray_cluster, mixed_dir, fixture_image_folder, tmp_path_factory, torch_home):
    models = NED_MODELS + [m for ms in FULL.values() for m in ms]
    config, summary = _job(mixed_dir, fixture_image_folder, tmp_path_factory.mktemp("mixed_job") / "out",
                           torch_home, models)
    return config, summary, open_output(config.output)


def test_one_job_runs_every_family_with_one_vit_pass(mixed_job):
    _, summary, output = mixed_job
    assert summary["images"]["ok"] == 20 and sorted(output.models) == sorted(
        NED_MODELS + [m for ms in FULL.values() for m in ms])
    pools = summary["run"]["model_groups"]
    vit = [p for p in pools if any("vit_b_32" in m for m in p)]
    assert len(vit) == 1 and len(vit[0]) == 7  # NED's EEG subject and the 6 BERG models: one ViT pass


def test_berg_parity_through_the_job(mixed_job, berg_fixtures, fixtures):
    _, _, output = mixed_job
    _check_cases(output, FULL, berg_fixtures)
    ids = output.images().column("image_id").to_pylist()
    for tag, mid in (("fmri_sub-01_V1", NED_MODELS[0]), ("eeg_sub-01", NED_MODELS[2])):  # NED's, in the same job
        rows = [i for i, name in enumerate(ids) if name.rsplit("_", 1)[0] == "images"]
        want = np.load(fixtures / "expected" / f"{tag}__images.npy")
        assert float(np.abs(output.responses(mid)[1][rows] - want).max() / want.std()) <= 1e-4


def test_the_mixed_job_equals_each_model_alone(mixed_job, fixture_image_folder):
    from ned_ray.job.decode import decode_image

    config, _, output = mixed_job
    names = output.images().column("image_id").to_pylist()
    sets = {prefix: [i for i, n in enumerate(names) if n.rsplit("_", 1)[0] == prefix] for prefix in ("images", "images_small")}
    for mid in output.models:
        got = output.responses(mid)[1]
        group = ModelGroup(config.ned_dir, [mid], "cpu", config.vit_weights)
        for rows in sets.values():  # each image size on its own (the two sets cannot be stacked)
            images = np.stack([decode_image((fixture_image_folder / names[i]).read_bytes())[0].transpose(2, 0, 1)
                               for i in rows])
            with torch_threads(1):
                want = group.encode(images, batch_size=20)[group.model_ids[0]]
            assert got[rows].shape == want.shape
            assert float(np.abs(got[rows] - want).max()) <= 1e-5 * max(1.0, float(want.std())), mid


def test_berg_selections_through_the_job(ray_cluster, mixed_dir, fixture_image_folder, tmp_path, torch_home,
                                         berg_fixtures):
    selection = {}
    for case, models in SELECTED.items():
        chosen = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in berg_selection(berg_fixtures, case).items()}
        for mid in models:
            selection[mid] = chosen
    config, summary = _job(mixed_dir, fixture_image_folder, tmp_path / "out", torch_home,
                           [m for ms in SELECTED.values() for m in ms], selection)
    output = open_output(config.output)
    _check_cases(output, SELECTED, berg_fixtures)
    meg = output.coords("meg/things_meg_1/vit_b_32/sub-01/split2")
    assert list(meg) == ["sensor", "time"] and len(meg["sensor"]) == 41 and len(meg["time"]) == 160
    eeg = output.coords("eeg/things_eeg_2/vit_b_32/sub-04")
    assert list(eeg["channel"]) == ["Oz", "O1", "O2", "POz", "Pz"] and len(eeg["time"]) == 100
    tvsd = output.coords("utah_array/tvsd/vit_b_32/sub-F")
    assert list(tvsd) == ["electrode", "time"] and len(tvsd["electrode"]) == 192 and tvsd["time"][0] == pytest.approx(0.0)
    assert output.coords("fmri/nsd_fsaverage/vit_b_32/sub-01/rh")["vertex"].shape == (272,)
    meta = output.metadata("fmri/things_fmri_1/vit_b_32/sub-01")["json"]
    assert meta["selection"]["berg"] == {"roi": ["V1", "IT"]} and meta["berg_model"]["id"] == "fmri-things_fmri_1-vit_b_32"
    # a rerun with the same selections resumes (nothing to do); other selections are refused
    assert run_encode(config)["run"]["encoded_images"] == 0
    other = EncodeConfig(**{**config.__dict__, "berg_selection": {"meg/*": {"region": ["Frontal"]}}})
    with pytest.raises(Exception, match="other options"):
        run_encode(other)


def test_bad_selections_fail_before_anything_runs(mixed_dir, tmp_path, torch_home, fixture_image_folder):
    from ned_ray.models.vit_heads import SelectionError

    def attempt(selection, models="meg/*"):
        config = EncodeConfig(ned_dir=str(mixed_dir), images=str(fixture_image_folder), models=models,
                              output=str(tmp_path / "out"), device="cpu", berg_selection=selection)
        return run_encode(config)

    with pytest.raises(SelectionError, match=r"Invalid region\(s\): \['Occ'\]. Valid regions are"):
        attempt({"meg/*": {"region": ["Occ"]}})
    with pytest.raises(SelectionError, match="Invalid selection key: 'chans'. Valid keys are"):
        attempt({"meg/*": {"chans": [1]}})
    with pytest.raises(SelectionError, match="NED's models"):
        attempt({"fmri/nsd/fwrf/*": {"roi": ["V1"]}}, models="fmri/nsd/fwrf/sub-01/V1")
    with pytest.raises(ValueError, match="no model matches 'tvsd/x'"):
        attempt({"tvsd/x": {"roi": ["V1"]}})
    assert not os.path.exists(tmp_path / "out")
