"""GPU plans executed here, without a GPU: logical GPUs and a multi-node cluster (Ray's own means).

Ray schedules actors on logical GPUs as on real ones; inside them torch sees no CUDA device, which is
exactly the fallback path (``--device auto``) and the failure path (``--device cuda``) of a real
cluster whose GPU driver is broken.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ned_ray.errors import DeviceError, StorageError
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.output import open_output
from ned_ray.storage import filesystem

from .conftest import own_ray
from .faults import hide_paths_on_marked_nodes

FMRI = ["fmri/nsd/fwrf/sub-01/V1", "fmri/nsd/fwrf/sub-01/lateral", "fmri/nsd/fwrf/sub-02/V1"]
N_IMAGES, SHARD = 16, 2


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpu_images")
    rng = np.random.default_rng(11)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def cpu_reference(ray_cluster, demo_dir, images, tmp_path_factory):
    """Every demo model on the session's single-node CPU cluster: what every other plan must equal."""
    out = tmp_path_factory.mktemp("cpu_reference") / "out"
    run_encode(EncodeConfig(str(demo_dir), str(images), "all", str(out), device="cpu", shard_size=SHARD, cpu_threads=1))
    return open_output(str(out))


def _assert_same(output, reference, models) -> None:
    for mid in models:
        index, values = output.responses(mid)
        ref_index, ref_values = reference.responses(mid)
        assert index.tolist() == ref_index.tolist() == list(range(N_IMAGES))
        np.testing.assert_array_equal(values, ref_values)


def _encoder_actors():
    from ray.util.state import list_actors

    return [a for a in list_actors(detail=True, limit=10_000) if "GroupEncoder" in a.class_name]


def test_logical_gpus_auto_requests_gpus_falls_back_to_cpu_and_equals_cpu(cpu_reference, demo_dir, images, tmp_path):
    stream = io.StringIO()
    with own_ray(num_cpus=2, num_gpus=2, log_to_driver=False):
        summary = run_encode(EncodeConfig(str(demo_dir), str(images), "all", str(tmp_path / "out"), device="auto",
                                          shard_size=SHARD, cpu_threads=1), stream=stream)
        actors = _encoder_actors()
        with pytest.raises(DeviceError) as failure:  # --device cuda where torch sees no GPU: one line, the node
            run_encode(EncodeConfig(str(demo_dir), str(images), "all", str(tmp_path / "strict"), device="cuda",
                                    shard_size=SHARD, cpu_threads=1))
    plan = summary["job"]["plan"]
    assert plan["device"] == "cuda" and all(p["gpus_per_actor"] > 0 for p in plan["pools"])
    assert actors and all(a.required_resources.get("GPU", 0) > 0 for a in actors)  # Ray granted GPUs
    assert [(d["pool"], d["planned"], d["ran_on"]) for d in summary["devices"]] == [
        ("eeg", "cuda", {"cpu": N_IMAGES}), ("fmri", "cuda", {"cpu": N_IMAGES})]
    warnings = [line for line in stream.getvalue().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "planned on GPUs but computed on CPU" in warnings[0]  # once per job
    _assert_same(open_output(str(tmp_path / "out")), cpu_reference, cpu_reference.models)
    message = str(failure.value)
    assert "\n" not in message and "torch sees no CUDA device" in message and "on node " in message
    assert not (tmp_path / "strict" / "_manifest.json").exists()


def _upload(local: Path, fs, remote: str) -> None:
    for path in local.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"{remote}/{path.relative_to(local).as_posix()}", path.read_bytes())


def test_multi_node_pool_spans_workers_with_a_per_node_model_cache(cpu_reference, s3_server, demo_dir, images,
                                                                   tmp_path):
    """A CPU head and two workers with one logical GPU each; the NED directory on S3 (moto)."""
    import ray
    from ray.cluster_utils import Cluster

    fs, _ = filesystem("s3://ned-ray-multinode", s3_server)
    fs.mkdir("ned-ray-multinode")
    _upload(demo_dir, fs, "ned-ray-multinode/ned")
    cache = tmp_path / "model-cache"
    config = EncodeConfig("s3://ned-ray-multinode/ned", str(images), ",".join(FMRI), str(tmp_path / "out"),
                          shard_size=SHARD, cpu_threads=1, model_cache=str(cache), storage_options=s3_server)
    was_running = ray.is_initialized()
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": hide_paths_on_marked_nodes()})
        summary = run_encode(config)
        actors = _encoder_actors()
        # a node that cannot see a local path: refused up front, in one line naming the node
        blind = cluster.add_node(num_cpus=1, env_vars={"NED_RAY_TEST_HIDE": str(tmp_path)})
        cluster.wait_for_nodes()
        with pytest.raises(StorageError) as hidden:
            run_encode(EncodeConfig(str(demo_dir), str(images), FMRI[0], str(tmp_path / "blind"), device="cpu"))
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_running:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    (pool,) = summary["job"]["plan"]["pools"]
    assert (pool["name"], pool["max_actors"], pool["gpus_per_actor"]) == ("fmri", 2, 1.0)
    worker_ids = {w.node_id for w in workers}
    assert {a.node_id for a in actors} == worker_ids  # one model group's pool on both workers
    assert set(summary["devices"][0]["nodes"]) <= {w.address.split(":")[0] for w in workers} | {"127.0.0.1"}
    _assert_same(open_output(config.output), cpu_reference, FMRI)
    # model files reached the node's cache once each, whole, and never through the driver
    log = [line.split("\t") for line in (cache / "downloads.log").read_text().splitlines()]
    uris = [row[4] for row in log]
    assert len(uris) == len(set(uris)) and any(u.endswith("weights_sub-01_roi-V1.pt") for u in uris)
    assert str(os.getpid()) not in {row[1] for row in log}
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]
    for row in log:
        cached = next(p for p in cache.iterdir() if p.name.endswith(Path(row[4]).name) and not p.name.endswith(".lock"))
        assert cached.stat().st_size == int(row[2]) == fs.size(row[4])
    message = str(hidden.value)
    assert "\n" not in message and blind.address.split(":")[0] in message and "cannot see" in message
    assert "shared filesystem" in message and "s3://" in message
