"""The NED-compatible API: NED's metadata structure, loaders, messages; strict where NED is silent."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

from ned_ray import NED

from .conftest import FIXTURE_MODELS


def _structure(tree: dict, indent: str = "") -> list[str]:
    """Render a metadata dict like the fixtures' expected/metadata_*.txt files."""
    lines = []
    for key, value in tree.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}/")
            lines += _structure(value, indent + "  ")
        elif isinstance(value, np.ndarray):
            lines.append(f"{indent}{key}: ndarray {tuple(value.shape)}")
        elif isinstance(value, list):
            lines.append(f"{indent}{key}: list {len(value)}")
        else:
            lines.append(f"{indent}{key}: {type(value).__name__}")
    return lines


@pytest.mark.parametrize("tag", sorted(FIXTURE_MODELS))
def test_metadata_structure_equals_neds(ned_dir, fixtures, tag):
    modality, dataset, model, subject, roi = FIXTURE_MODELS[tag]
    metadata = NED(ned_dir).get_metadata(modality, dataset, model, subject, roi)
    expected = (fixtures / "expected" / f"metadata_{tag}.txt").read_text().strip().splitlines()
    assert _structure(metadata) == [line.rstrip() for line in expected]


def test_encode_returns_metadata_by_default(ned_dir, fixture_images):
    ned = NED(ned_dir)
    model = ned.get_encoding_model("fmri", "nsd", "fwrf", 2, "V1", device="cpu")
    assert model["args"] == {"modality": "fmri", "train_dataset": "nsd", "model": "fwrf", "subject": 2, "roi": "V1"}
    assert model["nnv"] == {2: 30} and model["resize_px"] == 227
    responses, metadata = ned.encode(model, fixture_images["images_small"])
    assert responses.shape == (4, 30) and metadata["fmri"]["ncsnr"].shape == (30,)


def test_pregenerated_responses_load_lazily(ned_dir):
    ned = NED(ned_dir)
    data, metadata = ned.load_insilico_neural_responses("fmri", "nsd", "fwrf", "nsd", 1, "V1")
    assert isinstance(data, h5py.Dataset) and data.shape == (5, 48) and data.dtype == np.float32
    assert set(metadata) == {"fmri", "encoding_models", "nsd_labels"}
    eeg = ned.load_insilico_neural_responses("eeg", "things_eeg_2", "vit_b_32", "nsd", 1, return_metadata=False)
    assert eeg.shape == (5, 4, 63, 140) and np.isfinite(eeg[:2]).all()
    with h5py.File(ned_dir / ned.directory.pregenerated("eeg", "nsd", 1, None)[0], "r") as reference:
        np.testing.assert_array_equal(eeg[:], reference["synthetic_neural_responses"][:])


def test_browsing_matches_ned():
    ned = NED("/not/needed/for/browsing")
    assert ned.which_modalities() == ["fmri", "eeg"]
    assert ned.which_train_datasets("eeg") == ["things_eeg_2"]
    assert ned.which_models("fmri", "nsd") == ["fwrf"]
    assert ned.which_subjects("eeg", "things_eeg_2") == list(range(1, 11))
    assert ned.which_rois("nsd")[:3] == ["V1", "V2", "V3"] and len(ned.which_rois("nsd")) == 23
    with pytest.raises(ValueError, match=re.escape("For 'fmri' modality 'train_dataset' must be one of the following: ['nsd']")):
        ned.which_models("fmri", "things_eeg_2")


@pytest.mark.parametrize("call, error, message", [
    (lambda n: n.get_encoding_model(1, "nsd", "fwrf", 1, "V1"), TypeError, "'modality' must be of type str!"),
    (lambda n: n.get_encoding_model("meg", "nsd", "fwrf", 1, "V1"), ValueError, "'modality' value must be one of the following: ['fmri', 'eeg']!"),
    (lambda n: n.get_encoding_model("fmri", "things_eeg_2", "fwrf", 1, "V1"), ValueError, "'train_dataset' value must be one of the following: ['nsd']!"),
    (lambda n: n.get_encoding_model("fmri", "nsd", "vit_b_32", 1, "V1"), ValueError, "'model' value must be one of the following: ['fwrf']!"),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", "1", "V1"), TypeError, "'subject' must be of type int!"),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", True, "V1"), TypeError, "'subject' must be of type int!"),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", 9, "V1"), ValueError, "'subject' value must be one of the following: [1, 2, 3, 4, 5, 6, 7, 8]!"),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", 1, None), TypeError, "'roi' must be of type str!"),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", 1, "V9"), ValueError, "'roi' value must be one of the following: ['V1',"),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", 1, "V1", device="tpu"), ValueError, "'device' value must be one of the following: ['cpu', 'cuda', 'auto']!"),
    (lambda n: n.load_insilico_neural_responses("fmri", "nsd", "fwrf", "coco", 1, "V1"), ValueError, "'imageset' value must be one of the following: ['nsd', 'imagenet_val', 'things']!"),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", 3, "V1"), FileNotFoundError, "weights_sub-03_roi-V1.pt"),
])
def test_ned_error_messages(ned_dir, call, error, message):
    with pytest.raises(error) as info:
        call(NED(ned_dir))
    assert message in str(info.value)


@pytest.fixture(scope="module")
def v1(ned_dir):
    ned = NED(ned_dir)
    return ned, ned.get_encoding_model("fmri", "nsd", "fwrf", 1, "V1", device="cpu")


@pytest.mark.parametrize("images, error, message", [
    ([[0]], TypeError, "dtype uint8, got list"),
    (np.zeros((2, 3, 16, 16), np.int64), TypeError, "must have dtype uint8"),  # NED: wrong numbers for EEG
    (np.zeros((2, 3, 16, 16), np.float64), TypeError, "must have dtype uint8"),
    (np.full((2, 3, 16, 16), 256, np.int32), ValueError, r"\[0, 255\]"),
    (np.zeros((0, 3, 16, 16), np.uint8), ValueError, "is empty"),  # NED: UnboundLocalError
    (np.zeros((2, 3, 16, 12), np.uint8), ValueError, "must be squared"),
])
def test_encode_is_strict_where_ned_is_silent(v1, images, error, message):
    ned, model = v1
    with pytest.raises(error, match=message):
        ned.encode(model, images)


def test_encode_argument_checks(v1):
    ned, model = v1
    images = np.zeros((1, 3, 8, 8), np.uint8)
    with pytest.raises(TypeError, match="'return_metadata' must be of type bool!"):
        ned.encode(model, images, return_metadata=1)
    with pytest.raises(ValueError, match="'device' value must be one of the following"):
        ned.encode(model, images, device="gpu")
    with pytest.raises(TypeError, match="dict returned by get_encoding_model"):
        ned.encode("V1", images)
    single = ned.encode(model, images, return_metadata=False)
    assert single.shape == (1, 48)  # one image, and 8 px images, work as in NED
