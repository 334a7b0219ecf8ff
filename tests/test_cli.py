"""The ned-ray command line: commands, JSON output and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ned_ray.cli import main


def test_make_demo_models_then_list_them(tmp_path, capsys):
    assert main(["make-demo-models", str(tmp_path / "ned")]) == 0
    assert "NOT trained" in capsys.readouterr().out
    assert main(["models", str(tmp_path / "ned"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 17 and rows[0]["id"] == "eeg/things_eeg_2/vit_b_32/sub-01" and rows[-1]["family"] == "tvsd"
    families = {r["family"] for r in rows}
    assert families == {"fwrf", "eeg", "fsaverage", "things_fmri", "meg", "tvsd",  # one of each, NED's and BERG's
                        "fsaverage_alexnet_untrained"}
    assert next(r for r in rows if r["id"] == "eeg/things_eeg_2/vit_b_32/sub-04")["format"] == "berg"
    assert main(["make-demo-models", str(tmp_path / "ned_only"), "--ned-only"]) == 0
    capsys.readouterr()
    assert main(["models", str(tmp_path / "ned_only"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 9


def test_expected_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["models", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ned-ray models: error: NED directory not found") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    file = tmp_path / "a_file"
    file.write_text("not a folder")
    assert main(["make-demo-models", str(file / "ned")]) == 2  # a folder that cannot be made
    err = capsys.readouterr().err
    assert err.startswith(f"ned-ray make-demo-models: error: cannot write demo models to '{file / 'ned'}'"), err
    assert len(err.strip().splitlines()) == 1


def test_only_ned_rays_errors_are_one_line_a_bug_stays_a_traceback(capsys):
    from ned_ray.cli import run_command
    from ned_ray.errors import ConfigError

    def refused() -> int:
        raise ConfigError("--times must be START:END")

    def bug() -> int:
        return {}["missing"]

    assert run_command("ned-ray x", refused) == 2
    assert capsys.readouterr().err == "ned-ray x: error: --times must be START:END\n"
    with pytest.raises(KeyError):  # printed by Python with its traceback, exit 1
        run_command("ned-ray x", bug)


def test_demo_command_runs_the_job_on_every_demo_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ned_ray.cli", "demo", "--workdir", str(tmp_path), "--device", "cpu"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    from ned_ray.output import open_output

    output = open_output(str(tmp_path / "out"))
    assert len(output.models) == 17 and output.manifest["images"] == {"total": 14, "ok": 14, "error": 0, "skipped": 0, "file": "images.parquet"}
    assert output.responses("fmri/nsd/fwrf/sub-01/V1")[1].shape == (14, 48)
    assert len(list((tmp_path / "out" / "fmri/nsd/fwrf/sub-01/V1").glob("part-*.npy"))) == 2  # responses + index
    # the rate says what it is made of: 14 images are one piece, so the fixed costs (issue 32)
    assert "images/s overall, most of it fixed costs: " in result.stdout and "to the first committed piece" in result.stdout
    # Ray's once-per-process C++ notice about Ray Data's actor arguments is not the first thing a newcomer reads
    assert "core_worker.cc" not in result.stderr and "constructor arguments" not in result.stderr, result.stderr
    assert "fmri/nsd_fsaverage/alexnet_untrained/sub-01/lh" in result.stdout  # the demo shows an AlexNet model
    exports = sorted(p.name for p in (tmp_path / "out" / "exports").iterdir())  # one export of each kind
    assert exports == ["eeg_sub-01-epo.fif", "eeg_sub-04.zarr", "fsaverage_alexnet_untrained_sub-01_rh.mgz",
                       "fsaverage_sub-01_lh.func.gii", "meg_sub-01-ave.fif", "things_fmri_sub-01.nii.gz", "tvsd_sub-F.nc"]
    assert sorted(p.name for p in (tmp_path / "out" / "plots").iterdir()) == [
        "eeg_timecourses.png", "eeg_topomaps.png", "fmri_distributions.png", "fsaverage_alexnet_untrained_surface.png",
        "fsaverage_surface.png", "heatmap.png", "meg_timecourses.png", "meg_topomaps.png", "things_fmri_distributions.png",
        "tvsd_timecourses.png"]  # one or two figures per family

    assert output.coords("utah_array/tvsd/vit_b_32/sub-F")["time"][0] == -0.1


COMMANDS = ("make-demo-models", "models", "encode", "inspect", "plot", "export", "demo")


def test_help_lists_every_command_and_each_has_examples():
    result = subprocess.run([sys.executable, "-m", "ned_ray.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
        sub = subprocess.run([sys.executable, "-m", "ned_ray.cli", command, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and "example" in sub.stdout and f"ned-ray {command}" in sub.stdout, command


def test_models_table_and_json_give_voxels_and_accuracy(demo_dir, capsys):
    from ned_ray.modeldir import NedDir

    assert main(["models", str(demo_dir), "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    ned = NedDir(str(demo_dir))
    v1 = rows["fmri/nsd/fwrf/sub-01/V1"]
    meta = ned.metadata("fmri/nsd/fwrf/sub-01/V1")
    assert v1["voxels"] == len(meta["fmri"]["ncsnr"]) == 48 and v1["response_shape"] == [48]
    assert v1["accuracy"] == pytest.approx(
        100 * float(np.mean(meta["encoding_models"]["encoding_accuracy"]["noise_normalized_encoding"])), abs=1e-3)
    eeg = rows["eeg/things_eeg_2/vit_b_32/sub-01"]
    acc = ned.metadata("eeg/things_eeg_2/vit_b_32/sub-01")["encoding_models"]["encoding_accuracy"]
    assert eeg["voxels"] is None and eeg["response_shape"] == [4, 63, 140]
    assert eeg["accuracy"] == pytest.approx(
        100 * float(np.mean(acc["correlation_all_repetitions"]) / np.mean(acc["noise_ceiling_upper"])), abs=1e-3)
    assert main(["models", str(demo_dir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:6] == ["model", "BERG", "id", "subject", "roi/hemi/split", "outputs"]
    line = next(t for t in table if t.startswith("fmri/nsd/fwrf/sub-01/V1 "))
    assert line.split()[1:5] == ["fmri-nsd-fwrf", "1", "V1", "48"] and line.split()[-2:] == [f"{v1['accuracy']:.1f}%", "ok"]
    assert next(t for t in table if t.startswith("eeg/things_eeg_2/vit_b_32/sub-01 ")).split()[3:5] == ["-", "4x63x140"]


def test_models_lists_a_damaged_model_with_its_missing_file(demo_dir, tmp_path, capsys):
    import shutil

    ned = tmp_path / "ned"
    shutil.copytree(demo_dir, ned)
    weights = ned / "encoding_models/modality-fmri/train_dataset-nsd/model-fwrf/encoding_models_weights/weights_sub-01_roi-V1.pt"
    weights.unlink()
    assert main(["models", str(ned), "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["fmri/nsd/fwrf/sub-01/V1"]["status"] == "damaged" and rows["fmri/nsd/fwrf/sub-02/V1"]["status"] == "ok"
    assert rows["fmri/nsd/fwrf/sub-01/V1"]["missing"].endswith("encoding_models_weights/weights_sub-01_roi-V1.pt")
    assert main(["models", str(ned)]) == 0
    out, err = capsys.readouterr()
    line = next(t for t in out.splitlines() if t.startswith("fmri/nsd/fwrf/sub-01/V1 "))
    assert line.endswith("damaged: weights_sub-01_roi-V1.pt missing") and "1 damaged" in err


def test_models_lists_berg_families_with_their_shapes(berg_dir, capsys):
    assert main(["models", str(berg_dir), "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["fmri/nsd_fsaverage/vit_b_32/sub-01/lh"]["response_shape"] == [163842]
    assert rows["fmri/things_fmri_1/vit_b_32/sub-01"]["response_shape"] == [211339]
    assert rows["meg/things_meg_1/vit_b_32/sub-01/split2"]["response_shape"] == [271, 281]
    assert rows["utah_array/tvsd/vit_b_32/sub-F"]["response_shape"] == [1024, 300]
    assert rows["meg/things_meg_1/vit_b_32/sub-01/full"]["berg_id"] == "meg-things_meg_1-vit_b_32"
    assert all(r["format"] == "berg" and r["accuracy"] is not None for r in rows.values() if r["status"] == "ok")
    damaged = {i: r["missing"].rsplit("/", 1)[1] for i, r in rows.items() if r["status"] != "ok"}
    assert damaged in ({}, {"eeg/things_eeg_2/vit_b_32/sub-01": "weights_subject-01.npy"})  # its 1.9 GB file: built or not yet
    assert main(["models", str(berg_dir)]) == 0
    line = next(t for t in capsys.readouterr().out.splitlines() if t.startswith("utah_array/tvsd/vit_b_32/sub-F "))
    assert line.split()[1:4] == ["utah_array-tvsd-vit_b_32", "F", "-"] and "1024x300" in line


def test_inspect_text_and_json(demo_output, capsys):
    assert main(["inspect", str(demo_output), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] and info["images"]["total"] == 15 and info["images"]["error"] == 1
    assert info["errors"][0]["image_id"] == "zz_corrupt.jpg" and info["errors"][0]["error"].startswith("corrupt or truncated image")
    assert {m["id"]: m["rows"] for m in info["models"]}["fmri/nsd/fwrf/sub-01/V1"] == 14
    assert info["options"]["formats"] == ["parquet", "npy"] and info["precision"] == {"mode": "fp32"}
    assert [(d["pool"], d["planned"], d["ran_on"]) for d in info["devices"]] == [("eeg", "cpu", {"cpu": 15}),
                                                                                ("fmri", "cpu", {"cpu": 15})]
    assert main(["inspect", str(demo_output)]) == 0
    text = capsys.readouterr().out
    assert "15 images (14 ok, 1 errors), 9 models" in text and "error: zz_corrupt.jpg: " in text
    assert "pool eeg (3 models): planned on cpu, 15 images on cpu" in text
    assert ["eeg/things_eeg_2/vit_b_32/sub-03", "14", "4x63x140"] in [line.split() for line in text.splitlines()]


def test_plot_writes_pngs_of_the_expected_size(demo_output, tmp_path, capsys):
    from PIL import Image

    assert main(["plot", str(demo_output), "--to", str(tmp_path / "figs")]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(Path(p).name for p in printed)
    assert names == ["eeg_timecourses.png", "eeg_topomaps.png", "fmri_distributions.png", "heatmap.png"]
    for path in printed:
        assert Path(path).stat().st_size > 20_000  # drawn, not blank
        with Image.open(path) as image:
            assert image.size[0] == 1200 and image.format == "PNG"
            assert image.size[1] == 800 or Path(path).name == "eeg_topomaps.png"  # a row per model
            pixels = np.asarray(image.convert("L"))
            assert pixels.std() > 10  # not a uniform canvas
    assert main(["plot", str(demo_output), "--to", str(tmp_path / "one"), "--models", "eeg/things_eeg_2/vit_b_32/sub-01"]) == 0
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["eeg_timecourses.png", "eeg_topomaps.png", "heatmap.png"]


def test_command_errors_exit_2_with_one_line(demo_output, demo_dir, tmp_path, capsys):
    cases = [
        (["inspect", str(tmp_path)], "is not a finished ned-ray output"),
        (["plot", str(demo_output), "--to", str(tmp_path / "p"), "--models", "eeg/nope"], "has no model eeg/nope"),
        (["encode", "--ned-dir", str(demo_dir), "--images", str(tmp_path), "--models", "eeg/*", "--output",
          str(tmp_path / "o"), "--times", "0.3"], "--times must be START:END"),
        (["encode", "--ned-dir", str(demo_dir), "--images", str(demo_output.parent / "images"), "--models", "fmri/*",
          "--output", str(tmp_path / "o2"), "--min-ncsnr", "1000"], "--min-ncsnr 1000.0 keeps no voxel of"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "o2").exists()  # refused before anything was written: a corrected rerun is not blocked


def test_encode_prints_progress(demo_dir, tmp_path):
    from ned_ray.demo import write_demo_images

    write_demo_images(tmp_path / "imgs")
    result = subprocess.run([sys.executable, "-m", "ned_ray.cli", "encode", "--ned-dir", str(demo_dir), "--images",
                             str(tmp_path / "imgs"), "--models", "fmri/nsd/fwrf/sub-01/V1", "--output", str(tmp_path / "o"),
                             "--device", "cpu", "--shard-size", "4", "--progress-every", "0.5"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    progress = [line for line in result.stderr.splitlines() if line.startswith("encoded ")]
    assert progress and progress[-1].startswith("encoded 14/14 images (100.0%)") and "images/s, ETA 0s" in progress[-1]
