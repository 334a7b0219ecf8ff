"""ned_ray.data.read_output: a finished output as a Ray Dataset, its parts read in parallel."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import ned_ray.data as nd
from ned_ray.errors import IncompleteOutputError, ModelNotInOutputError
from ned_ray.output import open_output


def _by_index(batch: dict[str, np.ndarray], column: str) -> dict[int, np.ndarray]:
    return dict(zip(batch["image_index"].tolist(), batch[column]))


def test_every_model_joined_on_image_index_with_the_images_columns(gpu_ray, encoded):
    output = open_output(str(encoded))
    ds = nd.read_output(str(encoded), columns=("image_id", "width"))
    batch = ds.take_batch(1000, batch_format="numpy")
    ok = [i for i, s in enumerate(output.images().column("status").to_pylist()) if s == "ok"]
    assert sorted(batch["image_index"].tolist()) == ok  # one row per encoded image, the broken one left out
    ids = output.images().column("image_id").to_pylist()
    assert all(ids[i] == name for i, name in zip(batch["image_index"], batch["image_id"]))
    widths = output.images().column("width").to_pylist()
    assert all(widths[i] == w for i, w in zip(batch["image_index"], batch["width"]))
    for mid in output.models:
        index, values = output.responses(mid)
        got = _by_index(batch, mid)
        assert batch[mid].shape[1:] == output.shape(mid) and batch[mid].dtype == np.float32
        np.testing.assert_array_equal(np.stack([got[i] for i in index.tolist()]), values)


def test_one_model_by_glob_rebuilt_from_codes_from_an_opened_output(gpu_ray, demo_dir, photos, encoded, tmp_path):
    from ned_ray.job.options import EncodeConfig
    from ned_ray.job.run import run_encode

    coded = tmp_path / "coded"
    run_encode(EncodeConfig(str(demo_dir), str(photos), "eeg/*", str(coded), device="cpu", executor="local",
                            cpu_threads=1, store="codes", shard_size=4))
    output = open_output(str(coded))
    batch = nd.read_output(output, models="eeg/*/sub-02").take_batch(1000, batch_format="numpy")
    mid = "eeg/things_eeg_2/vit_b_32/sub-02"
    assert set(batch) == {"image_index", "image_id", mid}
    index, values = output.responses(mid)  # rebuilt from the codes by the reader, as read_output does in its tasks
    got = _by_index(batch, mid)
    np.testing.assert_allclose(np.stack([got[i] for i in index.tolist()]), values, rtol=1e-6, atol=1e-6)
    reference = open_output(str(encoded)).responses(mid)[1]
    np.testing.assert_allclose(values, reference, rtol=1e-4, atol=1e-4 * float(reference.std()))


def test_an_unfinished_output_or_a_model_it_lacks_is_refused_before_reading(gpu_ray, encoded, tmp_path):
    with pytest.raises(ModelNotInOutputError, match="no model matching meg/\\*; it has: .*eeg/things_eeg_2"):
        nd.read_output(str(encoded), models="meg/*")
    with pytest.raises(ValueError, match="columns: label not among"):
        nd.read_output(str(encoded), columns=("label",))
    half = tmp_path / "half"
    shutil.copytree(encoded, half)
    (half / "_manifest.json").unlink()
    with pytest.raises(IncompleteOutputError, match="not a finished ned-ray output"):
        nd.read_output(str(half))


def _big_output(encoded, folder, mid: str, images: int, per_part: int) -> float:
    """A finished output of ``images`` images of ``mid`` (its metadata from ``encoded``), parts of
    ``per_part`` random responses written as the job writes them; returns their sum (float64)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ned_ray.job.sink import response_table

    manifest = json.loads((encoded / "_manifest.json").read_text())
    entry = manifest["models"][mid]
    shape = open_output(str(encoded)).shape(mid)
    (folder / mid).mkdir(parents=True)
    for name in entry["metadata"]:
        shutil.copy(encoded / name, folder / name)
    parts, ranges, total = [], [], 0.0
    for k, lo in enumerate(range(0, images, per_part)):
        index = np.arange(lo, min(images, lo + per_part))
        values = np.random.default_rng(k).standard_normal((len(index), *shape), dtype=np.float32)
        total += float(values.sum(dtype=np.float64))
        parts.append(f"{mid}/part-{k:05d}.parquet")
        ranges.append([int(index[0]), int(index[-1])])
        pq.write_table(response_table(index, pa.array([f"img_{i}" for i in index]), values), folder / parts[-1])
    pq.write_table(pa.table({"image_index": np.arange(images), "image_id": [f"img_{i}" for i in range(images)],
                             "status": ["ok"] * images, "error": [""] * images,
                             "width": np.full(images, 64, np.int32), "height": np.full(images, 64, np.int32)}),
                   folder / "images.parquet")
    manifest["models"] = {mid: {**entry, "rows": images, "parts": {"parquet": parts}, "index_ranges": ranges}}
    manifest["images"] = {"total": images, "ok": images, "error": 0, "skipped": 0, "file": "images.parquet"}
    (folder / "_manifest.json").write_text(json.dumps(manifest))
    return total


@pytest.mark.slow
def test_a_1_gb_output_streams_through_the_driver_in_bounded_memory(gpu_ray, encoded, tmp_path):
    import threading

    import psutil

    mid = "eeg/things_eeg_2/vit_b_32/sub-01"  # 4 x 63 x 140 float32: 141 kB per image
    images = 7_600
    total = _big_output(encoded, tmp_path / "big", mid, images, per_part=200)
    assert sum(f.stat().st_size for f in (tmp_path / "big" / mid).glob("*.parquet")) > 2**30
    # the driver's own memory (USS: pages no other process maps): Ray's object store, mapped into the
    # driver as blocks arrive, is shared memory and counts in its RSS as pages are touched
    me = psutil.Process()
    base, peak, done = me.memory_full_info().uss, [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_full_info().uss)
            done.wait(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    seen, summed = 0, 0.0
    try:
        for batch in nd.read_output(str(tmp_path / "big")).iter_batches(batch_size=256, batch_format="numpy"):
            seen += len(batch["image_index"])
            summed += float(batch[mid].sum(dtype=np.float64))
    finally:
        done.set()
        sampler.join()
    assert seen == images and summed == pytest.approx(total, rel=1e-9)
    print(f"driver USS grew by {(peak[0] - base) / 2**20:.0f} MiB while 1 GiB streamed through it")
    assert peak[0] - base < 400 * 2**20, f"the driver grew by {(peak[0] - base) / 2**20:.0f} MiB reading 1 GiB"
