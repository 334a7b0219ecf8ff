"""The in-process executor (job/executors/local.py): when it is chosen, and that it writes what Ray Data writes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ned_ray.job import stages
from ned_ray.job.cluster import ClusterShape, NodeType
from ned_ray.job.commit import Ledger
from ned_ray.job.executors import LOCAL_MAX_IMAGES, local
from ned_ray.job.executors import choose_executor as choose
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.output import open_output
from ned_ray.storage import filesystem


def choose_executor(config: EncodeConfig, n_images: int) -> tuple[str, str]:
    """The chosen executor as (name, why)."""
    executor = choose(config, n_images)
    return executor.name, executor.reason


MODELS = "fmri/nsd/fwrf/sub-01/V1,eeg/things_eeg_2/vit_b_32/sub-01"


def _config(demo_dir: Path, images: Path, out: Path, **kw) -> EncodeConfig:
    return EncodeConfig(str(demo_dir), str(images), MODELS, str(out), device="cpu", shard_size=4,
                        formats=("parquet", "npy"), cpu_threads=1, **kw)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    from ned_ray.demo import write_demo_images

    write_demo_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return tmp_path / "imgs"


def test_auto_runs_small_jobs_on_one_machine_in_process(monkeypatch, tmp_path):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    config = EncodeConfig("ned", "imgs", "all", str(tmp_path / "o"), device="cpu")
    assert choose_executor(config, 200)[0] == "local"
    assert choose_executor(config, 10**6)[0] == "local"  # on CPU, at any size (measured: bench/RESULTS.md)
    one_gpu = ClusterShape((NodeType("this machine", 8, 1, 24 << 30, 64 << 30),), "this machine")
    monkeypatch.setattr(ClusterShape, "local", classmethod(lambda cls, device="auto": one_gpu))
    gpu = EncodeConfig("ned", "imgs", "all", str(tmp_path / "o"))
    assert choose_executor(gpu, LOCAL_MAX_IMAGES) == ("local", f"{LOCAL_MAX_IMAGES} images on this machine's GPU, one "
                                                      "machine, no Ray cluster: encoded in this process, where it costs "
                                                      "less time and memory than on Ray Data (--executor ray to use it)")
    assert choose_executor(gpu, LOCAL_MAX_IMAGES + 1)[0] == "ray"  # Ray Data decodes in parallel for the GPU
    two_gpus = ClusterShape((NodeType("this machine", 8, 2, 24 << 30, 64 << 30),), "this machine")
    monkeypatch.setattr(ClusterShape, "local", classmethod(lambda cls, device="auto": two_gpus))
    assert choose_executor(gpu, 10) == ("ray", "2 GPUs on this machine (Ray Data uses them all)")
    monkeypatch.undo()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert choose_executor(EncodeConfig("ned", "imgs", "all", "o", executor="ray"), 10)[0] == "ray"
    assert choose_executor(EncodeConfig("ned", "imgs", "all", "o", executor="local"), 10**6)[0] == "local"
    assert "--ray-address" in choose_executor(EncodeConfig("ned", "imgs", "all", "o", ray_address="auto"), 10)[1]
    assert choose_executor(EncodeConfig("ned", "imgs", "all", "o", cluster="16cpu"), 10)[0] == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # `ray job submit` sets it for its entrypoint
    assert choose_executor(config, 10)[0] == "ray"
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # a driver script that started Ray
    assert choose_executor(config, 10) == ("ray", "this process is connected to Ray")
    with pytest.raises(ValueError, match="--executor must be one of auto, ray, local"):
        EncodeConfig("ned", "imgs", "all", "o", executor="threads")


def _pieces(out: Path) -> set[tuple[str, str, tuple[int, ...]]]:
    """(writer, piece, image indexes) of every commit marker of an output."""
    fs, root = filesystem(str(out))
    return {(key, m["piece"], tuple(m["image_index"])) for key, m in Ledger.read(fs, root).entries()}


def test_local_writes_what_ray_data_writes(ray_cluster, demo_dir, images, tmp_path, monkeypatch):
    on_ray = run_encode(_config(demo_dir, images, tmp_path / "ray", executor="ray"))
    budget = ray_cluster.data.DataContext.get_current().execution_options.resource_limits.object_store_memory
    assert budget == on_ray["job"]["plan"]["queued_bytes"] > 0  # Ray Data may queue this much decoded input
    monkeypatch.setattr(local, "decode_threads", lambda cpus: 3)  # 4 shards, 3 decoding at once: order kept
    here = run_encode(_config(demo_dir, images, tmp_path / "local", executor="local"))
    assert on_ray["run"]["executor"] == "ray" and here["run"]["executor"] == "local"
    manifest = json.loads((tmp_path / "local" / "_manifest.json").read_text())
    assert manifest["job"]["executor"]["name"] == "local"
    assert here["images"] == on_ray["images"] and here["images"]["error"] == 1  # the corrupt file, reported
    assert _pieces(tmp_path / "local") == _pieces(tmp_path / "ray")  # same pieces, same rows: resumable by either
    a, b = open_output(str(tmp_path / "ray")), open_output(str(tmp_path / "local"))
    assert a.models == b.models
    for model in a.models:
        (ia, va), (ib, vb) = a.responses(model), b.responses(model)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(va, vb)  # the same code on the same CPU: identical numbers
    ta, tb = pq.read_table(tmp_path / "ray" / "images.parquet"), pq.read_table(tmp_path / "local" / "images.parquet")
    assert ta.equals(tb)


def test_local_resumes_a_ray_output_and_decodes_while_models_load(ray_cluster, demo_dir, images, tmp_path,
                                                                  monkeypatch):
    out = tmp_path / "out"
    first = run_encode(_config(demo_dir, images, out, executor="ray"))
    fs, root = filesystem(str(out))
    key, marker = next((k, m) for k, m in Ledger.read(fs, root).entries() if "fwrf" in str(m.get("models")))
    (out / "_commits" / key / f"{marker['piece']}.json").unlink()  # a job that stopped before committing a piece
    (out / "_manifest.json").unlink()
    events: list[tuple[str, float]] = []
    decode, load = stages.DecodeShard.__call__, stages.GroupEncoder.__init__

    def timed_decode(self, batch):
        events.append(("decode", time.monotonic()))
        return decode(self, batch)

    def slow_load(self, *args):
        time.sleep(0.5)  # a model load long enough to see the first shard decode meanwhile
        load(self, *args)
        events.append(("loaded", time.monotonic()))

    monkeypatch.setattr(stages.DecodeShard, "__call__", timed_decode)
    monkeypatch.setattr(stages.GroupEncoder, "__init__", slow_load)
    again = run_encode(_config(demo_dir, images, out, executor="local"))
    assert again["run"]["encoded_images"] == len(marker["image_index"]) < first["run"]["encoded_images"]
    first_decode = min(t for e, t in events if e == "decode")
    assert first_decode < max(t for e, t in events if e == "loaded")  # decoding overlapped model loading
    index, _ = open_output(str(out)).responses(marker["models"][0])
    assert len(index) == len(set(index.tolist())) == first["images"]["ok"]  # no duplicated rows


def test_cli_says_where_it_ran(demo_dir, images, tmp_path):
    """A fresh process with no Ray running: a 15-image job runs in process, and the summary says so."""
    result = subprocess.run([sys.executable, "-m", "ned_ray.cli", "encode", "--ned-dir", str(demo_dir), "--images",
                             str(images), "--models", "fmri/nsd/fwrf/sub-01/V1", "--output", str(tmp_path / "o"),
                             "--device", "cpu", "--quiet"], capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ran in this process, without Ray: 15 images on CPU, one machine, no Ray cluster" in result.stdout
    assert "Started a local Ray instance" not in result.stderr
    dry = subprocess.run([sys.executable, "-m", "ned_ray.cli", "encode", "--ned-dir", str(demo_dir), "--images",
                          str(images), "--models", "all", "--output", str(tmp_path / "o2"), "--dry-run"],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert "executor: local (15 images on CPU, one machine" in dry.stdout and "this machine (no Ray cluster)" in dry.stdout


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def test_this_machine_as_a_cluster_shape():
    import os

    from ned_ray.job.cluster import ClusterShape

    shape = ClusterShape.local("cpu")
    (node,) = shape.node_types
    assert node.cpus == len(os.sched_getaffinity(0)) and node.gpus == 0 and node.memory > 2**28
    assert shape.nodes_max == 1 and not shape.autoscaling and "no Ray cluster" in shape.describe()
    assert [local.decode_threads(n) for n in (1, 2, 8, 16, 64, 256)] == [1, 1, 1, 2, 8, 8]
