"""Streaming an output holds one batch, not the output: the reader's memory (RSS, psutil, sampled
every 2 ms from its first batch on) grows by far less than the output's size, on local disk and on
S3 (moto)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ned_ray.storage import filesystem

MEG = "meg/things_meg_1/vit_b_32/sub-01/full"  # 271 sensors x 281 times: 305 KB of float32 per image

READER = textwrap.dedent("""
    import json, sys, threading, time
    import psutil
    from ned_ray.output import open_output

    uri, options, rows_per_batch = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    out = open_output(uri, options)
    shape = out.shape(out.models[0])
    process = psutil.Process()
    batches = out.iter_batches(out.models[0], rows_per_batch=rows_per_batch)
    index, values = next(batches)  # the first batch: the reading machinery's own memory, once
    rows, checksum, last = len(index), float(values[:, 0, 0].sum()), int(index[-1])
    first = process.memory_info().rss
    base = peak = first
    done = False

    def watch():
        global peak
        while not done:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for index, values in batches:
        assert index[0] > last and values.shape[1:] == shape
        rows, checksum, last = rows + len(index), checksum + float(values[:, 0, 0].sum()), int(index[-1])
    done = True
    watcher.join()
    print(json.dumps({"rows": rows, "base": base, "peak": peak, "checksum": checksum}))
""")


def _stream(uri: str, options: dict, rows_per_batch: int = 32) -> dict:
    done = subprocess.run([sys.executable, "-c", READER, uri, json.dumps(options), str(rows_per_batch)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def _output(tmp_path: Path, n: int) -> Path:
    from ned_ray import EncodeConfig, run_encode
    from ned_ray.demo import make_demo_models

    make_demo_models(str(tmp_path / "ned"), fmri_subjects=(1,), rois=("V1",), eeg_subjects=(1,), berg=True)
    np.save(tmp_path / "images.npy", np.random.default_rng(0).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    run_encode(EncodeConfig(str(tmp_path / "ned"), str(tmp_path / "images.npy"), MEG, str(tmp_path / "out"),
                            device="cpu", executor="local"))
    return tmp_path / "out"


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_1_gb_output_streams_in_under_256_mb(tmp_path):
    out = _output(tmp_path, 3900)
    assert _size(out) > 2**30
    found = _stream(str(out), {})
    print(f"\nstreamed {_size(out) / 2**20:.0f} MiB: reader RSS grew {(found['peak'] - found['base']) / 2**20:.0f} MiB")
    assert found["rows"] == 3900
    assert found["peak"] - found["base"] < 256 * 2**20, found  # the reader's growth while reading 1 GB


@pytest.mark.slow
def test_an_output_on_s3_streams_in_a_fraction_of_its_size(tmp_path, s3_server):
    out = _output(tmp_path, 800)
    fs, _ = filesystem("s3://ned-ray-reader", s3_server)
    fs.mkdir("ned-ray-reader")
    fs.put(str(out), "ned-ray-reader/out", recursive=True)
    local, remote = _stream(str(out), {}), _stream("s3://ned-ray-reader/out", s3_server)
    print(f"\nstreamed {_size(out) / 2**20:.0f} MiB from S3: reader RSS grew {(remote['peak'] - remote['base']) / 2**20:.0f} MiB")
    assert remote["rows"] == local["rows"] == 800 and remote["checksum"] == local["checksum"]
    assert remote["peak"] - remote["base"] < _size(out) / 3, remote
