"""deploy/slurm/ned-ray.sbatch on an emulated 2-node Slurm allocation: Slurm's variables set as Slurm
sets them, ``srun``/``scontrol`` emulated on this machine (tests/deploy/fake_slurm.py), two
Ray nodes with logical GPUs. The job's output equals the in-process run's, and every Ray process
the script started is gone when it ends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from ned_ray import EncodeConfig, open_output, run_encode

from ..job.conftest import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "slurm" / "ned-ray.sbatch"
MODELS = "fmri/nsd/fwrf/sub-01/V1,eeg/things_eeg_2/vit_b_32/sub-01"


def _fake_slurm(folder: Path) -> Path:
    folder.mkdir()
    for tool in ("srun", "scontrol"):
        path = folder / tool
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests" / "deploy" / "fake_slurm.py"}" {tool} "$@"\n')
        path.chmod(0o755)
    return folder


def _ray_processes(scratch: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(scratch) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_the_sbatch_script_runs_the_job_on_two_nodes_and_stops_what_it_started(tmp_path, demo_dir, s3_server, request):
    """The NED directory on S3 (moto), as a lab's bucket: each node keeps its model files on scratch."""
    from ned_ray.demo import write_demo_images
    from ned_ray.storage import filesystem

    fs, _ = filesystem("s3://ned-ray-slurm", s3_server)
    fs.mkdir("ned-ray-slurm")
    for path in demo_dir.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"ned-ray-slurm/ned/{path.relative_to(demo_dir).as_posix()}", path.read_bytes())

    images = tmp_path / "images"
    write_demo_images(images)
    scratch = tmp_path / "scratch"  # too long a path for Ray's sockets: the script puts Ray's own files in /tmp
    job = str(os.getpid())
    ray_tmp = Path(f"/tmp/ned-ray-{job}")
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    env = {**os.environ, "PATH": f"{_fake_slurm(tmp_path / 'bin')}:{os.environ['PATH']}", "SLURM_JOB_ID": job,
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2", "SLURM_CPUS_PER_TASK": "2", "SLURM_GPUS_ON_NODE": "1",
           "NED_RAY_SCRATCH": str(scratch), "NED_RAY_VENV": sys.prefix, "NED_RAY_REPO": str(REPO),
           "RAY_PORT": str(free_port()), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "out"
    args = ["--ned-dir", "s3://ned-ray-slurm/ned", "--storage-options", json.dumps(s3_server), "--images", str(images),
            "--models", MODELS, "--output", str(out), "--shard-size", "4", "--cpu-threads", "1", "--device", "auto"]
    result = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=1200,
                            start_new_session=True)  # as sbatch starts a batch script: its own session
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "ned-ray: 2 Ray nodes" in log and "'GPU': 2.0" in log, log[-4000:]  # two nodes, a logical GPU each
    assert "stopping the Ray nodes this job started (2)" in log
    assert f"Ray's logs in {ray_tmp}" in log and (ray_tmp / "session_latest").exists()
    assert _ray_processes(ray_tmp) == []  # nothing it started is left running
    cache = scratch / f"ned-ray-{job}" / "model-cache"  # the model files kept on node-local scratch
    assert any(line.endswith("weights_sub-01_roi-V1.pt") for line in (cache / "downloads.log").read_text().splitlines()), \
        list(cache.iterdir())
    reference = tmp_path / "reference"
    run_encode(EncodeConfig(str(demo_dir), str(images), MODELS, str(reference), device="cpu", executor="local",
                            shard_size=4, cpu_threads=1))
    ours, theirs = open_output(str(out)), open_output(str(reference))
    assert ours.models == theirs.models and ours.manifest["job"]["executor"]["name"] == "ray"
    assert ours.images().column("image_id").to_pylist() == theirs.images().column("image_id").to_pylist()
    for model in ours.models:
        np.testing.assert_array_equal(ours.responses(model)[1], theirs.responses(model)[1])
