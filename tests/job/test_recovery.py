"""After a crash or an interrupt, the same command resumes at once; interrupts are one line.

A driver SIGKILLed while encoding, while committing a piece (its data written, its marker not) and
while finalizing, on both executors, on local disk and S3 (moto): the rerun of the same command takes
the dead job's lease over at once (saying so), and the output holds every image exactly once, equal to
a clean run. SIGINT and SIGTERM stop a job in one line (exit 130/143), release the lease, and the
rerun resumes without waiting.
"""

from __future__ import annotations

import json
import os
import posixpath
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.output import open_output
from ned_ray.output.layout import LEASE
from ned_ray.storage import filesystem

from .conftest import random_png, store_with_images

REPO = Path(__file__).resolve().parents[2]
FMRI = "fmri/nsd/fwrf/sub-01/V1"
N = 240
SHARD = 16


@pytest.fixture(scope="module")
def clean(tmp_path_factory, demo_dir) -> np.ndarray:
    """The responses of an uninterrupted run (in process), and the images' folder it read."""
    base = tmp_path_factory.mktemp("clean")
    (base / "images").mkdir()
    for i in range(N):
        (base / "images" / f"img_{i:04d}.png").write_bytes(random_png(i))
    run_encode(EncodeConfig(str(demo_dir), str(base / "images"), FMRI, str(base / "out"), device="cpu",
                            shard_size=SHARD, cpu_threads=1, executor="local"))
    return open_output(str(base / "out")).responses(FMRI)[1]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """(images URI, output URI, storage options, fs) on one store, the images already there."""
    return store_with_images(request, tmp_path, N)


def _args(demo_dir, images: str, out: str, options: dict) -> list[str]:
    return ["--ned-dir", str(demo_dir), "--images", images, "--models", FMRI, "--output", out, "--device", "cpu",
            "--shard-size", str(SHARD), "--cpu-threads", "1", "--storage-options", json.dumps(options), "--quiet"]


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT handled by default in the driver, as in a terminal: a test suite started in the background
    (``cmd &`` in a non-interactive shell, ``nohup``) runs with SIGINT ignored, which a child inherits and
    Python then keeps (the job would rightly ignore the Ctrl-C it simulates)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    return env


def _listed(fs, folder: str) -> list[str]:
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(folder)
    return [p for p in fs.ls(folder, detail=False) if p.endswith(".json")] if fs.exists(folder) else []


def _wait(condition, what: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the driver exited ({process.returncode}) before {what}: {process.stdout.read()}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _rerun(args: list[str], executor: str) -> tuple[subprocess.CompletedProcess, float]:
    begun = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ned_ray.cli", "encode", *args, "--executor", executor],
                          capture_output=True, text=True, env=_env(), timeout=600)
    return done, time.monotonic() - begun


def _check_complete(out: str, options: dict, fs, clean: np.ndarray) -> None:
    result = open_output(out, options)
    index, values = result.responses(FMRI)
    assert index.tolist() == list(range(N)) and result.manifest["images"]["ok"] == N  # nothing lost, nothing twice
    np.testing.assert_array_equal(values, clean)
    root = filesystem(out, options)[1]
    assert not fs.exists(f"{root}/{LEASE}")
    assert [p for p in fs.find(root) if posixpath.basename(p).startswith(".tmp-")] == []  # no temporary file left


POINTS = ("encoding", "committing", "finalizing")
KILLS = ([("local", point, where) for point in POINTS for where in ("local", "s3")]  # in process: every point, both stores
         + [("ray", point, "local") for point in POINTS] + [("ray", "encoding", "s3")])  # Ray Data: ~1 min a case


@pytest.mark.slow
@pytest.mark.parametrize("executor, point, store", KILLS, indirect=["store"])
def test_a_sigkilled_job_is_resumed_at_once_by_the_same_command(store, demo_dir, clean, executor, point):
    images, out, options, fs = store
    args = _args(demo_dir, images, out, options)
    root = filesystem(out, options)[1]
    driver = subprocess.Popen([sys.executable, "-m", "tests.job.killed_driver",
                               "none" if point == "encoding" else point, executor, "--", *args],
                              cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        if point == "encoding":  # killed from outside once it has committed some shards
            _wait(lambda: len(_listed(fs, f"{root}/_commits/images")) >= 2, "2 commits", driver)
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == -signal.SIGKILL, driver.stdout.read()
    assert fs.exists(f"{root}/{LEASE}") and not fs.exists(f"{root}/_manifest.json")  # the dead job's lease is left
    committed = len(_listed(fs, f"{root}/_commits/images"))
    if point == "finalizing":
        assert committed == N // SHARD

    done, seconds = _rerun(args, executor)
    assert done.returncode == 0, done.stderr
    took_over = [line for line in done.stderr.splitlines() if "took over its lease" in line]
    assert len(took_over) == 1 and "is gone" in took_over[0], done.stderr
    waited = float(took_over[0].split("after waiting ")[1].split("s)")[0]) if "after waiting" in took_over[0] else 0.0
    assert waited < 30, took_over  # the lease's ttl is 120 s: the rerun did not wait for it
    print(f"\nSIGKILL {point} ({executor}, {'s3' if images.startswith('s3') else 'local'}): rerun took the lease "
          f"over after {waited:.0f}s, whole rerun {seconds:.1f}s; {committed} of {N // SHARD} shards were committed")
    _check_complete(out, options, fs, clean)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_stop_a_job_in_one_line_and_the_rerun_resumes(tmp_path, demo_dir, clean, executor, signum):
    (tmp_path / "images").mkdir()
    for i in range(N):
        (tmp_path / "images" / f"img_{i:04d}.png").write_bytes(random_png(i))
    out = str(tmp_path / "out")
    args = _args(demo_dir, str(tmp_path / "images"), out, {})
    driver = subprocess.Popen([sys.executable, "-m", "ned_ray.cli", "encode", *args, "--executor", executor],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True, preexec_fn=_ctrl_c_as_in_a_terminal)
    fs = filesystem(out)[0]
    try:
        _wait(lambda: len(_listed(fs, f"{out}/_commits/images")) >= 2, "2 commits", driver)
        # Ctrl-C in a terminal signals the whole process group; Slurm, Kubernetes and `timeout` the process
        (os.killpg if signum == signal.SIGINT else os.kill)(driver.pid, signum)
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    name = signal.Signals(signum).name
    assert driver.returncode == 128 + signum, err
    ours = [line for line in err.splitlines() if line.startswith("ned-ray encode:")]
    assert len(ours) == 1 and "Traceback" not in err, err
    assert ours[0].startswith(f"ned-ray encode: interrupted ({name}): ") and ours[0].endswith(
        f"images committed in '{out}'; rerun the same command to resume"), ours
    assert not (Path(out) / LEASE).exists() and not (Path(out) / "_manifest.json").exists()  # released, not complete
    done, seconds = _rerun(args, executor)
    assert done.returncode == 0 and "lease" not in done.stderr, done.stderr  # free: taken without waiting
    print(f"\n{name} ({executor}): '{ours[0]}'; rerun {seconds:.1f}s")
    _check_complete(out, {}, fs, clean)
