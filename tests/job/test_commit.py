"""The commit protocol at scale: input identity, append, one owner per output, damaged parts.

Each scenario checks what was lost (nothing), duplicated (nothing) and the one line a user sees.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ned_ray.cli import main as cli_main
from ned_ray.errors import LeaseHeldError, ListingChangedError
from ned_ray.job.commit import Ledger, listing_fingerprint
from ned_ray.job.commit.lease import Lease
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.output import open_output
from ned_ray.output.layout import LEASE
from ned_ray.storage import filesystem

FMRI = "fmri/nsd/fwrf/sub-01/V1"


def _png(path: Path, seed: int, side: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)


def _config(demo_dir, images, out, **kw) -> EncodeConfig:
    return EncodeConfig(str(demo_dir), str(images), FMRI, str(out), device="cpu", shard_size=4, cpu_threads=1, **kw)


def _by_id(output_dir: str, options: dict | None = None) -> dict[str, np.ndarray]:
    out = open_output(output_dir, options)
    ids = out.images().column("image_id").to_pylist()
    index, values = out.responses(FMRI)
    assert len(set(index.tolist())) == len(index)  # nothing duplicated
    return {ids[i]: v for i, v in zip(index, values)}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _finished(demo_dir, tmp_path, n: int, **kw) -> tuple[Path, EncodeConfig]:
    """A folder of n photographs a0.png.. and a finished output of them."""
    images = tmp_path / "images"
    for i in range(n):
        _png(images / f"a{i}.png", i)
    config = _config(demo_dir, images, tmp_path / "out", **kw)
    run_encode(config)
    return images, config


def test_images_added_later_are_appended_and_only_they_are_encoded(ray_cluster, demo_dir, tmp_path):
    images, config = _finished(demo_dir, tmp_path, 6)
    before = _by_id(config.output)
    first_ids = open_output(config.output).images().column("image_id").to_pylist()
    for i in range(3):
        _png(images / f"0new{i}.png", 10 + i)  # sorts before the old names: indexes must not move anyway
    summary = run_encode(config)
    assert summary["run"]["encoded_images"] == 3 and summary["run"]["skipped_images"] == 6
    out = open_output(config.output)
    ids = out.images().column("image_id").to_pylist()
    assert ids[:6] == first_ids and sorted(ids[6:]) == ["0new0.png", "0new1.png", "0new2.png"]
    after = _by_id(config.output)
    assert len(after) == 9 and _same({k: after[k] for k in before}, before)  # nothing lost or changed
    assert summary["images"]["total"] == 9 and summary["job"]["listing"]["images"] == 9


@pytest.mark.parametrize("change", ["removed", "modified"])
def test_an_input_that_lost_or_changed_images_is_refused(ray_cluster, demo_dir, tmp_path, capsys, change):
    images, config = _finished(demo_dir, tmp_path, 6)
    before = _by_id(config.output)
    if change == "removed":
        (images / "a3.png").unlink()
    else:
        _png(images / "a3.png", 99, side=30)
    args = ["encode", "--ned-dir", str(demo_dir), "--images", str(images), "--models", FMRI, "--output",
            str(tmp_path / "out"), "--device", "cpu", "--shard-size", "4"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"1 {change} (e.g. a3.png" in err[0] and "--overwrite" in err[0], err
    assert _same(_by_id(config.output), before)  # the output is untouched
    assert cli_main([*args, "--overwrite"]) == 0  # starting over is one flag away
    assert len(_by_id(config.output)) == (5 if change == "removed" else 6)


def test_a_crash_then_a_changed_input(ray_cluster, demo_dir, tmp_path):
    """Partly written output (no manifest), then a file added and one removed before the rerun."""
    images, config = _finished(demo_dir, tmp_path, 8)
    out = tmp_path / "out"
    (out / "_manifest.json").unlink()
    for marker in sorted((out / "_commits").glob("*/part-00001*.json")):
        marker.unlink()  # as if the job died after its first shard
    _png(images / "b.png", 50)
    summary = run_encode(config)  # added only: resumes and appends
    assert summary["run"]["encoded_images"] == 5 and len(_by_id(config.output)) == 9
    (images / "a0.png").unlink()
    with pytest.raises(ListingChangedError, match="1 removed .e.g. a0.png"):
        run_encode(config)


def _live_lease(out: Path, **fields) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "tmp-lease").write_text(json.dumps({"token": "other", "host": "elsewhere", "pid": 4242, "ttl": 120,
                                               "renewed": time.time(), "ray_job_id": "0a000000", **fields}))
    os.replace(out / "tmp-lease", out / LEASE)  # whole or not at all, as a job writes it


@contextlib.contextmanager
def _renewing(out: Path, every: float = 0.3):
    """A live job on another host: its lease renewed every ``every`` seconds until the block ends."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(every):
            _live_lease(out)

    _live_lease(out)
    thread = threading.Thread(target=renew, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_a_live_lease_refuses_a_second_job_and_overwrite(ray_cluster, demo_dir, tmp_path, capsys):
    images = tmp_path / "images"
    for i in range(3):
        _png(images / f"a{i}.png", i)
    out = tmp_path / "out"
    args = ["encode", "--ned-dir", str(demo_dir), "--images", str(images), "--models", FMRI, "--output", str(out),
            "--device", "cpu", "--lease-ttl", "4"]
    with _renewing(out):
        for extra in ([], ["--overwrite"]):
            assert cli_main(args + extra) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert "it may be alive: waiting up to" in err[0]  # another host: it waited to see whether the job lives
            assert len(err) == 2 and "being written by another job (host elsewhere, pid 4242" in err[1], err
            assert "it is alive (it renewed the lease while this job waited)" in err[1] and "--force" in err[1]
    assert sorted(p.name for p in out.iterdir()) == [LEASE]  # nothing written, nothing removed
    assert cli_main(args + ["--force"]) == 0  # the user says that job is dead
    assert not (out / LEASE).exists() and (out / "_manifest.json").exists()  # released at the end
    _live_lease(out, renewed=time.time() - 1000)  # stale: taken over without --force
    assert cli_main(args + ["--overwrite"]) == 0


def test_the_fingerprint_sees_ids_sizes_versions_and_order_but_not_chunking(tmp_path):
    from ned_ray.job.inputs import open_source

    for i in range(5):
        _png(tmp_path / "in" / f"a{i}.png", i)
    listing = open_source(str(tmp_path / "in")).listing
    fingerprint = listing_fingerprint(listing)
    assert listing_fingerprint(listing, chunk_rows=2) == fingerprint  # chunks bound memory, not the value
    assert listing_fingerprint(listing.take([1, 0, 2, 3, 4])) != fingerprint
    for column in ("image_id", "bytes", "version"):
        changed = listing.column(column).to_pylist()
        changed[3] = changed[3] + (1 if column == "bytes" else "x")
        index = listing.schema.get_field_index(column)
        assert listing_fingerprint(listing.set_column(index, column, [changed])) != fingerprint, column


def test_two_concurrent_leases_on_one_output(tmp_path):
    """Exclusive create: of two jobs starting together, exactly one gets the lease (the other sees it
    renewed, so alive, and is refused)."""
    fs, root = filesystem(str(tmp_path / "out"))
    first = Lease(fs, root, ttl=2).acquire()
    try:
        with pytest.raises(LeaseHeldError, match=f"pid {os.getpid()}.*it is alive"):
            Lease(fs, root, ttl=2).acquire()
        first.renew()
        assert first.lost is None
    finally:
        first.release()
    assert not (tmp_path / "out" / LEASE).exists()


def test_a_lease_taken_over_is_noticed(tmp_path):
    fs, root = filesystem(str(tmp_path / "out"))
    lease = Lease(fs, root, ttl=60).acquire()
    try:
        _live_lease(tmp_path / "out", token="intruder", host="other-host")
        lease.renew()
        assert lease.lost and "other-host" in lease.lost
    finally:
        lease.release()
    assert (tmp_path / "out" / LEASE).exists()  # the new owner's lease is left alone


@pytest.mark.parametrize("damage", ["truncate a model part", "delete a model part", "delete an images part"])
def test_damaged_parts_are_encoded_again(ray_cluster, demo_dir, tmp_path, capsys, damage):
    images, config = _finished(demo_dir, tmp_path, 8, formats=("parquet", "npy"))
    before = _by_id(config.output)
    out = tmp_path / "out"
    part = out / FMRI / "part-00001.parquet"
    if damage == "truncate a model part":
        part.write_bytes(part.read_bytes()[:100])
    elif damage == "delete a model part":
        (out / FMRI / "part-00000.npy").unlink()
    else:
        (out / "_images" / "part-00001.parquet").unlink()
    assert len(Ledger.read(*filesystem(str(out))).damaged(*filesystem(str(out)))) == 1
    args = ["encode", "--ned-dir", str(demo_dir), "--images", str(images), "--models", FMRI, "--output", str(out),
            "--device", "cpu", "--shard-size", "4", "--format", "parquet,npy", "--cpu-threads", "1", "--quiet"]
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    assert "1 committed piece(s)" in captured.err and "encoding them again" in captured.err
    assert "this run encoded 4 images (4 were already committed" in captured.out
    after = _by_id(config.output)
    assert _same(after, before)
    assert not Ledger.read(*filesystem(str(out))).damaged(*filesystem(str(out)))


def test_every_file_the_user_pointed_at_is_in_images_parquet(ray_cluster, demo_dir, tmp_path):
    root = tmp_path / "stimuli [v2]"
    names = ["brackets [1].png", "space name.png", "ünï cödé.png", "hash#1.png", "pct%20.png"]
    for i, name in enumerate(names):
        _png(root / name, i)
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (8, 8), (0, 255, 0)).save(root / "photo.jfif", format="JPEG")
    (root / "readme.md").write_text("notes")
    (root / ".DS_Store").write_bytes(b"\0")
    _png(tmp_path / "elsewhere" / "linked.png", 7)
    os.symlink(tmp_path / "elsewhere", root / "link")
    summary = run_encode(_config(demo_dir, root, tmp_path / "out"))
    rows = {r["image_id"]: r for r in pq.read_table(tmp_path / "out" / "images.parquet").to_pylist()}
    assert set(rows) == set(names) | {"anim.gif", "photo.jfif", "readme.md", ".DS_Store", "link/linked.png"}
    assert {k for k, r in rows.items() if r["status"] == "skipped"} == {"readme.md", ".DS_Store"}
    assert "not a format ned-ray reads (.md)" in rows["readme.md"]["error"]
    assert summary["images"] == {"total": 10, "ok": 8, "error": 0, "skipped": 2, "file": "images.parquet"}
    assert len(_by_id(str(tmp_path / "out"))) == 8


def test_a_resumed_job_does_not_hash_unchanged_model_files_again(ray_cluster, demo_dir, tmp_path, monkeypatch):
    import ned_ray.storage as storage

    monkeypatch.setenv("NED_RAY_CACHE", str(tmp_path / "cache"))
    hashed: list[str] = []
    original = storage.sha256_file
    monkeypatch.setattr(storage, "sha256_file", lambda fs, path: hashed.append(path) or original(fs, path))
    images, config = _finished(demo_dir, tmp_path, 6)
    assert len(hashed) == 2  # V1's weights and metadata, once each
    (tmp_path / "out" / "_manifest.json").unlink()
    for marker in (tmp_path / "out" / "_commits").glob("*/part-00001*.json"):
        marker.unlink()
    assert run_encode(config)["run"]["encoded_images"] == 2  # a resume
    run_encode(EncodeConfig(**{**config.__dict__, "output": str(tmp_path / "other")}))  # another output
    assert len(hashed) == 2  # neither hashed anything again


def test_response_columns_are_written_plain():
    """Float responses: no dictionary, no statistics (cost, no gain); the id columns keep both."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ned_ray.job.sink import response_table
    from ned_ray.storage import parquet_bytes

    values = np.random.default_rng(0).normal(size=(6, 4, 5)).astype(np.float32)
    table = response_table(np.arange(6), pa.array([f"i{k}" for k in range(6)]), values)
    meta = pq.ParquetFile(io.BytesIO(parquet_bytes(table, plain=("response",)))).metadata.row_group(0)
    columns = {meta.column(i).path_in_schema.split(".")[0]: meta.column(i) for i in range(meta.num_columns)}
    assert columns["response"].statistics is None and not columns["response"].has_dictionary_page
    assert columns["image_id"].statistics is not None and columns["image_id"].has_dictionary_page
    assert pq.read_table(io.BytesIO(parquet_bytes(table, plain=("response",)))).equals(table)


def test_the_summary_splits_fixed_costs_from_the_steady_rate(demo_dir, tmp_path):
    """The rate a run reports says what it is made of: the time to its first committed piece (starting,
    loading models, the first batch) and the rate after it, from the image sink's commit times."""
    from ned_ray.summaries import format_summary

    from .conftest import random_png

    (tmp_path / "in").mkdir()
    for i in range(6):
        (tmp_path / "in" / f"img_{i}.png").write_bytes(random_png(i))
    config = EncodeConfig(str(demo_dir), str(tmp_path / "in"), "fmri/nsd/fwrf/sub-01/V1", str(tmp_path / "out"),
                          device="cpu", executor="local", shard_size=2, cpu_threads=1)
    summary = run_encode(config)
    run = summary["run"]
    assert 0 < run["first_piece_seconds"] < run["seconds"] and run["steady_images_per_second"] > 0
    line = format_summary(summary, config.output).splitlines()[1]
    assert "to the first committed piece" in line and line.endswith(f"then {run['steady_images_per_second']:.2f} images/s")
    again = run_encode(config)  # nothing left to do: no piece of this run, nothing to split
    assert again["run"]["first_piece_seconds"] is None and "first committed piece" not in format_summary(again, "o")
