"""The BERG-compatible API: BERG's numbers for every fixture case, BERG's arguments and outputs,
and clear errors where BERG fails silently."""

from __future__ import annotations

import io

import numpy as np
import pytest

from ned_ray.berg import BERG, InvalidParameterError, ModelLoadError, ModelNotFoundError, StimulusError
from ned_ray.families import BERG_IDS
from ned_ray.safeload import Attributes, load_npy_dict

from .conftest import ALEXNET_CASES, BERG_CASES, BERG_FIXTURES, PARITY, berg_expected, berg_runs, berg_selection

ALEXNET_FIXTURES = BERG_FIXTURES / "alexnet"


def _check_case(berg: BERG, berg_fixtures, case: str, images: str, expected=None, cases=BERG_CASES) -> None:
    """BERG's output of a fixture case (in ``expected``: a fixtures folder) through ned-ray's BERG API."""
    expected = expected or berg_fixtures
    model_id, kwargs = cases[case]
    model = berg.get_encoding_model(model_id, device="cpu", selection=berg_selection(expected, case) or None,
                                    **kwargs)
    got = berg.encode(model, np.load(berg_fixtures / f"{images}.npy"), show_progress=False)
    got = list(got) if isinstance(got, tuple) else [got]
    assert isinstance(berg.encode(model, np.load(berg_fixtures / "images_small.npy")[:1]),
                      tuple) == case.startswith("fsavg")  # fsaverage: the (lh, rh) tuple, as BERG
    for part, (ours, want) in enumerate(zip(got, berg_expected(expected, case, images), strict=True)):
        assert ours.dtype == np.float32 and ours.shape == want.shape, (case, ours.shape, want.shape)
        figure = float(np.abs(ours - want).max() / want.std())
        PARITY[f"BERG {model_id} {case}{'' if len(got) == 1 else ('.lh', '.rh')[part]} x {images} (API)"] = figure
        assert figure <= 1e-4, (case, images, figure)


@pytest.mark.parametrize("case,images", berg_runs(BERG_FIXTURES, eeg=False))
def test_berg_parity_through_the_api(berg_dir, berg_fixtures, vit_cache, case, images):
    _check_case(BERG(berg_dir), berg_fixtures, case, images)


@pytest.mark.slow
@pytest.mark.parametrize("case,images", berg_runs(BERG_FIXTURES, eeg=True))
def test_berg_eeg_parity_through_the_api(berg_dir, berg_eeg_file, berg_fixtures, vit_cache, case, images):
    _check_case(BERG(berg_dir), berg_fixtures, case, images)


@pytest.mark.parametrize("case,images", berg_runs(ALEXNET_FIXTURES, eeg=False) + berg_runs(ALEXNET_FIXTURES, eeg=True))
def test_alexnet_parity_through_the_api(alexnet_berg_dir, berg_fixtures, alexnet_fixtures, alexnet_weights, case, images):
    _check_case(BERG(alexnet_berg_dir), berg_fixtures, case, images, alexnet_fixtures, ALEXNET_CASES)


@pytest.mark.slow
def test_alexnet_eeg_files_with_pickled_sklearn_pcas(alexnet_berg_dir, berg_fixtures, alexnet_fixtures, tmp_path,
                                                     alexnet_weights):
    """BERG's newest creation code pickles sklearn PCA objects where its loaders read dicts (BERG
    itself fails on such files); ned-ray reads both containers, to the same numbers."""
    import shutil
    import subprocess
    import sys

    target = tmp_path / "berg_dir"
    shutil.copytree(alexnet_berg_dir / "encoding_models/modality-eeg/train_dataset-things_eeg_2/model-alexnet/metadata",
                    target / "encoding_models/modality-eeg/train_dataset-things_eeg_2/model-alexnet/metadata")
    subprocess.run([sys.executable, str(alexnet_fixtures / "make_alexnet_berg_weights.py"), str(target), "--container",
                    "sklearn", "--only", "things_eeg_2/model-alexnet/"], check=True, capture_output=True)
    weights = next(target.rglob("weights_subject-01.npy"))
    with weights.open("rb") as fh:
        assert isinstance(load_npy_dict(fh)["pca_param"]["rep-1"], Attributes)  # an sklearn object, not a dict
    _check_case(BERG(target), berg_fixtures, "eeg_sub-01", "images_small", alexnet_fixtures, ALEXNET_CASES)


def test_catalogue_and_metadata(berg_dir, vit_cache, capsys):
    berg = BERG(berg_dir)
    here = berg.models_here()
    assert {"fmri-nsd_fsaverage-vit_b_32", "fmri-things_fmri_1-vit_b_32", "meg-things_meg_1-vit_b_32",
            "utah_array-tvsd-vit_b_32"} <= set(here) <= set(BERG_IDS)  # (+ EEG once its 1.9 GB file is made)
    assert here["meg-things_meg_1-vit_b_32"]["train_splits"] == ["full", "split2"]
    assert here["utah_array-tvsd-vit_b_32"]["subjects"] == ["F"]
    assert berg.describe("meg-things_meg_1-vit_b_32") is None  # BERG prints the card
    text = capsys.readouterr().out
    assert "train_split" in text and "sensors" in text
    meta = berg.get_model_metadata("meg-things_meg_1-vit_b_32", subject=1)
    assert set(meta) == {"meg", "sensors", "encoding_model"}
    model = berg.get_encoding_model("utah_array-tvsd-vit_b_32", subject="F", device="cpu",
                                    selection={"roi": ["V4"]})
    out, meta = berg.encode(model, np.zeros((2, 3, 64, 64), np.uint8), return_metadata=True)
    assert out.shape == (2, 192, 300) and "utah-array" in meta


SERVED = ["eeg-things_eeg_2-alexnet", "eeg-things_eeg_2-alexnet_untrained", "eeg-things_eeg_2-vit_b_32", "fmri-nsd-fwrf",
          "fmri-nsd_fsaverage-alexnet", "fmri-nsd_fsaverage-alexnet_untrained", "fmri-nsd_fsaverage-vit_b_32",
          "fmri-things_fmri_1-vit_b_32", "meg-things_meg_1-vit_b_32", "utah_array-tvsd-vit_b_32"]


def test_bergs_current_catalogue_calls(berg_dir, capsys):
    """BERG's newest signatures and return types (berg/core/berg.py): the registry is what ned-ray serves."""
    berg = BERG(berg_dir)
    assert berg.list_models() == SERVED
    assert capsys.readouterr().out == ""
    assert berg.list_models(expand_brainscore_vision=True, expand_brainscore_language=True) == SERVED
    assert "serves no Brain-Score models" in capsys.readouterr().out
    catalog = berg.get_model_catalog()
    assert catalog == {"eeg": ["things_eeg_2"], "fmri": ["nsd", "nsd_fsaverage", "things_fmri_1"],
                       "meg": ["things_meg_1"], "utah_array": ["tvsd"]}
    assert berg.get_model_catalog(print_format=True) == catalog
    printed = capsys.readouterr().out
    assert printed.startswith("Available Modalities and Datasets:") and "• UTAH_ARRAY\n  └─ tvsd" in printed
    assert all(berg.get_model_variants(m) == [] for m in SERVED)
    with pytest.raises(ModelNotFoundError, match="Model 'fmri-nsd-mem' is one of BERG's models that ned-ray does not "
                                                 "serve .*image model of another design.*Models ned-ray serves"):
        berg.get_encoding_model("fmri-nsd-mem", subject=1)
    for call in (lambda: berg.get_model_variants("brainscore_vision"), lambda: berg.describe("fmri-bmd-s3d"),
                 lambda: berg.get_model_metadata("ecog-zada2025-gpt2_xl", subject=1)):
        with pytest.raises(ModelNotFoundError, match="does not serve"):
            call()


def test_bergs_readme_snippets_run_unchanged(ned_dir, fixtures, vit_cache):
    """BERG's README: fwrf picks its ROI through ``selection``, EEG on device "auto"."""
    images = np.load(fixtures / "images.npy")
    berg = BERG(berg_dir=str(ned_dir))
    fmri_model = berg.get_encoding_model("fmri-nsd-fwrf",
                                         subject=1,
                                         selection={"roi": "V1"},
                                         device="cpu")
    eeg_model = berg.get_encoding_model("eeg-things_eeg_2-vit_b_32",
                                        subject=1,
                                        device="auto")
    insilico_fmri, insilico_fmri_metadata = berg.encode(fmri_model,
                                                       images,
                                                       return_metadata=True)  # if needed
    insilico_eeg = berg.encode(eeg_model,
                               images)
    for got, tag in ((insilico_fmri, "fmri_sub-01_V1"), (insilico_eeg, "eeg_sub-01")):
        want = np.load(fixtures / "expected" / f"{tag}__images.npy")
        assert got.shape == want.shape and float(np.abs(got - want).max() / want.std()) <= 1e-4
    assert "fmri" in insilico_fmri_metadata
    with pytest.raises(InvalidParameterError, match="Invalid selection key: 'voxels'"):
        berg.get_encoding_model("fmri-nsd-fwrf", subject=1, selection={"roi": "V1", "voxels": [1]})


def test_unknown_ids_subjects_splits_and_selections_list_the_valid_ones(berg_dir, vit_cache):
    berg = BERG(berg_dir)
    with pytest.raises(ModelNotFoundError, match="Model 'meg-things_meg_2-vit_b_32' not found in registry. Available models: .*meg-things_meg_1"):
        berg.get_encoding_model("meg-things_meg_2-vit_b_32", subject=1)
    with pytest.raises(InvalidParameterError, match=r"Subject must be one of \['N', 'F'\], got 'G'"):
        berg.get_encoding_model("utah_array-tvsd-vit_b_32", subject="G")
    for subject in (True, 1.0):  # BERG: True silently loads subject 1; 1.0 fails later as a load error
        with pytest.raises(InvalidParameterError, match="Subject must be one of"):
            berg.get_encoding_model("fmri-things_fmri_1-vit_b_32", subject=subject)
    with pytest.raises(InvalidParameterError, match=r"train_split must be one of \['full', 'split1'"):
        berg.get_encoding_model("meg-things_meg_1-vit_b_32", subject=1, train_split="split9")
    with pytest.raises(InvalidParameterError, match=r"Invalid region\(s\): \['Occ'\]. Valid regions are: \['Central'"):
        berg.get_encoding_model("meg-things_meg_1-vit_b_32", subject=1, selection={"region": ["Occ"]})
    with pytest.raises(InvalidParameterError, match=r"Invalid selection key: 'chans'. Valid keys are"):
        berg.get_encoding_model("utah_array-tvsd-vit_b_32", subject="F", selection={"chans": [1]})
    with pytest.raises(ModelLoadError, match="weights_P2_full.npy"):  # published, not in this directory
        berg.get_encoding_model("meg-things_meg_1-vit_b_32", subject=2)


def test_images_are_checked_where_berg_fails_silently(berg_dir, vit_cache):
    berg = BERG(berg_dir)
    model = berg.get_encoding_model("fmri-things_fmri_1-vit_b_32", subject=1, device="cpu",
                                    selection={"roi": ["V1"]})
    ok = np.zeros((1, 3, 64, 64), np.uint8)
    for bad, message in ((ok.astype(np.float32), "dtype uint8"), (ok.astype(np.int64), "dtype uint8"),
                         (ok[:0], "0 images"), (ok[:, :1], "3 RGB channels"), (ok[0], "4D numpy array"),
                         (list(ok), "4D numpy array")):
        with pytest.raises(StimulusError, match=message):
            berg.encode(model, bad)
    wide = np.random.default_rng(0).integers(0, 256, (2, 3, 300, 400), dtype=np.uint8)
    assert berg.encode(model, wide).shape == (2, model.group.output_shape(model.ids[0])[0])  # non-square: as BERG
    assert berg.encode(model, wide[..., ::-1]).shape[0] == 2  # negative strides (BERG: a raw ValueError)


def test_a_malicious_pickle_in_a_berg_file_does_not_run(berg_dir, tmp_path, vit_cache):
    import shutil

    from .test_safeload import _Payload

    marker = tmp_path / "pwned"
    copy = tmp_path / "berg_dir"
    folder = "encoding_models/modality-utah_array/train_dataset-tvsd/model-vit_b_32"
    shutil.copytree(berg_dir / folder / "metadata", copy / folder / "metadata")
    (copy / folder / "encoding_models_weights").mkdir(parents=True)
    buffer = io.BytesIO()
    np.save(buffer, np.array({"scaler_param": _Payload(marker), "pca_param": {}, "reg_param": {}}, dtype=object),
            allow_pickle=True)
    (copy / folder / "encoding_models_weights" / "weights_monkeyF.npy").write_bytes(buffer.getvalue())
    with pytest.raises(ModelLoadError, match="weights_monkeyF.npy"):
        BERG(copy).get_encoding_model("utah_array-tvsd-vit_b_32", subject="F", device="cpu")
    assert not marker.exists()


def test_the_calls_of_bergs_own_analysis_scripts(berg_dir, alexnet_berg_dir, berg_fixtures, vit_cache, alexnet_weights):
    """As BERG's paper analyses call it (gifale95/BERG paper_analyses): a loop over subjects, an ROI by
    name through ``selection``, ``encode`` with and without metadata, ``get_model_metadata``."""
    images = np.load(berg_fixtures / "images_small.npy")
    for directory, model_id in ((berg_dir, "fmri-nsd_fsaverage-vit_b_32"), (alexnet_berg_dir, "fmri-nsd_fsaverage-alexnet")):
        berg = BERG(berg_dir=str(directory))
        for sub in [1]:
            model_ffa1 = berg.get_encoding_model(model_id, subject=sub, selection={'roi': 'FFA-1'})
            lh, rh = berg.encode(model_ffa1, images)
            (lh_meta, rh_meta), metadata = berg.encode(model_ffa1, images, return_metadata=True)
            assert lh.shape[0] == rh.shape[0] == 4 and np.array_equal(lh, lh_meta) and "fmri" in metadata
            assert lh.shape[1] == len(metadata["fmri"]["lh_fsaverage_rois"]["FFA-1"])
            assert set(berg.get_model_metadata(model_id, subject=sub)) == set(metadata)
