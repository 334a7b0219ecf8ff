"""EEG: many subjects share one backbone pass and one code; BERG files; offline ViT weights."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch

from ned_ray.demo import demo_images, make_demo_models
from ned_ray.ids import ModelId
from ned_ray.modeldir import VIT_IN_NED_DIR, MissingFileError, NedDir, berg_files
from ned_ray.models import vit_eeg
from ned_ray.models.group import ModelGroup
from ned_ray.preprocess import vit_input, vit_normalise


def _encode(ned: NedDir, subjects, u8) -> torch.Tensor:
    """(B, S, 4, 63, 140) of NED's EEG heads of ``subjects`` on one backbone pass."""
    heads = vit_eeg.load_eeg(ned, subjects)
    vit = vit_eeg.load_vit(vit_eeg.find_vit_weights(None, ned), ned)
    with torch.inference_mode():
        return heads(vit_eeg.vit_features(vit, vit_normalise(u8)))


def test_many_subjects_equal_one_at_a_time(ned_dir, fixture_images, vit_cache):
    ned = NedDir(str(ned_dir))
    u8 = vit_input(fixture_images["images_small"])
    both = _encode(ned, [2, 1], u8)
    assert tuple(both.shape) == (4, 2, 4, 63, 140)
    for index, subject in enumerate((1, 2)):
        alone = _encode(ned, [subject], u8)[:, 0]
        torch.testing.assert_close(both[:, index], alone, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def ten_subjects(tmp_path_factory):
    path = tmp_path_factory.mktemp("eeg10") / "ned_dir"
    return make_demo_models(str(path), fmri_subjects=(), eeg_subjects=range(1, 11))


def test_ten_subjects_run_the_backbone_and_the_code_once_per_batch(ten_subjects):
    group = ModelGroup(ten_subjects, [f"eeg/things_eeg_2/vit_b_32/sub-{s:02d}" for s in range(1, 11)], "cpu")
    calls = {"backbone": 0, "projection": 0, "readout": 0}
    hooks = [group.shared.networks["vit_b_32"].vit.conv_proj.register_forward_hook(lambda *a: calls.__setitem__("backbone", calls["backbone"] + 1))]
    hooks += [m.register_forward_hook(lambda *a: calls.__setitem__("projection", calls["projection"] + 1)) for m in group.shared.eeg.projections]
    hooks += [m.register_forward_hook(lambda *a: calls.__setitem__("readout", calls["readout"] + 1)) for m in group.shared.eeg.readouts]
    images = demo_images(64)
    responses = group.encode(images, batch_size=5)  # 14 images -> 3 batches
    for hook in hooks:
        hook.remove()
    assert calls == {"backbone": 3, "projection": 3, "readout": 3}
    assert len(responses) == 10 and all(r.shape == (14, 4, 63, 140) for r in responses.values())
    seventh = group.model_ids[6]
    single = ModelGroup(ten_subjects, [seventh], "cpu").encode(images)
    np.testing.assert_allclose(responses[seventh], single[seventh], rtol=0, atol=1e-6)


def _berg_dir(tmp_path, ned_dir, per_rep_pca: bool) -> NedDir:
    """A BERG-style directory built from the fixture's NED-format weights of subject 1."""
    src = NedDir(str(ned_dir))
    scaler, pca = src.load_npy(src.EEG_SCALER), src.load_npy(src.EEG_PCA)
    regs = src.load_npy(src.eeg_regression(1))
    weights = {"scaler_param": scaler, "reg_param": regs,
               "pca_param": {f"rep-{r}": pca for r in range(1, 5)} if per_rep_pca else pca}
    root = tmp_path / ("berg_rep" if per_rep_pca else "berg")
    for rel, obj in zip(berg_files(ModelId.parse("eeg/things_eeg_2/vit_b_32/sub-01")), (weights, src.load_npy(src.eeg_metadata(1)))):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, np.array(obj, dtype=object), allow_pickle=True)
        (root / rel).write_bytes(buffer.getvalue())
    out = NedDir(str(root))
    assert out.entry("eeg/things_eeg_2/vit_b_32/sub-01").format == "berg"
    return out


@pytest.mark.parametrize("per_rep_pca", [False, True])
def test_berg_per_subject_file_gives_neds_numbers(tmp_path, ned_dir, fixtures, fixture_images, vit_cache, per_rep_pca):
    berg = _berg_dir(tmp_path, ned_dir, per_rep_pca)
    group = ModelGroup(berg, ["eeg/things_eeg_2/vit_b_32/sub-01"], "cpu")
    assert group.shared.eeg is None and group.shared.stack is not None  # a BERG head
    ours = group.encode(fixture_images["images_small"])[group.model_ids[0]]
    expected = np.load(fixtures / "expected" / "eeg_sub-01__images_small.npy")
    assert np.abs(ours - expected).max() <= 1e-4 * expected.std()


def test_vit_weights_are_never_downloaded_and_the_error_says_where_to_put_them(tmp_path, ned_dir, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    monkeypatch.delenv("NED_RAY_VIT_WEIGHTS", raising=False)
    with pytest.raises(MissingFileError) as info:
        ModelGroup(NedDir(str(ned_dir)), ["eeg/things_eeg_2/vit_b_32/sub-01"], "cpu")
    message = str(info.value)
    assert str(tmp_path / "empty_home" / "hub" / "checkpoints" / "vit_b_32-d86f8d99.pth") in message
    assert "--vit-weights" in message and "NED_RAY_VIT_WEIGHTS" in message
    with pytest.raises(MissingFileError, match="nope.pth"):
        vit_eeg.find_vit_weights(str(tmp_path / "nope.pth"))


def test_vit_weights_lookup_order(tmp_path, demo_dir, vit_cache, monkeypatch):
    ned = NedDir(str(demo_dir))
    in_ned = ned.uri(VIT_IN_NED_DIR)
    assert vit_eeg.find_vit_weights(ned=ned) == in_ned  # the NED directory's backbone slot
    assert vit_eeg.find_vit_weights() == str(vit_cache)  # torch hub cache
    other = tmp_path / "elsewhere.pth"
    shutil.copy(vit_cache, other)
    monkeypatch.setenv("NED_RAY_VIT_WEIGHTS", str(other))
    assert vit_eeg.find_vit_weights(ned=ned) == str(other)  # the environment variable
    assert vit_eeg.find_vit_weights(in_ned, ned=ned) == in_ned  # an explicit path wins
    real = vit_eeg.load_vit(str(vit_cache))
    assert len(real.encoder.layers) == 12 and real.hidden_dim == 768 and real.encoder.layers[0].num_heads == 12


def test_a_file_that_is_no_vit_is_rejected(tmp_path):
    path = tmp_path / "not_vit.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not_vit.pth: not a torchvision ViT state dict"):
        vit_eeg.load_vit(str(path))


def test_folded_float32_projection_keeps_neds_numbers(ned_dir, fixtures, fixture_images, vit_cache):
    """The scaler folded into the PCA, one float32 product (what runs on GPUs): within NED's tolerance."""

    from ..conftest import PARITY

    group = ModelGroup(ned_dir, ["eeg/things_eeg_2/vit_b_32/sub-01", "eeg/things_eeg_2/vit_b_32/sub-02"], "cpu",
                       projection="float32")
    assert group.projection == "float32" and group.shared.eeg.projections[0].components.dtype == torch.float32
    assert ModelGroup(ned_dir, ["eeg/things_eeg_2/vit_b_32/sub-01"], "cpu").projection == "float64"  # auto on CPU
    for images in ("images", "images_227", "images_small"):
        out = group.encode(fixture_images[images])
        for subject in (1, 2):
            expected = np.load(fixtures / "expected" / f"eeg_sub-0{subject}__{images}.npy")
            mid = group.model_ids[subject - 1]
            figure = float(np.abs(out[mid] - expected).max() / expected.std())
            PARITY[f"eeg_sub-0{subject} x {images} (float32 projection)"] = figure
            assert figure <= 1e-4, (subject, images, figure)
