"""Drivers killed mid-job and jobs started on a busy output, on local disk, S3 (moto) and GCS (emulator).

Nothing here sleeps for luck: each test waits for the state it needs (commits written, the killed
driver's Ray job dead with none of its actors alive).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ned_ray.errors import LeaseHeldError
from ned_ray.job.commit.lease import _ray_job_gone
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.output import open_output
from ned_ray.output.layout import LEASE
from ned_ray.storage import filesystem

from .conftest import random_png, store_with_images

REPO = Path(__file__).resolve().parents[2]
FMRI = "fmri/nsd/fwrf/sub-01/V1"
N = 240


@pytest.fixture(params=["local", "s3", "gs"])
def store(request, tmp_path):
    """(images URI, output URI, storage options, fs) on one store, the images already there."""
    return store_with_images(request, tmp_path, N)


def _driver(ray_cluster, demo_dir, images: str, out: str, options: dict, *extra: str) -> subprocess.Popen:
    args = ["--ned-dir", str(demo_dir), "--images", images, "--models", FMRI, "--output", out, "--device", "cpu",
            "--shard-size", "16", "--cpu-threads", "1", "--storage-options", json.dumps(options),
            "--ray-address", ray_cluster.get_runtime_context().gcs_address, "--lease-ttl", "8", *extra]
    return subprocess.Popen([sys.executable, str(REPO / "jobs" / "encode.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True)


def _wait(condition, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _committed(fs, out_root: str) -> list[str]:
    folder = f"{out_root}/_commits/images"
    fs.invalidate_cache(folder) if hasattr(fs, "invalidate_cache") else None
    return [p for p in fs.ls(folder, detail=False) if p.endswith(".json")] if fs.exists(folder) else []


def _lease(fs, out_root: str) -> dict:
    fs.invalidate_cache(out_root) if hasattr(fs, "invalidate_cache") else None
    return json.loads(fs.cat_file(f"{out_root}/{LEASE}"))


def _running_driver(ray_cluster, demo_dir, store, commits: int) -> subprocess.Popen:
    """A driver started on the store's output, once it has committed ``commits`` pieces (0: once it holds
    the output's lease) and still runs."""
    images, out, options, fs = store
    out_root = filesystem(out, options)[1]
    driver = _driver(ray_cluster, demo_dir, images, out, options)
    try:
        if commits:
            _wait(lambda: len(_committed(fs, out_root)) >= commits or driver.poll() is not None, f"{commits} commit(s)")
        else:  # the lease taken, nothing committed yet
            def leased() -> bool:
                fs.invalidate_cache(out_root) if hasattr(fs, "invalidate_cache") else None
                return fs.exists(f"{out_root}/{LEASE}")

            _wait(lambda: leased() or driver.poll() is not None, "the lease")
        assert driver.poll() is None, "the job finished before the test could act on it; use more images"
    except BaseException:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        raise
    return driver


def _config(demo_dir, images, out, options) -> EncodeConfig:
    return EncodeConfig(str(demo_dir), images, FMRI, out, device="cpu", shard_size=16, cpu_threads=1,
                        storage_options=options)


def test_sigkill_then_rerun_loses_and_duplicates_nothing(store, ray_cluster, demo_dir, tmp_path):
    images, out, options, fs = store
    out_root = filesystem(out, options)[1]
    driver = _running_driver(ray_cluster, demo_dir, store, commits=2)
    try:
        lease = _lease(fs, out_root)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    _wait(lambda: _ray_job_gone(lease), "the killed driver's Ray job and actors to be gone")
    assert not fs.exists(f"{out_root}/_manifest.json")
    with pytest.raises(FileNotFoundError, match="no _manifest.json"):
        open_output(out, options)  # a half-written output never looks complete
    committed = len(_committed(fs, out_root))
    summary = run_encode(_config(demo_dir, images, out, options))  # takes the dead job's lease over, resumes
    assert summary["run"]["skipped_images"] >= 2 * 16 and summary["run"]["encoded_images"] < N
    assert summary["run"]["skipped_images"] + summary["run"]["encoded_images"] == N and committed >= 2
    index, values = open_output(out, options).responses(FMRI)
    assert index.tolist() == list(range(N))  # nothing lost, nothing twice
    clean = run_encode(_config(demo_dir, images, str(tmp_path / "clean"), options))
    assert clean["run"]["encoded_images"] == N
    np.testing.assert_array_equal(values, open_output(str(tmp_path / "clean")).responses(FMRI)[1])


@pytest.mark.parametrize("store", ["local", "s3"], indirect=True)
def test_a_second_job_on_a_busy_output_is_refused_in_one_line(store, ray_cluster, demo_dir):
    images, out, options, fs = store
    out_root = filesystem(out, options)[1]
    images_root = filesystem(images, options)[1]
    total = 3 * N  # a longer job: the second one watches the first renew its lease (every 2 s) before it is refused
    for i in range(N, total):
        fs.pipe_file(f"{images_root}/img_{i:04d}.png", random_png(i))
    # from the moment the first job holds the lease (before its actors start), not its first commit: commits
    # come in bursts, and once the rest of a 3 x N job ended during the second attempt's wait (CI, 2026-12-07)
    first = _running_driver(ray_cluster, demo_dir, store, commits=0)
    try:
        for overwrite in (False, True):
            begun = time.monotonic()
            with pytest.raises(LeaseHeldError) as refused:
                run_encode(EncodeConfig(**{**_config(demo_dir, images, out, options).__dict__, "overwrite": overwrite}))
            message = str(refused.value)
            assert "\n" not in message and f"pid {first.pid}" in message and "it is alive" in message, message
            assert "--force" in message and time.monotonic() - begun < 8  # within a renewal or two
            assert first.poll() is None, "the first job ended before the second was refused: use more images"
        log, _ = first.communicate(timeout=300)
    except BaseException:
        if first.poll() is not None:  # the first job ended early: its log says why
            print(f"first job (exit {first.returncode}):\n{first.stdout.read()}")
        raise
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, log
    result = open_output(out, options)  # the first job, undisturbed: every image once
    assert result.responses(FMRI)[0].tolist() == list(range(total)) and result.manifest["images"]["ok"] == total
    assert not fs.exists(f"{out_root}/{LEASE}")


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_sigterm_to_a_driver_on_a_shared_cluster_stops_its_actors_before_the_lease_goes(store, ray_cluster, demo_dir):
    """`ray job stop` sends SIGTERM to jobs/encode.py: the job ends in one line (143), and its lease is
    released only once Ray reports none of its actors alive (nothing writes after a rerun takes over)."""
    from ned_ray.job.commit.lease import ray_job_actors_alive

    images, out, options, fs = store
    out_root = filesystem(out, options)[1]
    driver = _driver(ray_cluster, demo_dir, images, out, options)
    try:
        _wait(lambda: fs.exists(f"{out_root}/{LEASE}") or driver.poll() is not None, "the job's lease")
        job = _lease(fs, out_root)["ray_job_id"]
        seen: list[int] = []  # its encoder actors run on the session's cluster; on a loaded machine Ray Data
        # may commit the first images only once they are done, so they are watched until then

        def first_images_committed() -> bool:
            seen.append(ray_job_actors_alive(job))
            return len(_committed(fs, out_root)) >= 1 or driver.poll() is not None

        _wait(first_images_committed, "the first images committed")
        assert driver.poll() is None and max(seen) >= 1, "the job finished before the test could act on it"
        os.kill(driver.pid, signal.SIGTERM)
        _wait(lambda: not fs.exists(f"{out_root}/{LEASE}"), "the lease to be released")
        alive_at_release = ray_job_actors_alive(job)  # the moment the lease is gone, no actor of the job writes
        log, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 143, log
    assert log.strip().splitlines()[-1].startswith("encode: interrupted (SIGTERM): ") and "Traceback" not in log, log
    assert alive_at_release == 0
    summary = run_encode(_config(demo_dir, images, out, options))  # the same command resumes at once
    assert summary["run"]["skipped_images"] >= 16 and open_output(out, options).responses(FMRI)[0].tolist() == list(range(N))
