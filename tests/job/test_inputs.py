"""Inputs through the whole job, on both executors: an output inside its input folder is never read as
input, and a Parquet table of image paths is encoded like the files it names."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.output import open_output

FMRI = "fmri/nsd/fwrf/sub-01/V1"


def _images(folder: Path, n: int = 6) -> list[str]:
    folder.mkdir(parents=True)
    names = []
    for i in range(n):
        name = f"{'ab'[i % 2]}/img_{i}.png"
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return sorted(names)


def _config(demo_dir: Path, images: str, out: Path, executor: str, **kw) -> EncodeConfig:
    return EncodeConfig(str(demo_dir), images, FMRI, str(out), device="cpu", shard_size=4, cpu_threads=1,
                        executor=executor, **kw)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_an_output_inside_the_input_folder_is_never_listed(ray_cluster, demo_dir, tmp_path, executor):
    names = _images(tmp_path / "stimuli")
    out = tmp_path / "stimuli" / "responses"
    for run in range(2):  # the rerun finds the output's parts, markers and listing inside the input
        stream = io.StringIO()
        summary = run_encode(_config(demo_dir, str(tmp_path / "stimuli"), out, executor), stream=stream)
        assert summary["images"] == {"total": 6, "ok": 6, "error": 0, "skipped": 0, "file": "images.parquet"}
        assert summary["run"]["encoded_images"] == (6 if run == 0 else 0)
        notes = [line for line in stream.getvalue().splitlines() if "lies inside the input" in line]
        assert len(notes) == 1 and "its files are not inputs" in notes[0]
    images = open_output(str(out)).images()
    assert images.column("image_id").to_pylist() == names and set(images.column("status").to_pylist()) == {"ok"}


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_parquet_table_of_image_paths_is_encoded_like_the_files(ray_cluster, demo_dir, tmp_path, executor):
    names = _images(tmp_path / "data" / "stimuli")
    table = pa.table({"nsd_id": list(range(len(names), 0, -1)), "filename": [f"stimuli/{n}" for n in reversed(names)],
                      "split": ["train"] * len(names)})
    pq.write_table(table, tmp_path / "data" / "meta.parquet")
    by_table = run_encode(_config(demo_dir, str(tmp_path / "data" / "meta.parquet"), tmp_path / "t", executor))
    by_folder = run_encode(_config(demo_dir, str(tmp_path / "data" / "stimuli"), tmp_path / "f", "local"))
    assert by_table["images"]["ok"] == by_folder["images"]["ok"] == len(names)
    table_out, folder_out = open_output(str(tmp_path / "t")), open_output(str(tmp_path / "f"))
    assert table_out.images().column("image_id").to_pylist() == [f"stimuli/{n}" for n in names]  # sorted, relative
    np.testing.assert_allclose(table_out.responses(FMRI)[1], folder_out.responses(FMRI)[1], rtol=0, atol=1e-6)
