"""Models added to an existing output (invariant 10 of job/commit/transaction.py): the same command
with more --models computes only the new ones and leaves the others' committed parts as they are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ned_ray.errors import OutputExistsError
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import plan_encode, run_encode
from ned_ray.output import open_output
from ned_ray.summaries import format_plan

EEG = "eeg/things_eeg_2/vit_b_32/sub-01"
FMRI = "fmri/nsd/fwrf/sub-01/V1"


@pytest.fixture
def images(tmp_path: Path) -> Path:
    from ned_ray.demo import write_demo_images

    write_demo_images(tmp_path / "images")
    return tmp_path / "images"


def _config(demo_dir, images, out, models, **kw) -> EncodeConfig:
    return EncodeConfig(str(demo_dir), str(images), models, str(out), device="cpu", shard_size=4, cpu_threads=1,
                        formats=("parquet", "npy"), **kw)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_more_models_are_added_and_only_they_are_computed(executor, request, demo_dir, images, tmp_path):
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    out = tmp_path / "out"
    run_encode(_config(demo_dir, images, out, EEG, executor=executor))
    eeg_files = {k: v for k, v in _files(out).items() if k.startswith(("eeg/", "_commits/models-"))}
    before = open_output(str(out)).responses(EEG)

    planned = plan_encode(_config(demo_dir, images, out, f"{EEG},{FMRI}", executor=executor))
    assert planned["computing"] == [FMRI] and "1 model(s) to compute, 1 complete (not loaded)" in format_plan(planned)
    grown = run_encode(_config(demo_dir, images, out, f"{EEG},{FMRI}", executor=executor))
    assert grown["run"]["model_groups"] == [[FMRI]]  # the new model alone: one backbone pass, for it
    assert grown["run"]["encoded_images"] == 14 and sorted(grown["models"]) == [EEG, FMRI]
    after = {k: v for k, v in _files(out).items() if k in eeg_files}
    assert after == eeg_files  # the EEG parts and markers: not rewritten, not touched
    result = open_output(str(out))
    np.testing.assert_array_equal(result.responses(EEG)[1], before[1])
    fresh = run_encode(_config(demo_dir, images, tmp_path / "fresh", f"{EEG},{FMRI}", executor="local"))
    assert fresh["images"] == grown["images"]
    np.testing.assert_array_equal(result.responses(FMRI)[1], open_output(str(tmp_path / "fresh")).responses(FMRI)[1])
    assert json.loads((out / "_job.json").read_text())["identity"]["models"] == f"{EEG},{FMRI}"
    again = run_encode(_config(demo_dir, images, out, f"{EEG},{FMRI}", executor=executor))
    assert again["run"]["plan"] == "nothing to do"


def test_a_model_left_out_or_another_option_changed_is_still_refused(demo_dir, images, tmp_path):
    out = tmp_path / "out"
    run_encode(_config(demo_dir, images, out, f"{EEG},{FMRI}", executor="local"))
    with pytest.raises(OutputExistsError, match=f"holds 1 model.s. that --models leaves out .e.g. {FMRI}.; models can "
                                                "be added to an output, not removed"):
        run_encode(_config(demo_dir, images, out, EEG, executor="local"))
    with pytest.raises(OutputExistsError, match="differs in: min_ncsnr, models"):
        run_encode(_config(demo_dir, images, out, f"{EEG},{FMRI},fmri/nsd/fwrf/sub-02/V1", executor="local",
                           min_ncsnr=0.1))
    assert (out / "_manifest.json").exists()  # a refused run changes nothing
