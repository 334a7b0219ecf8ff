"""BERG's ViT-B/32 heads: parity with BERG's own outputs for every fixture case (but EEG), all heads
computed from one ViT pass in one stacked projection; selections as BERG makes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ned_ray.models.vit_eeg import load_vit, vit_features
from ned_ray.models.vit_heads import HeadStack, SelectionError, read_head
from ned_ray.preprocess import vit_input, vit_normalise
from ned_ray.safeload import load_npy_dict

from ..conftest import berg_selection

MODELS = "encoding_models/modality-{}/model-vit_b_32"
FILES = {  # name -> (family, folder, weights, metadata)
    "fsaverage": ("fsaverage", "fmri/train_dataset-nsd_fsaverage", "weights_subject-01.npy", "metadata_subject-01.npy"),
    "things_fmri": ("things_fmri", "fmri/train_dataset-things_fmri_1", "weights_sub-01.npy", "metadata_sub-01.npy"),
    "meg_full": ("meg", "meg/train_dataset-things_meg_1", "weights_P1_full.npy", "metadata_P1.npy"),
    "meg_split2": ("meg", "meg/train_dataset-things_meg_1", "weights_P1_split2.npy", "metadata_P1.npy"),
    "tvsd": ("tvsd", "utah_array/train_dataset-tvsd", "weights_monkeyF.npy", "metadata_monkeyF.npy"),
}
CASES = {  # fixture case -> (files, images)
    "fsavg_sub-01": ("fsaverage", "images_small"), "fsavg_sub-01_V1v": ("fsaverage", "images"),
    "fsavg_sub-01_vertices": ("fsaverage", "images"), "thfmri_sub-01": ("things_fmri", "images_small"),
    "thfmri_sub-01_rois": ("things_fmri", "images"), "meg_P1_full": ("meg_full", "images_small"),
    "meg_P1_split2_sel": ("meg_split2", "images"), "tvsd_F": ("tvsd", "images_small"), "tvsd_F_V4": ("tvsd", "images"),
}


def _load(path: Path):
    with open(path, "rb") as fh:
        return load_npy_dict(fh, str(path))


def _files(berg_dir: Path, name: str):
    family, folder, weights, metadata = FILES[name]
    root = berg_dir / MODELS.format(folder)
    return family, _load(root / "encoding_models_weights" / weights), _load(root / "metadata" / metadata)


@pytest.fixture(scope="module")
def features(berg_fixtures, vit_weights_file) -> dict[str, torch.Tensor]:
    vit = load_vit(str(vit_weights_file))
    with torch.inference_mode():
        return {name: vit_features(vit, vit_normalise(vit_input(np.load(berg_fixtures / f"{name}.npy"))))
                for name in ("images", "images_small")}


@pytest.fixture(scope="module")
def vit_weights_file(torch_home) -> Path:
    return torch_home / "hub" / "checkpoints" / "vit_b_32-d86f8d99.pth"


def test_every_fixture_case_from_one_stack(berg_dir, berg_fixtures, features):
    loaded = {name: _files(berg_dir, name) for name in FILES}
    heads = {case: read_head(loaded[files][0], loaded[files][1], loaded[files][2], berg_selection(berg_fixtures, case), case)
             for case, (files, _) in CASES.items()}
    stack = HeadStack(heads)  # 9 heads of 4 families: one projection product for all
    # one projection per weight file (selections of one file share theirs), every head in one product
    one_per_file = ("fsavg_sub-01", "thfmri_sub-01", "meg_P1_full", "meg_P1_split2_sel", "tvsd_F")
    assert stack.width == sum(heads[case].k for case in one_per_file) and len(stack.blocks) == 1
    worst = 0.0
    for images in ("images", "images_small"):
        out = stack(features[images])
        for case, (files, case_images) in CASES.items():
            if case_images != images:
                continue
            path = berg_fixtures / "expected" / f"{case}__{images}"
            expected = dict(np.load(f"{path}.npz")) if FILES[files][0] == "fsaverage" else {"": np.load(f"{path}.npy")}
            assert out[case].keys() == expected.keys()
            for part, want in expected.items():
                got = out[case][part].numpy()
                assert got.dtype == np.float32 and got.shape == want.shape, (case, part, got.shape, want.shape)
                deviation = float(np.abs(got - want).max() / want.std())
                assert deviation <= 1e-4, (case, part, deviation)
                worst = max(worst, deviation)
    assert worst > 0  # a real comparison (not all zeros)


@pytest.mark.slow
def test_eeg_cases_with_four_pcas_read_through_the_restricted_unpickler(berg_eeg_file, berg_fixtures, features):
    """BERG's per-subject EEG file (a PCA per repetition, pickled scikit-learn objects, read without
    scikit-learn); the full model and a channel/time selection share one folded projection."""
    weights = _load(berg_eeg_file)
    meta = _load(berg_eeg_file.parents[1] / "metadata" / "metadata_subject-01.npy")
    heads = {"eeg_sub-01": read_head("eeg", weights, meta, {}, berg_eeg_file.name),
             "eeg_sub-01_sel": read_head("eeg", weights, meta, berg_selection(berg_fixtures, "eeg_sub-01_sel"), berg_eeg_file.name)}
    del weights
    stack = HeadStack(heads)
    assert stack.width == 4 * 250  # folded once for both heads
    for images, cases in (("images", ("eeg_sub-01", "eeg_sub-01_sel")), ("images_small", ("eeg_sub-01",))):
        out = stack(features[images])
        for case in cases:
            want = np.load(berg_fixtures / "expected" / f"{case}__{images}.npy")
            got = out[case][""].numpy()
            assert got.shape == want.shape and float(np.abs(got - want).max() / want.std()) <= 1e-4, case


def test_selections_equal_slicing_the_full_output(berg_dir, features):
    family, weights, meta = _files(berg_dir, "meg_full")
    full = read_head(family, weights, meta)
    regions = np.asarray(meta["sensors"]["sensor_regions"]).astype(str)
    mask = np.zeros(281, int)
    mask[[5, 7, 100]] = 1
    picked = read_head(family, weights, meta, {"region": ["Occipital"], "timepoints": mask})
    out = HeadStack({"full": full, "picked": picked})(features["images_small"])
    sensors = np.flatnonzero(regions == "Occipital")
    np.testing.assert_allclose(out["picked"][""].numpy(), out["full"][""].numpy()[:, sensors][:, :, [5, 7, 100]],
                               rtol=0, atol=1e-5)


def test_bad_selections_say_what_is_valid(berg_dir):
    family, weights, meta = _files(berg_dir, "fsaverage")
    with pytest.raises(SelectionError, match=r"Invalid selection key: 'rois'. Valid keys are: \['lh_vertices'"):
        read_head(family, weights, meta, {"rois": "V1v"})
    with pytest.raises(SelectionError, match="Invalid ROI: 'V7'. Valid ROIs are: .*'V1d'"):
        read_head(family, weights, meta, {"roi": "V7"})
    with pytest.raises(SelectionError, match="ROI parameter must be a string"):
        read_head(family, weights, meta, {"roi": ["V1v"]})
    family, weights, meta = _files(berg_dir, "tvsd")
    with pytest.raises(SelectionError, match=r"Invalid ROI\(s\): \['V2'\]. Valid ROIs are: \['V1', 'V4', 'IT'\]"):
        read_head(family, weights, meta, {"roi": ["V2"]})
    with pytest.raises(SelectionError, match="timepoints must have exactly 300 elements"):
        read_head(family, weights, meta, {"timepoints": np.ones(140, int)})
    with pytest.raises(SelectionError, match="must be binary"):
        read_head(family, weights, meta, {"electrodes": np.full(1024, 2)})


def test_berg_rules_for_empty_and_repeated_selections(berg_dir):
    family, weights, meta = _files(berg_dir, "things_fmri")
    rois = meta["roi"]
    twice = read_head(family, weights, meta, {"roi": ["V1", "V1"]})  # duplicates kept, in order
    assert twice.parts[""] == (2 * len(rois["V1"]),)
    assert read_head(family, weights, meta, {}).parts[""] == (211_339,)  # nothing asked: every voxel
    family, weights, meta = _files(berg_dir, "meg_full")
    sensors = read_head(family, weights, meta, {"sensors": ["MZO"], "region": ["Occipital"]}).selection["sensors"]
    assert list(sensors) == sorted(set(sensors))  # a union, sorted


def test_a_plain_array_in_place_of_the_weights_is_one_clear_error(berg_dir):
    _, _, meta = _files(berg_dir, "tvsd")
    with pytest.raises(ValueError, match="weights_monkeyF.npy: expected a dict of scaler_param"):
        read_head("tvsd", np.zeros(3), meta, where="weights_monkeyF.npy")
    with pytest.raises(ValueError, match="unknown BERG model family 'ecog'"):
        read_head("ecog", {}, meta)
