"""Every expected failure of `ned-ray encode` is one line on stderr naming what is wrong, and exit 2.

Damaged model directories (weights of another ROI under a model's name, truncated files, metadata that
is not NED's), empty inputs of every kind and malformed options, each tried through the CLI on a real
local Ray cluster (and one in process). Nothing is committed before the error, and the same command
runs once the file is repaired.
"""

from __future__ import annotations

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
