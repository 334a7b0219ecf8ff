"""The cluster a job sees: live nodes, autoscaler node types, and waiting for GPUs that never come."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from ned_ray.cli import main as cli_main
from ned_ray.job.cluster import ClusterShape
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
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


def _cuda_job(demo_dir, tmp_path, *extra: str) -> tuple[int, list[str], float]:
    args = ["encode", "--ned-dir", str(demo_dir), "--images", str(_images(tmp_path / "images")), "--models", FMRI,
            "--output", str(tmp_path / "out"), "--device", "cuda", *extra]
    start = time.monotonic()
    code = cli_main(args)
    return code, time.monotonic() - start


def test_device_cuda_on_a_cluster_that_cannot_get_a_gpu_fails_at_once(ray_cluster, demo_dir, tmp_path, capsys):
    code, waited = _cuda_job(demo_dir, tmp_path)  # the default --gpu-wait is 600 s: none of it is waited
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and waited < 60, waited
    assert len(err) == 1 and "--device cuda: the Ray cluster has no GPU and cannot get one (it has no autoscaler)" in err[0]
    assert "0 GPU" in err[0] and "fixed size" in err[0], err
    with autoscaler_node_types(("cpu_worker", {"CPU": 8}, 4)):  # an autoscaler, but of CPU nodes only
        (tmp_path / "b").mkdir()
        code, waited = _cuda_job(demo_dir, tmp_path / "b")
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and waited < 60 and "(its autoscaler launches no GPU node type)" in err[0], err
    assert not (tmp_path / "out" / "_manifest.json").exists()


def test_device_cuda_waits_only_for_gpus_the_autoscaler_can_launch(ray_cluster, demo_dir, tmp_path, capsys):
    with autoscaler_node_types(("gpu_worker", {"CPU": 4, "GPU": 1}, 4)):  # launchable, but nothing launches it here
        code, waited = _cuda_job(demo_dir, tmp_path, "--gpu-wait", "2")
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and waited >= 2, waited
    assert len(err) == 1 and "--device cuda: no GPU joined the Ray cluster within --gpu-wait 2s" in err[0], err


def test_device_cuda_on_a_machine_without_gpu_and_no_cluster_fails_at_once(demo_dir, tmp_path):
    """A laptop: nothing could give the job a GPU, so it does not even start Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ned_ray.cli", "encode", "--ned-dir", str(demo_dir), "--images",
                           str(_images(tmp_path / "images")), "--models", FMRI, "--output", str(tmp_path / "out"),
                           "--device", "cuda"], capture_output=True, text=True, env=env, timeout=300)
    seconds = time.monotonic() - start
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "--device cuda: this machine has no GPU that torch can use, and no Ray cluster was given" in done.stderr
    assert "Started a local Ray instance" not in done.stderr and seconds < 60
    print(f"\n--device cuda without a GPU: exit 2 after {seconds:.1f}s (whole process)")


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
