"""Every expected failure of `ned-ray encode` is one line on stderr naming what is wrong, and exit 2.

Damaged model directories (weights of another ROI under a model's name, truncated files, metadata that
is not NED's), empty inputs of every kind and malformed options, each tried through the CLI on a real
local Ray cluster (and one in process). Nothing is committed before the error, and the same command
runs once the file is repaired.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ned_ray.cli import main as cli_main

FMRI = "fmri/nsd/fwrf/sub-01/V1"
EEG = "eeg/things_eeg_2/vit_b_32/sub-01"
FWRF = "encoding_models/modality-fmri/train_dataset-nsd/model-fwrf"
VIT = "encoding_models/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32"


def _encode(ned: Path, images: str, out: Path, models: str = FMRI, *extra: str) -> int:
    return cli_main(["encode", "--ned-dir", str(ned), "--images", images, "--models", models, "--output", str(out),
                     "--device", "cpu", "--cpu-threads", "1", "--quiet", *extra])


def _last_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err.split("ned-ray encode: error:")[-1]
    return err.strip().splitlines()[-1]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "weights of another ROI": (FMRI, f"{FWRF}/encoding_models_weights/weights_sub-01_roi-V1.pt",
                               lambda ned, f: shutil.copy(ned / FWRF / "encoding_models_weights/weights_sub-01_roi-FFA-1.pt", f),
                               "holds 24 voxels but its metadata"),
    "truncated fMRI weights": (FMRI, f"{FWRF}/encoding_models_weights/weights_sub-01_roi-V1.pt",
                               lambda ned, f: _truncate(f), "not a readable torch checkpoint"),
    "metadata a plain array": (FMRI, f"{FWRF}/metadata/metadata_sub-01_roi-V1.npy",
                               lambda ned, f: np.save(f, np.zeros(3)), "not NED metadata for " + FMRI),
    "truncated metadata": (FMRI, f"{FWRF}/metadata/metadata_sub-01_roi-V1.npy", lambda ned, f: _truncate(f), ""),
    "truncated EEG head": (EEG, f"{VIT}/encoding_models_weights/LinearRegression_param_sub-01.npy",
                           lambda ned, f: _truncate(f), ""),
    "EEG head of another shape": (EEG, f"{VIT}/encoding_models_weights/LinearRegression_param_sub-01.npy",
                                  lambda ned, f: np.save(f, np.zeros((3, 4), np.float32), allow_pickle=False), ""),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_model_file_is_one_line_naming_it(ray_cluster, demo_dir, fixture_image_folder, tmp_path, capsys, damage):
    model, relative, spoil, message = DAMAGE[damage]
    ned = tmp_path / "ned"
    shutil.copytree(demo_dir, ned)
    spoil(ned, ned / relative)
    assert _encode(ned, str(fixture_image_folder), tmp_path / "out", model) == 2
    line = _last_line(capsys)
    assert line.startswith("ned-ray encode: error:") and Path(relative).name in line and message in line, line
    assert not (tmp_path / "out" / "_manifest.json").exists()
    shutil.copy(demo_dir / relative, ned / relative)  # repaired: the same command now runs on that output
    assert _encode(ned, str(fixture_image_folder), tmp_path / "out", model) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "_manifest.json").exists()


def test_a_damaged_model_file_in_process_is_one_line_too(demo_dir, fixture_image_folder, tmp_path, capsys):
    ned = tmp_path / "ned"
    shutil.copytree(demo_dir, ned)
    _truncate(ned / FWRF / "encoding_models_weights/weights_sub-01_roi-V1.pt")
    assert _encode(ned, str(fixture_image_folder), tmp_path / "out", FMRI, "--executor", "local") == 2
    line = _last_line(capsys)
    assert line.startswith("ned-ray encode: error: model fmri/nsd/fwrf/sub-01/V1 failed to load") and \
        "weights_sub-01_roi-V1.pt: not a readable torch checkpoint" in line, line


EMPTY = {
    "empty folder": lambda p: (p / "e").mkdir() or str(p / "e"),
    "folder of unreadable formats": lambda p: (p / "d").mkdir() or (p / "d" / "notes.txt").write_text("x") and str(p / "d"),
    "glob matching nothing": lambda p: str(p / "*.png"),
    "empty .txt list": lambda p: (p / "l.txt").write_text("# nothing\n") and str(p / "l.txt"),
    "(0,3,H,W) .npy": lambda p: np.save(p / "z.npy", np.zeros((0, 3, 8, 8), np.uint8)) or str(p / "z.npy"),
    "empty Parquet": lambda p: pq.write_table(pa.table({"image": pa.array([], pa.binary())}), p / "e.parquet")
                               or str(p / "e.parquet"),
}


@pytest.mark.parametrize("kind", EMPTY)
def test_an_empty_input_is_one_line_and_exit_2(demo_dir, tmp_path, capsys, kind):
    images = EMPTY[kind](tmp_path)
    assert _encode(demo_dir, images, tmp_path / "out") == 2
    line = _last_line(capsys)
    assert line.startswith("ned-ray encode: error:") and ("no image" in line or "holds 0" in line or "0 rows" in line
                                                           or "matches no file" in line or "empty" in line), line
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("options, message", [("[1]", "must be a JSON object"), ("{not json", "not valid JSON")])
def test_malformed_storage_options_are_one_line(demo_dir, fixture_image_folder, tmp_path, capsys, options, message):
    assert _encode(demo_dir, str(fixture_image_folder), tmp_path / "out", FMRI, "--storage-options", options) == 2
    line = _last_line(capsys)
    assert "--storage-options" in line and message in line, line


BERG_MEG = "encoding_models/modality-meg/train_dataset-things_meg_1/model-vit_b_32"
BERG_THINGS = "encoding_models/modality-fmri/train_dataset-things_fmri_1/model-vit_b_32"
MISSING = {  # a file deleted from a model directory -> (the model asked for, the file)
    "fMRI weights": (FMRI, f"{FWRF}/encoding_models_weights/weights_sub-01_roi-V1.pt"),
    "half of a split ROI": ("fmri/nsd/fwrf/sub-01/lateral", f"{FWRF}/encoding_models_weights/weights_sub-01_roi-lateral_split-2.pt"),
    "fMRI metadata": (FMRI, f"{FWRF}/metadata/metadata_sub-01_roi-V1.npy"),
    "EEG regression": (EEG, f"{VIT}/encoding_models_weights/LinearRegression_param_sub-01.npy"),
    "EEG scaler (shared)": (EEG, f"{VIT}/encoding_models_weights/StandardScaler_param.npy"),
    "EEG PCA (shared)": (EEG, f"{VIT}/encoding_models_weights/pca_param.npy"),
    "EEG metadata": (EEG, f"{VIT}/metadata/metadata_sub-01.npy"),
    "BERG EEG weights": ("eeg/things_eeg_2/vit_b_32/sub-04", f"{VIT}/encoding_models_weights/weights_subject-04.npy"),
    "BERG MEG weights": ("meg/things_meg_1/vit_b_32/sub-01/full", f"{BERG_MEG}/encoding_models_weights/weights_P1_full.npy"),
    "BERG THINGS-fMRI metadata": ("fmri/things_fmri_1/vit_b_32/sub-01", f"{BERG_THINGS}/metadata/metadata_sub-01.npy"),
}


@pytest.fixture(scope="module")
def berg_demo_dir(tmp_path_factory) -> Path:
    from ned_ray.demo import make_demo_models

    path = tmp_path_factory.mktemp("berg_demo") / "ned"
    make_demo_models(str(path), berg=True)
    return path


@pytest.mark.parametrize("case", MISSING)
def test_a_missing_model_file_is_named_not_an_unknown_model(berg_demo_dir, fixture_image_folder, tmp_path, capsys, case):
    from ned_ray.ids import ModelId
    from ned_ray.modeldir import MissingFileError, NedDir

    model, relative = MISSING[case]
    ned = tmp_path / "ned"
    shutil.copytree(berg_demo_dir, ned, copy_function=os.link)  # hard links: cheap, and the original stays whole
    (ned / relative).unlink()
    directory = NedDir(str(ned))
    mid = ModelId.parse(model)
    assert mid not in directory.catalogue and directory.damaged[mid].missing == relative  # listed as damaged
    with pytest.raises(MissingFileError, match=f"{Path(relative).name} is missing from"):
        directory.entry(mid)  # what NED's and BERG's APIs ask
    folder = str(ned / Path(relative).parent)
    for models in (model, "all"):  # asked for by name, or as one of all
        assert _encode(ned, str(fixture_image_folder), tmp_path / "out", models) == 2
        line = _last_line(capsys)
        assert line == (f"ned-ray encode: error: model '{model}' is damaged: {Path(relative).name} is missing from "
                        f"'{folder}'; download it from the {'NED' if directory.damaged[mid].entry.format == 'ned' else 'BERG'} "
                        "release into that folder, or leave the model out of --models"), line
    assert not (tmp_path / "out").exists()


def test_a_missing_model_file_on_s3_is_named(s3_server, demo_dir, fixture_image_folder, tmp_path, capsys):
    import json

    from ned_ray.storage import filesystem

    fs, _ = filesystem("s3://ned-ray-missing", s3_server)
    fs.mkdir("ned-ray-missing")
    for path in demo_dir.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"ned-ray-missing/ned/{path.relative_to(demo_dir)}", path.read_bytes())
    for model, relative in (MISSING["fMRI weights"], MISSING["EEG scaler (shared)"]):
        fs.rm(f"ned-ray-missing/ned/{relative}")
        code = cli_main(["encode", "--ned-dir", "s3://ned-ray-missing/ned", "--images", str(fixture_image_folder),
                         "--models", model, "--output", str(tmp_path / "out"), "--device", "cpu", "--quiet",
                         "--storage-options", json.dumps(s3_server)])
        line = _last_line(capsys)
        assert code == 2 and f"model '{model}' is damaged: {Path(relative).name} is missing from " \
            f"'s3://ned-ray-missing/ned/{Path(relative).parent}'" in line, line


@pytest.fixture(params=["local", "s3"])
def empty_weights_ned(request, demo_dir, tmp_path) -> tuple[str, str, tuple[str, ...]]:
    """A NED directory (local, or on moto's S3) whose fMRI weight file is 0 bytes: (uri, file, options)."""
    weights = f"{FWRF}/encoding_models_weights/weights_sub-01_roi-V1.pt"
    if request.param == "local":
        ned = tmp_path / "ned"
        shutil.copytree(demo_dir, ned)
        (ned / weights).write_bytes(b"")
        return str(ned), weights, ()
    import json

    from ned_ray.storage import filesystem

    options = request.getfixturevalue("s3_server")
    fs, _ = filesystem("s3://ned-ray-empty-weights", options)
    if not fs.exists("ned-ray-empty-weights"):
        fs.mkdir("ned-ray-empty-weights")
    for relative in (weights, f"{FWRF}/metadata/metadata_sub-01_roi-V1.npy"):
        fs.pipe_file(f"ned-ray-empty-weights/ned/{relative}", b"" if relative == weights else (demo_dir / relative).read_bytes())
    return "s3://ned-ray-empty-weights/ned", weights, ("--storage-options", json.dumps(options))


@pytest.mark.local_executor
def test_an_empty_weight_file_is_named_as_empty(empty_weights_ned, fixture_image_folder, tmp_path, capsys):
    ned, weights, extra = empty_weights_ned
    assert _encode(ned, str(fixture_image_folder), tmp_path / "out", FMRI, "--executor", "local", *extra) == 2
    line = _last_line(capsys)
    assert f"{ned}/{weights}: not a readable torch checkpoint (the file is empty or ends early)" in line, line


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_truncated_npy_input_gives_error_rows_for_the_images_it_lacks(demo_dir, tmp_path, capsys, executor, request):
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "in.npy", images)
    whole = (tmp_path / "in.npy").read_bytes()
    (tmp_path / "in.npy").write_bytes(whole[:len(whole) - int(1.5 * 3 * 32 * 32)])  # 2.5 of the 4 images
    assert _encode(demo_dir, str(tmp_path / "in.npy"), tmp_path / "out", FMRI, "--executor", executor) == 0
    err = capsys.readouterr().err
    assert "is truncated: its header promises 4 images of 3072 bytes, the file holds 2 whole" in err, err
    status = pq.read_table(tmp_path / "out" / "images.parquet").to_pydict()
    assert status["status"] == ["ok", "ok", "error", "error"]
    assert all("truncated .npy input: the file ends before image" in e for e in status["error"][2:])
