"""Shards of only bad images, pools on a small machine, and failed first attempts never stop a job."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from ned_ray.cli import main as cli_main
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.output import open_output

FMRI = "fmri/nsd/fwrf/sub-01/V1"
EEG = "eeg/things_eeg_2/vit_b_32/sub-01"


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _snapshot(out: Path) -> dict[str, int]:
    """Every file of an output with its modification time: a no-op rerun changes none."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def _check_complete(out: Path, statuses: dict[str, str], models: list[str]) -> dict:
    """The output is complete, accounts for every image once, and has no response row for a bad one."""
    manifest = json.loads((out / "_manifest.json").read_text())
    images = pq.read_table(out / "images.parquet").to_pylist()
    assert {r["image_id"]: r["status"] for r in images} == statuses
    assert [r["image_index"] for r in images] == list(range(len(statuses)))
    assert all(r["error"] for r in images if r["status"] == "error")
    ok = sum(s == "ok" for s in statuses.values())
    assert manifest["images"] == {"total": len(statuses), "ok": ok, "error": len(statuses) - ok, "skipped": 0, "file": "images.parquet"}
    output = open_output(str(out))
    for mid in models:
        index, values = output.responses(mid)
        assert manifest["models"][mid]["rows"] == ok == len(index)
        assert [images[i]["status"] for i in index] == ["ok"] * ok and np.isfinite(values).all()
        for part in manifest["models"][mid]["parts"]["parquet"]:  # every listed part exists (empty ones too)
            assert (out / part).is_file(), part
    return manifest


def _run(config: EncodeConfig) -> dict:
    summary = run_encode(config)
    rerun = run_encode(config)
    assert rerun["run"]["encoded_images"] == 0 and rerun["run"]["skipped_images"] == summary["images"]["total"]
    return summary


def test_an_all_bad_shard_between_good_ones_is_committed(ray_cluster, demo_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    statuses = {}
    for i in range(3):
        (images / f"a{i}.png").write_bytes(_png(i))
        (images / f"b{i}.png").write_bytes(b"not a png at all")
        (images / f"c{i}.png").write_bytes(_png(10 + i))
        statuses.update({f"a{i}.png": "ok", f"b{i}.png": "error", f"c{i}.png": "ok"})
    out = tmp_path / "out"
    config = EncodeConfig(str(demo_dir), str(images), f"{FMRI},{EEG}", str(out), device="cpu", shard_size=3,
                          formats=("parquet", "npy"), cpu_threads=1)
    run_encode(config)
    before = _snapshot(out)
    _run(config)
    assert _snapshot(out) == before  # the rerun rewrote nothing
    manifest = _check_complete(out, statuses, [FMRI, EEG])
    assert manifest["chunks"] == 3
    empty = pq.read_table(out / FMRI / "part-00001.parquet")  # the bad shard: an empty part, same schema
    assert empty.num_rows == 0 and empty.schema == pq.read_table(out / FMRI / "part-00000.parquet").schema
    assert np.load(out / EEG / "part-00001.npy").shape == (0, 4, 63, 140)


def test_a_folder_of_only_corrupt_files_completes(ray_cluster, demo_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (images / "y.png").write_bytes(b"")
    out = tmp_path / "out"
    _run(EncodeConfig(str(demo_dir), str(images), f"{FMRI},{EEG}", str(out), device="cpu", cpu_threads=1))
    _check_complete(out, {"x.jpg": "error", "y.png": "error"}, [FMRI, EEG])


def test_a_list_of_only_missing_files_completes(ray_cluster, demo_dir, tmp_path, monkeypatch):
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "stimuli.txt"
    listing.write_text(f"gone_1.png\nsub/gone_2.jpg\n{tmp_path / 'elsewhere' / 'gone_3.png'}\n")
    monkeypatch.chdir(tmp_path)  # a relative list path: entries are relative to the list, wherever workers run
    out = tmp_path / "out"
    _run(EncodeConfig(str(demo_dir), "lists/stimuli.txt", FMRI, str(out), device="cpu", cpu_threads=1))
    manifest = _check_complete(out, {"gone_1.png": "error", "sub/gone_2.jpg": "error",
                                     str(tmp_path / "elsewhere" / "gone_3.png"): "error"}, [FMRI])
    errors = {r["image_id"]: r["error"] for r in pq.read_table(out / "images.parquet").to_pylist()}
    assert all("FileNotFoundError" in e for e in errors.values())
    assert str(tmp_path / "lists" / "gone_1.png") in errors["gone_1.png"]
    assert manifest["images"]["error"] == 3


def test_two_actors_per_group_for_two_groups_on_two_cpus(ray_cluster, demo_dir, tmp_path):
    """Four model actors on a 2-CPU cluster must leave room for the decode and write tasks."""
    assert ray_cluster.cluster_resources()["CPU"] == 2
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        (images / f"{i}.png").write_bytes(_png(i))
    out = tmp_path / "out"
    summary = run_encode(EncodeConfig(str(demo_dir), str(images), f"{FMRI},{EEG}", str(out), device="cpu",
                                      shard_size=2, actors_per_group=2, fmri_models_per_actor=1, cpu_threads=1))
    assert len(summary["run"]["model_groups"]) == 2
    _check_complete(out, {f"{i}.png": "ok" for i in range(8)}, [FMRI, EEG])


def test_a_failed_first_attempt_does_not_own_the_output(ray_cluster, demo_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(_png(i))
    out = tmp_path / "out"
    common = ["encode", "--ned-dir", str(demo_dir), "--images", str(images), "--output", str(out)]
    # fails before encoding anything: no GPU in this cluster, and none can come
    assert cli_main([*common, "--models", FMRI, "--device", "cuda", "--min-ncsnr", "0.1"]) == 2
    assert "the Ray cluster has no GPU and cannot get one" in capsys.readouterr().err
    assert (out / "_job.json").exists() and not list(out.glob("_commits/*/*.json"))
    # the corrected command, with other models and options, takes the output over
    assert cli_main([*common, "--models", EEG, "--device", "cpu", "--shard-size", "2", "--cpu-threads", "1"]) == 0
    manifest = _check_complete(out, {f"{i}.png": "ok" for i in range(3)}, [EEG])
    assert list(manifest["models"]) == [EEG] and not (out / FMRI).exists()  # nothing left of the failed attempt
    assert json.loads((out / EEG / "metadata.json").read_text())["selection"]["asked"]["min_ncsnr"] is None
    # once something is committed, other options are refused again
    assert cli_main([*common, "--models", FMRI, "--device", "cpu"]) == 2
    assert "other options" in capsys.readouterr().err

