"""The job's one progress display (ned_ray/job/progress.py): a live tqdm bar on a terminal, plain
lines elsewhere, both counting images, errors and skipped images from the commit markers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest

from ned_ray.job.progress import ProgressReporter, format_progress
from ned_ray.output.layout import COMMITS, IMAGES_WRITER

REPO = Path(__file__).resolve().parents[2]


def _commit(root, name: str, rows: int, errors: int = 0, skipped: int = 0) -> None:
    folder = root / COMMITS / IMAGES_WRITER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"image_index": list(range(rows)), "ok": rows - errors - skipped,
                                                     "error": errors, "skipped": skipped}))


def test_plain_lines_count_images_errors_and_skipped(tmp_path):
    fs = fsspec.filesystem("file")
    _commit(tmp_path, "part-00000", 4)  # before this run: not its speed, not its count
    stream = io.StringIO()
    with ProgressReporter(fs, str(tmp_path), total=12, interval=0.05, stream=stream) as reporter:
        assert not reporter.bar  # not a terminal
        _commit(tmp_path, "part-00001", 6, errors=2, skipped=1)
        time.sleep(0.3)
        _commit(tmp_path, "part-00002", 6)
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("encoded ") for line in lines)
    assert lines[-1].startswith("encoded 12/12 images (100.0%)") and lines[-1].endswith("ETA 0s, 2 errors, 1 skipped")


def test_a_terminal_gets_one_live_bar(tmp_path):
    fs = fsspec.filesystem("file")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with ProgressReporter(fs, str(tmp_path), total=10, interval=5.0, stream=stream) as reporter:
        assert reporter.bar
        _commit(tmp_path, "part-00000", 10, errors=3)
        time.sleep(1.3)  # a bar refreshes every second, whatever the line interval
    text = stream.getvalue()
    assert "encoding" in text and "10/10" in text and "3 errors, 0 skipped" in text and "img/s" in text
    assert "encoded " not in text  # no plain lines on a terminal


def test_a_terminal_without_a_size_still_gets_its_bar(tmp_path):
    """A fresh pseudo-terminal (`script`, `docker run -t`, an SSH session before its size is sent) says
    0 columns and 0 rows: tqdm would hide its bar there."""
    import pty

    master, slave = pty.openpty()
    stream = os.fdopen(slave, "w")
    assert os.get_terminal_size(slave).columns == 0
    try:
        with ProgressReporter(fsspec.filesystem("file"), str(tmp_path), total=4, interval=5.0, stream=stream) as reporter:
            _commit(tmp_path, "part-00000", 4)
            time.sleep(1.3)
        stream.flush()
        text = os.read(master, 1 << 16).decode()
    finally:
        stream.close()
        os.close(master)
    assert reporter.bar and "encoding" in text and "4/4" in text and "0 errors, 0 skipped" in text


def test_format_progress():
    assert format_progress(512, 10_000, 21.9, errors=1) == \
        "encoded 512/10000 images (5.1%), 23.4 images/s, ETA 6m45s, 1 error, 0 skipped"
    assert "ETA 1h56m" in format_progress(10, 10_000, 7.0) and "ETA ?" in format_progress(0, 10, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_non_terminal_run_prints_few_lines_and_no_ray_chatter(executor, demo_dir, tmp_path):
    """What `ray job submit` logs and a redirected run show: ned-ray's lines only, a bounded number."""
    from ned_ray.demo import write_demo_images

    write_demo_images(tmp_path / "imgs")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "ned_ray.cli", "encode", "--ned-dir", str(demo_dir), "--images",
                             str(tmp_path / "imgs"), "--models", "fmri/nsd/fwrf/sub-01/V1,eeg/things_eeg_2/vit_b_32/sub-01",
                             "--output", str(tmp_path / "o"), "--device", "cpu", "--shard-size", "4",
                             "--executor", executor, "--progress-every", "2"],
                            capture_output=True, text=True, timeout=900, env=env)
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    chatter = [line for line in lines if " INFO " in line or "Running" in line or "dataset_" in line or "row/s" in line
               or "Token authentication" in line or "Deprecat" in line or "issue_detector" in line]
    assert not chatter, result.stderr[-3000:]  # Ray's INFO lines, Ray Data's bars and its expected warnings: off
    progress = [line for line in lines if line.startswith("encoded ")]
    assert progress and progress[-1].startswith("encoded 14/14 images (100.0%)")
    assert len(progress) <= wall / 2 + 2  # a line every --progress-every seconds, and the last one
    assert len(lines) <= len(progress) + 3, result.stderr[-3000:]
    assert not [line for line in lines if "core_worker.cc" in line], result.stderr[-3000:]  # Ray's C++ actor notice
