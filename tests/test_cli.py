"""The ned-ray command line: commands, JSON output and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

from ned_ray.cli import main


def test_make_demo_models_then_list_them(tmp_path, capsys):
    assert main(["make-demo-models", str(tmp_path / "ned")]) == 0
    assert "NOT trained" in capsys.readouterr().out
    assert main(["models", str(tmp_path / "ned"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 9 and rows[0]["id"] == "eeg/things_eeg_2/vit_b_32/sub-01" and rows[-1]["roi"] == "lateral"


def test_expected_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["models", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ned-ray models: error: NED directory not found") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_demo_command_runs_the_job_on_every_demo_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ned_ray.cli", "demo", "--workdir", str(tmp_path), "--device", "cpu"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    from ned_ray.output import open_output

    output = open_output(str(tmp_path / "out"))
    assert len(output.models) == 9 and output.manifest["images"] == {"total": 14, "ok": 14, "error": 0, "file": "images.parquet"}
    assert output.responses("fmri/nsd/fwrf/sub-01/V1")[1].shape == (14, 48)
    assert len(list((tmp_path / "out" / "fmri/nsd/fwrf/sub-01/V1").glob("part-*.npy"))) == 2  # responses + index
    assert "images/s" in result.stdout


def test_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "ned_ray.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("make-demo-models", "models", "demo"):
        assert command in result.stdout
