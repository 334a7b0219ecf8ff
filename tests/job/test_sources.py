"""Input listings: stable image_index/image_id for folders, globs, lists, .npy and Parquet."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ned_ray.job.sources import NoImagesError, open_source


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for rel in ("b/2.png", "a/1.jpg", "a/0.webp", "c.bmp", "d.tiff", "notes.txt", "e.JPEG"):
        path = tmp_path / "imgs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            path.write_text("not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path, format={
                "jpg": "JPEG", "JPEG": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}[rel.rsplit(".", 1)[1]])
    return tmp_path / "imgs"


def test_folder_is_listed_recursively_and_sorted(folder):
    source = open_source(str(folder))
    assert source.ids == ["a/0.webp", "a/1.jpg", "b/2.png", "c.bmp", "d.tiff", "e.JPEG"]
    raw = source.read(1, 3)
    assert [bytes(r[:2]) for r in raw] == [b"\xff\xd8", b"\x89P"]  # JPEG and PNG signatures


def test_glob_and_list_file(folder, tmp_path):
    assert open_source(str(folder / "a" / "*")).ids == ["0.webp", "1.jpg"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# stimuli\nimgs/b/2.png\n{folder / 'c.bmp'}\n\nimgs/a/1.jpg\n")
    source = open_source(str(listing))
    assert source.ids == ["imgs/a/1.jpg", "imgs/b/2.png", "imgs/c.bmp"]  # relative to the list's folder
    assert source.uris == [str(tmp_path / "imgs" / r) for r in ("a/1.jpg", "b/2.png", "c.bmp")]
    items = source.shard_items([(0, 2), (2, 3)])
    assert [len(i["ids"]) for i in items] == [2, 1] and items[1]["uris"] == source.uris[2:]
    missing = source.description().read(0, 1, [str(tmp_path / "gone.png")])
    assert isinstance(missing[0], Exception)


def test_npy_and_parquet_sources(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (5, 3, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    source = open_source(str(tmp_path / "x.npy"))
    assert source.ids == ["0", "1", "2", "3", "4"]
    np.testing.assert_array_equal(np.stack(source.read(2, 5)), images[2:5])
    pq.write_table(pa.table({"path": ["p", "q"], "image": [b"one", b"two"]}), tmp_path / "x.parquet", row_group_size=1)
    source = open_source(str(tmp_path / "x.parquet"))
    assert source.ids == ["p", "q"] and source.read(1, 2) == [b"two"]
    hf = pa.table({"image": pa.array([{"bytes": b"abc", "path": "a.png"}])})
    pq.write_table(hf, tmp_path / "hf.parquet")
    assert open_source(str(tmp_path / "hf.parquet")).read(0, 1) == [b"abc"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no images found in"),
    (lambda p: np.save(p / "f.npy", np.zeros((2, 3, 4, 4), np.float32)) or p / "f.npy", "must be a C-ordered uint8 array"),
    (lambda p: pq.write_table(pa.table({"x": [1]}), p / "t.parquet") or p / "t.parquet", "no image-bytes column"),
    (lambda p: (p / "l.txt").write_text("\n# only comments\n") and p / "l.txt", "lists no image URIs"),
])
def test_bad_inputs_say_what_is_wrong(tmp_path, make, message):
    with pytest.raises(NoImagesError, match=message):
        open_source(str(make(tmp_path)))
