"""Compact outputs (``--store codes|both``): codes per image and heads once; responses rebuilt from
them agree with the stored ones; the output stays self-contained and small."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ned_ray.errors import OutputDamagedError, OutputError
from ned_ray.output import open_output
from ned_ray.output.codes import CodeHead, Readout, rebuild

NED_EEG = "eeg/things_eeg_2/vit_b_32/sub-01"
MEG = "meg/things_meg_1/vit_b_32/sub-01/full"
FWRF = "fmri/nsd/fwrf/sub-01/V1"


def test_a_head_round_trips_selects_and_rebuilds_in_float64():
    rng = np.random.default_rng(0)
    head = CodeHead(6, (Readout(0, 4, rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=3).astype(np.float32)),
                        Readout(2, 6, rng.normal(size=(2, 4)), rng.normal(size=2))), (5,))
    back = CodeHead.from_bytes(head.to_bytes())
    assert back.width == 6 and back.shape == (5,) and back.readouts[1].coef.dtype == np.float64
    codes = rng.normal(size=(7, 6)).astype(np.float32)
    expected = np.concatenate([codes[:, 0:4].astype(np.float64) @ head.readouts[0].coef.T.astype(np.float64)
                               + head.readouts[0].intercept, codes[:, 2:6] @ head.readouts[1].coef.T
                               + head.readouts[1].intercept], axis=1).astype(np.float32)
    np.testing.assert_array_equal(rebuild(codes, back), expected)
    picked = head.select(np.array([4, 0, 1]), (3,))  # a selection's order: a run of each readout
    np.testing.assert_array_equal(rebuild(codes, picked), expected[:, [4, 0, 1]])
    with pytest.raises(ValueError, match="do not fit a head of 6 code values"):
        rebuild(codes[:, :5], head)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Every demo model (NED's EEG, fwrf, BERG's five) over the built-in photographs, stored three ways."""
    from ned_ray import EncodeConfig, run_encode
    from ned_ray.demo import make_demo_models, write_demo_images

    root = tmp_path_factory.mktemp("codes")
    make_demo_models(str(root / "ned"), fmri_subjects=(1,), rois=("V1",), eeg_subjects=(1,), berg=True)
    write_demo_images(root / "images")
    for store in ("responses", "codes", "both"):
        run_encode(EncodeConfig(str(root / "ned"), str(root / "images"), "all", str(root / store), device="cpu",
                                executor="local", store=store, shard_size=5, cpu_threads=1))
    return root


def _size(folder: Path, model: str) -> int:
    return sum(p.stat().st_size for p in (folder / model).glob("part-*"))


def test_rebuilt_responses_agree_with_the_stored_ones_on_every_linear_family(stored):
    plain, both, codes = (open_output(str(stored / s)) for s in ("responses", "both", "codes"))
    linear = [m for m in plain.models if m != FWRF]
    assert len(linear) == 9 and {both.manifest["models"][m]["store"] for m in linear} == {"both"}  # + AlexNet lh/rh
    assert codes.manifest["models"][FWRF]["store"] == "responses"  # no small code: responses kept
    for model in linear:
        _, expected = plain.responses(model)
        np.testing.assert_array_equal(both.responses(model, source="responses")[1], expected)
        _, rebuilt = codes.responses(model)
        np.testing.assert_array_equal(both.responses(model, source="codes")[1], rebuilt)  # same codes, same head
        error = float(np.abs(rebuilt - expected).max())
        # the bound; in fact equal: every readout accumulates in float64 and rounds once, stored or rebuilt
        assert error <= 1e-6 * expected.std() and error == 0, (model, error / expected.std())
        assert _size(stored / "codes", model) < _size(stored / "responses", model) / 3, model
    index, code = codes.codes(MEG)
    assert code.shape == (len(index), codes.head(MEG).width) and code.dtype == np.float32


def test_a_coded_output_reads_without_its_model_directory_and_its_head_is_checked(stored, tmp_path):
    copy = tmp_path / "codes"
    shutil.copytree(stored / "codes", copy)
    out = open_output(str(copy))  # the model directory plays no part: the heads are in the output
    expected = open_output(str(stored / "codes")).responses(MEG)[1]
    np.testing.assert_array_equal(out.responses(MEG)[1], expected)
    with pytest.raises(OutputError, match="stored without responses .--store codes."):
        out.responses(MEG, source="responses")
    head = copy / MEG / "head.npz"
    head.write_bytes(head.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(OutputDamagedError, match="is not the head the manifest recorded"):
        open_output(str(copy)).responses(MEG)


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_selections_shape_the_heads_and_both_executors_store_the_same_codes(executor, request, stored, tmp_path):
    from ned_ray import EncodeConfig, run_encode

    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    models = f"{NED_EEG},{MEG},{FWRF}"
    options = dict(device="cpu", shard_size=4, cpu_threads=1, channels="Oz,O1,Pz", times="0.1:0.3", min_ncsnr=0.2,
                   berg_selection={MEG: {"region": ["Occipital"], "timepoints": [t < 100 for t in range(281)]}})
    for store in ("responses", "codes"):
        run_encode(EncodeConfig(str(stored / "ned"), str(stored / "images"), models, str(tmp_path / store),
                                executor="local" if store == "responses" else executor, store=store, **options))
    plain, codes = open_output(str(tmp_path / "responses")), open_output(str(tmp_path / "codes"))
    for model in (NED_EEG, MEG):
        _, expected = plain.responses(model)
        _, rebuilt = codes.responses(model)
        assert rebuilt.shape == expected.shape
        assert codes.head(model).shape == expected.shape[1:]  # the head keeps only the selected outputs
        assert float(np.abs(rebuilt - expected).max()) <= 1e-6 * expected.std()
    assert codes.shape(NED_EEG) == (4, 3, plain.shape(NED_EEG)[2])
    np.testing.assert_array_equal(codes.responses(FWRF)[1], plain.responses(FWRF)[1])


def test_a_coded_output_on_s3_streams_its_rebuilt_responses(stored, s3_server):
    from ned_ray.storage import filesystem

    fs, _ = filesystem("s3://ned-ray-codes", s3_server)
    fs.mkdir("ned-ray-codes")
    fs.put(str(stored / "codes"), "ned-ray-codes/out", recursive=True)
    remote, local = open_output("s3://ned-ray-codes/out", s3_server), open_output(str(stored / "codes"))
    batches = list(remote.iter_batches(MEG, rows_per_batch=4))
    assert [len(i) for i, _ in batches] == [4, 1, 4, 1, 4]  # parts of 5 images, batches of at most 4
    np.testing.assert_array_equal(np.concatenate([v for _, v in batches]), local.responses(MEG)[1])
    assert remote.head(MEG).width == local.head(MEG).width
