"""The cluster a job sees: live nodes, autoscaler node types, and waiting for GPUs that never come."""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from ned_ray.cli import main as cli_main
from ned_ray.job.cluster import ClusterShape
from ned_ray.job.config import EncodeConfig
from ned_ray.job.pipeline import run_encode
from ned_ray.output import open_output

from .conftest import autoscaler_node_types

FMRI = "fmri/nsd/fwrf/sub-01/V1"


def _images(folder, n=3):
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_live_cluster_and_autoscaler_node_types(ray_cluster):
    shape = ClusterShape.from_ray()
    assert (shape.cpus_now, shape.gpus_now, shape.gpus_max, shape.autoscaling) == (2, 0, 0, False)
    assert "no autoscaler found" in shape.source
    with autoscaler_node_types(("gpu_worker", {"CPU": 8, "GPU": 1, "accelerator_type:A10G": 1}, 8)):
        shape = ClusterShape.from_ray()
        assert (shape.cpus_now, shape.gpus_now, shape.gpus_max, shape.cpus_max) == (2, 0, 8, 66)
        assert shape.gpu_memory() == 24 << 30 and "GCS cluster config" in shape.source
    assert ClusterShape.from_ray().gpus_max == 0


def test_device_cuda_without_gpus_or_autoscaler_fails_after_the_wait(ray_cluster, demo_dir, tmp_path, capsys):
    args = ["encode", "--ned-dir", str(demo_dir), "--images", str(_images(tmp_path / "images")), "--models", FMRI,
            "--output", str(tmp_path / "out"), "--device", "cuda", "--gpu-wait", "2"]
    start = time.monotonic()
    assert cli_main(args) == 2
    waited = time.monotonic() - start
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "--device cuda: no GPU joined the Ray cluster within --gpu-wait 2s" in err[0], err
    assert "0 GPU" in err[0] and "fixed size" in err[0] and waited >= 2


def test_auto_waits_for_launchable_gpus_then_runs_on_cpu(ray_cluster, demo_dir, tmp_path):
    """An autoscaler that could launch GPU nodes but does not (here: nothing launches them)."""
    stream = io.StringIO()
    config = EncodeConfig(str(demo_dir), str(_images(tmp_path / "images")), FMRI, str(tmp_path / "out"),
                          gpu_wait=2, cpu_threads=1)
    with autoscaler_node_types(("gpu_worker", {"CPU": 4, "GPU": 1}, 4)):
        summary = run_encode(config, stream=stream)
    assert "no GPU joined the Ray cluster within --gpu-wait 2s" in stream.getvalue()
    assert "--device auto continues on CPU" in stream.getvalue()
    assert summary["job"]["plan"]["device"] == "cpu" and summary["images"]["ok"] == 3
    assert [d["ran_on"] for d in summary["devices"]] == [{"cpu": 3}]
    assert open_output(config.output).responses(FMRI)[0].tolist() == [0, 1, 2]
