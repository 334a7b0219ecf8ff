"""Job fixtures: a real local Ray cluster, local S3 (moto) and GCS (gcp-storage-emulator) servers.

Servers are started here on free loopback ports and stopped by process id, also when a test fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# gcsfs probes each bucket over gRPC for 60 s unless this is off; it reads it at import, so it must be
# in the environment before Ray starts its workers.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, name: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout}s")


def _start(command: list[str], name: str, port: int):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, process, name)
    except Exception:
        process.kill()
        process.wait()
        raise
    return process


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free port; yields fsspec storage options for s3://."""
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    process = _start([str(moto), "-H", "127.0.0.1", "-p", str(port)], "moto_server (S3)", port)
    try:
        yield {"s3": {"key": "testing", "secret": "testing",
                      "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-west-2"}}}
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def gcs_server():
    """gcp-storage-emulator on a free port; yields fsspec storage options for gs://."""
    port = free_port()
    process = _start([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
                      "--in-memory", "--quiet"], "gcp-storage-emulator (GCS)", port)
    try:
        yield {"gs": {"token": "anon", "project": "test", "endpoint_url": f"http://127.0.0.1:{port}"}}
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def fixture_image_folder(tmp_path_factory, fixture_images) -> Path:
    """The fixtures' photographs as lossless PNG files (decoding them gives back the same arrays)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("fixture_pngs")
    for name in ("images", "images_small"):
        for i, image in enumerate(fixture_images[name]):
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{name}_{i:02d}.png")
    return folder


def check_berg_cases(output, cases: dict[str, list[str]], expected_dir: Path) -> None:
    """Each fixture case's BERG output (``expected_dir``: a BERG fixtures folder) against the job's
    models it maps to (fsaverage: lh then rh), on the images of the fixture image folder."""
    from ..conftest import PARITY, berg_expected

    ids = output.images().column("image_id").to_pylist()
    for case, models in cases.items():
        for images in ("images", "images_small"):
            path = expected_dir / "expected" / f"{case}__{images}"
            if not (path.with_suffix(".npy").exists() or path.with_suffix(".npz").exists()):
                continue
            rows = [i for i, name in enumerate(ids) if name.rsplit("_", 1)[0] == images]
            for mid, want in zip(models, berg_expected(expected_dir, case, images), strict=True):
                index, values = output.responses(mid)
                assert index.tolist() == list(range(len(ids)))
                got = values[rows]
                assert got.shape == want.shape, (case, mid, got.shape, want.shape)
                figure = float(np.abs(got - want).max() / want.std())
                PARITY[f"BERG {mid} {case} x {images} (Ray job)"] = figure
                assert figure <= 1e-4, (case, mid, images, figure)


@contextlib.contextmanager
def torch_threads(n: int):
    """Compute a reference with the job's thread count: float32 sums depend on how work is split."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def own_ray(**init_args):
    """A Ray cluster of its own for some tests (logical GPUs, several nodes); the session's local
    2-CPU cluster is restored afterwards if it was running."""
    import ray
    import ray.data  # noqa: F401 - before ray.init, as in the session's cluster (tests/conftest.py)

    was_running = ray.is_initialized()
    ray.shutdown()
    ray.init(**init_args)
    try:
        yield ray
    finally:
        ray.shutdown()
        if was_running:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


@contextlib.contextmanager
def autoscaler_node_types(*groups: tuple[str, dict, int]):
    """Publish autoscaler node types in the GCS, as KubeRay and Ray's autoscaler v2 do:
    (name, resources, max_count) each. Withdrawn afterwards."""
    import ray
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(name=name, resources=resources, min_count=0, max_count=max_count)
        for name, resources, max_count in groups])
    client = ray._private.worker.global_worker.gcs_client
    client.report_cluster_config(config.SerializeToString())
    try:
        yield
    finally:
        client.report_cluster_config(autoscaler_pb2.ClusterConfig().SerializeToString())


def random_png(seed: int, side: int = 48) -> bytes:
    """A small PNG of random pixels (each seed its own image)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def store_with_images(request, tmp_path: Path, n: int) -> tuple[str, str, dict, object]:
    """(images URI, output URI, storage options, fs) on the store ``request.param`` names (local, s3
    or gs: a bucket of this test on the emulator), with ``n`` random PNGs already there."""
    from ned_ray.storage import filesystem

    if request.param == "local":
        options, base = {}, str(tmp_path)
    else:
        options = request.getfixturevalue("s3_server" if request.param == "s3" else "gcs_server")
        bucket = f"ned-ray-{request.param}-{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]}-{os.getpid()}"
        base = f"{request.param}://{bucket}"
        filesystem(base, options)[0].mkdir(bucket)
    fs, root = filesystem(f"{base}/images", options)
    fs.makedirs(root, exist_ok=True)
    for i in range(n):
        fs.pipe_file(f"{root}/img_{i:04d}.png", random_png(i))
    return f"{base}/images", f"{base}/out", options, fs


@pytest.fixture
def local_reads(monkeypatch) -> list[int]:
    """The sizes of every read from a local file through fsspec, from now on."""
    import fsspec.implementations.local as local

    reads: list[int] = []
    original = local.LocalFileOpener.read

    def counting(self, *args, **kwargs):
        data = original(self, *args, **kwargs)
        reads.append(len(data))
        return data

    monkeypatch.setattr(local.LocalFileOpener, "read", counting)
    return reads
