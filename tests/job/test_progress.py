"""The job's one progress display (ned_ray/job/progress.py): a live tqdm bar on a terminal, plain
lines elsewhere, both counting images, errors and skipped images from the commit markers."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import fsspec

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


def test_format_progress():
    assert format_progress(512, 10_000, 21.9, errors=1) == \
        "encoded 512/10000 images (5.1%), 23.4 images/s, ETA 6m45s, 1 error, 0 skipped"
    assert "ETA 1h56m" in format_progress(10, 10_000, 7.0) and "ETA ?" in format_progress(0, 10, 1.0)

