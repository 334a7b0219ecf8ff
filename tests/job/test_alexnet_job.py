"""BERG's AlexNet models in the job: every fixture case (selections through ``--selection``) gives
BERG's numbers on Ray Data, in one job with a ViT-B/32 model (one pass per backbone, one actor pool),
and the outputs record how the untrained network was built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ned_ray import open_output
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.models.alexnet import UNTRAINED_DIGEST

from ..conftest import berg_selection
from .conftest import check_berg_cases

pytestmark = pytest.mark.slow

EEG = "encoding_models/modality-eeg/train_dataset-things_eeg_2/model-{}"
FSAVG = "encoding_models/modality-fmri/train_dataset-nsd_fsaverage/model-{}"
CASES = {  # fixture case -> the job's models (a selected case reads the same files as another subject)
    "eeg_sub-01": ["eeg/things_eeg_2/alexnet/sub-01"],
    "eeg_sub-01_sel": ["eeg/things_eeg_2/alexnet/sub-02"],
    "eegu_sub-01": ["eeg/things_eeg_2/alexnet_untrained/sub-01"],
    "fsavg_sub-01": ["fmri/nsd_fsaverage/alexnet/sub-01/lh", "fmri/nsd_fsaverage/alexnet/sub-01/rh"],
    "fsavg_sub-01_V1v": ["fmri/nsd_fsaverage/alexnet/sub-02/lh", "fmri/nsd_fsaverage/alexnet/sub-02/rh"],
    "fsavgu_sub-01_vertices": ["fmri/nsd_fsaverage/alexnet_untrained/sub-01/lh",
                               "fmri/nsd_fsaverage/alexnet_untrained/sub-01/rh"],
}
VIT = "fmri/things_fmri_1/vit_b_32/sub-01"


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, alexnet_berg_dir: Path, berg_dir: Path) -> Path:
    """The AlexNet fixture files as subject 1, and again as subject 2 (for the selected cases), beside
    BERG's ViT-B/32 THINGS-fMRI model (files linked, not copied)."""
    root = tmp_path_factory.mktemp("alexnet_models") / "berg_dir"
    for folder in (EEG, FSAVG):
        for model in ("alexnet", "alexnet_untrained"):
            src = alexnet_berg_dir / folder.format(model)
            for subject in ((1, 2) if model == "alexnet" else (1,)):
                _link(src / "encoding_models_weights" / "weights_subject-01.npy",
                      root / folder.format(model) / "encoding_models_weights" / f"weights_subject-0{subject}.npy")
                _link(src / "metadata" / "metadata_subject-01.npy",
                      root / folder.format(model) / "metadata" / f"metadata_subject-0{subject}.npy")
    for path in (berg_dir / "encoding_models/modality-fmri/train_dataset-things_fmri_1").rglob("*.npy"):
        _link(path, root / path.relative_to(berg_dir))
    return root


@pytest.fixture(scope="module")
def alexnet_job(ray_cluster, models_dir, fixture_image_folder, tmp_path_factory, torch_home, alexnet_file,
                alexnet_fixtures):
    selection = {}
    for case in ("eeg_sub-01_sel", "fsavg_sub-01_V1v", "fsavgu_sub-01_vertices"):
        chosen = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                  for k, v in berg_selection(alexnet_fixtures, case).items()}
        selection.update({mid: chosen for mid in CASES[case]})
    models = [m for ms in CASES.values() for m in ms] + [VIT]
    config = EncodeConfig(ned_dir=str(models_dir), images=str(fixture_image_folder), models=",".join(models),
                          output=str(tmp_path_factory.mktemp("alexnet_job") / "out"), device="cpu", shard_size=20,
                          cpu_threads=1, berg_selection=selection, alexnet_weights=str(alexnet_file),
                          vit_weights=str(torch_home / "hub" / "checkpoints" / "vit_b_32-d86f8d99.pth"))
    return config, run_encode(config), open_output(config.output)


def test_alexnet_parity_through_the_job(alexnet_job, alexnet_fixtures):
    _, summary, output = alexnet_job
    assert summary["images"]["ok"] == 20
    check_berg_cases(output, CASES, alexnet_fixtures)


def test_one_pool_runs_one_pass_per_backbone(alexnet_job):
    _, summary, output = alexnet_job
    groups = summary["run"]["model_groups"]
    assert len(groups) == 1 and len(groups[0]) == 10  # 9 AlexNet models and the ViT one: one actor pool
    assert VIT in output.models


def test_outputs_record_the_backbone(alexnet_job, alexnet_file):
    _, _, output = alexnet_job
    untrained = output.metadata("fmri/nsd_fsaverage/alexnet_untrained/sub-01/lh")["json"]
    record = untrained["provenance"]["files"][-1]
    assert record["state_sha256"] == UNTRAINED_DIGEST and record["torch"] and "manual_seed(20200220)" in record["file"]
    assert "untrained network BERG builds" in untrained["provenance"]["preprocessing"]
    trained = output.metadata("eeg/things_eeg_2/alexnet/sub-01")["json"]
    assert trained["provenance"]["files"][-1]["file"] == str(alexnet_file)
    assert trained["berg_model"]["id"] == "eeg-things_eeg_2-alexnet"
    assert list(output.coords("eeg/things_eeg_2/alexnet/sub-02")["channel"]) == ["Oz", "O1", "O2", "POz", "Pz"]
