"""examples/tutorial.py runs end to end on the demo models (a real Ray job) and its steps give results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_tutorial_runs_on_the_demo(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "examples" / "tutorial.py"), "--workdir", str(tmp_path),
                             "--device", "cpu"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for heading in ("1. Browse", "2. Encode", "3. Metadata", "4. Plots", "5. EEG pairwise decoding"):
        assert heading in out
    assert "14 images encoded, 0 errors" in out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["eeg_timecourses.png", "eeg_topomaps.png", "fmri_distributions.png",
                                                                     "heatmap.png"]
    assert (tmp_path / "responses.nii.gz").stat().st_size > 0
    peak = float(out.split("peak accuracy ")[1].split("%")[0])
    assert 50 < peak <= 100  # images are told apart above chance


def test_pairwise_decoding_is_at_chance_on_noise_and_perfect_on_signal():
    sys.path.insert(0, str(REPO / "examples"))
    from tutorial import pairwise_decoding

    rng = np.random.default_rng(0)
    noise = rng.standard_normal((20, 4, 8, 30))
    assert abs(pairwise_decoding(noise, np.arange(8)).mean() - 0.5) < 0.05
    signal = rng.standard_normal((20, 1, 8, 30)) * 5 + 0.1 * rng.standard_normal((20, 4, 8, 30))
    assert pairwise_decoding(signal, np.arange(8)).min() > 0.99
