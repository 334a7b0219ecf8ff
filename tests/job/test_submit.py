"""`ray job submit` against a local `ray start --head` runs jobs/encode.py to completion."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ned_ray.output import open_output

from .conftest import _wait_for_port, free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_head():
    """A separate Ray head (own temp dir, token auth), stopped by its process group when the test ends."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    for attempt in range(3):  # a port chosen free may be taken before the head binds it (a loaded machine)
        head, temp_dir, dashboard = _start_head(env)
        try:
            _wait_for_port(dashboard, head, "ray dashboard", timeout=120)
            break
        except RuntimeError:
            log = (Path(temp_dir) / "head.log").read_text()[-2000:]
            _stop_head(head, temp_dir)
            if attempt == 2:
                raise RuntimeError(f"`ray start --head` failed three times; its last output:\n{log}") from None
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        _stop_head(head, temp_dir)


def _start_head(env: dict) -> tuple[subprocess.Popen, str, int]:
    """`ray start --head --block` on fresh ports, its output in ``temp_dir/head.log``."""
    temp_dir = tempfile.mkdtemp(prefix="nrhead", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    port, dashboard = free_port(), free_port()
    with open(Path(temp_dir) / "head.log", "wb") as log:
        head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
             f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}",
             "--disable-usage-stats",
             # own ports for every per-node agent: the session's in-process test cluster holds the defaults
             *[f"--{flag}={free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                      "metrics-export-port", "runtime-env-agent-port",
                                                      "node-manager-port", "object-manager-port")]],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return head, temp_dir, dashboard


def _stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.pid, sig)  # everything `ray start` launched lives in this process group
        except ProcessLookupError:
            break
        try:
            head.wait(timeout=20)
            time.sleep(1)
        except subprocess.TimeoutExpired:
            continue
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_encode_job(ray_head, demo_dir, tmp_path):
    from ned_ray.demo import write_demo_images

    address, env = ray_head
    write_demo_images(tmp_path / "images")
    out = tmp_path / "out"
    command = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir",
               str(REPO), "--", sys.executable, "jobs/encode.py", "--ned-dir", str(demo_dir), "--images",
               str(tmp_path / "images"), "--models", "fmri/nsd/fwrf/sub-01/*,eeg/things_eeg_2/vit_b_32/sub-03",
               "--output", str(out), "--device", "cpu"]
    deadline = time.time() + 120
    while True:  # the job server answers before the node's job agent is ready
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
        if "No available agent" not in result.stderr + result.stdout or time.time() > deadline:
            break
        time.sleep(2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    output = open_output(str(out))
    assert output.manifest["images"]["ok"] == 14 and len(output.models) == 4
    assert output.responses("eeg/things_eeg_2/vit_b_32/sub-03")[1].shape == (14, 4, 63, 140)
