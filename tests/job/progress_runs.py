"""Not collected yet (issue 23, unverified): the non-terminal runs of the progress display."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_non_terminal_run_prints_few_lines_and_no_ray_chatter(executor, demo_dir, tmp_path):
    """What `ray job submit` logs and a redirected run show: ned-ray's lines only, a bounded number."""
    from ned_ray.demo import write_demo_images

    write_demo_images(tmp_path / "imgs")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-m", "ned_ray.cli", "encode", "--ned-dir", str(demo_dir), "--images",
                             str(tmp_path / "imgs"), "--models", "fmri/nsd/fwrf/sub-01/V1,eeg/things_eeg_2/vit_b_32/sub-01",
                             "--output", str(tmp_path / "o"), "--device", "cpu", "--shard-size", "4",
                             "--executor", executor, "--progress-every", "2"],
                            capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert not [line for line in lines if " INFO " in line or "Running Dataset" in line or "Dataset dataset_" in line], \
        result.stderr[-3000:]
    progress = [line for line in lines if line.startswith("encoded ")]
    assert progress and progress[-1].startswith("encoded 14/14 images (100.0%)")
    assert len(lines) <= len(progress) + 8, result.stderr[-3000:]  # a warning or two at most besides progress
