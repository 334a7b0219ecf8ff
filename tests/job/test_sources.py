"""Input listings: every file accounted for, literal names, stable ids, identities, shard reads."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ned_ray.job.decode import decode_image
from ned_ray.job.inputs import READABLE, NoImagesError, Skipped, open_source

FORMATS = {"jpg": "JPEG", "JPEG": "JPEG", "jfif": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF",
           "gif": "GIF"}


def _image(path, seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(array).save(path, format=fmt or FORMATS[path.name.rsplit(".", 1)[1]])


@pytest.fixture
def folder(tmp_path):
    for i, rel in enumerate(("b/2.png", "a/1.jpg", "a/0.webp", "c.bmp", "d.tiff", "e.JPEG")):
        _image(tmp_path / "imgs" / rel, i)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    return tmp_path / "imgs"


def _rows(source):
    return dict(zip(source.ids, source.listing.column("skip").to_pylist()))


def test_folder_is_listed_recursively_sorted_and_every_file_accounted_for(folder):
    source = open_source(str(folder))
    rows = _rows(source)
    assert list(rows) == ["a/0.webp", "a/1.jpg", "b/2.png", "c.bmp", "d.tiff", "e.JPEG", "notes.txt"]
    assert [k for k, v in rows.items() if v] == ["notes.txt"] and "not a format ned-ray reads (.txt)" in rows["notes.txt"]
    raw = source.read(1, 3)
    assert [bytes(r[:2]) for r in raw] == [b"\xff\xd8", b"\x89P"]  # JPEG and PNG signatures
    assert source.read(6, 7) == [Skipped(rows["notes.txt"])]
    sizes = source.listing.column("bytes").to_pylist()
    assert sizes[1] == (folder / "a" / "1.jpg").stat().st_size and all(source.listing.column("version").to_pylist())


def test_awkward_names_are_names_not_patterns(tmp_path):
    root = tmp_path / "stimuli [v2]"
    names = ["brackets [1].png", "space name.jpg", "ünï cödé.png", "hash#1.png", "pct%20.png", "star*.png", "q?.png"]
    for i, name in enumerate(names):
        _image(root / name, i)
    source = open_source(str(root))
    assert sorted(source.ids) == sorted(names) and not any(source.listing.column("skip").to_pylist())
    for item in source.read(0, len(names)):
        assert isinstance(item, bytes) and decode_image(item)[0] is not None


def test_gif_jfif_first_frame_and_the_readable_list(tmp_path):
    frames = [Image.new("RGB", (6, 6), (255, 0, 0)), Image.new("RGB", (6, 6), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=10)
    _image(tmp_path / "photo.jfif", 3)
    assert {".gif", ".jfif", ".jpg", ".png", ".webp", ".tiff", ".bmp"} <= set(READABLE)
    source = open_source(str(tmp_path))
    assert _rows(source) == {"anim.gif": "", "photo.jfif": ""}
    first, _, w, h = decode_image(source.read(0, 1)[0])
    assert (w, h) == (6, 6) and first[0, 0, 0] > 200 and first[0, 0, 2] < 50  # the first (red) frame


def test_symlinked_folders_are_followed_once(tmp_path):
    _image(tmp_path / "real" / "x.png")
    _image(tmp_path / "root" / "y.png", 1)
    os.symlink(tmp_path / "real", tmp_path / "root" / "linked")
    os.symlink(tmp_path / "root", tmp_path / "root" / "loop")  # a loop back up: cut, not followed forever
    assert open_source(str(tmp_path / "root")).ids == ["linked/x.png", "y.png"]


def test_glob_and_list_file(folder, tmp_path):
    assert open_source(str(folder / "a" / "*")).ids == ["0.webp", "1.jpg"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# stimuli\nimgs/b/2.png\n{folder / 'c.bmp'}\n\nimgs/a/1.jpg\nimgs/b/2.png\n")
    source = open_source(str(listing))
    assert source.ids == ["imgs/a/1.jpg", "imgs/b/2.png", "imgs/c.bmp"]  # relative to the list's folder
    assert source.uris == [str(tmp_path / "imgs" / r) for r in ("a/1.jpg", "b/2.png", "c.bmp")]
    assert source.duplicates == [{"uri": str(tmp_path / "imgs" / "b" / "2.png"), "lines": [2, 6]}]  # reported
    missing = source.description().read(0, 1, pa.table({"uri": [str(tmp_path / "gone.png")], "skip": [""]}))
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


def test_a_shard_of_a_parquet_input_reads_only_its_row_groups(tmp_path, request):
    blobs = [np.random.default_rng(i).bytes(20_000) for i in range(80)]
    path = tmp_path / "many.parquet"
    pq.write_table(pa.table({"image": blobs}), path, row_group_size=4, compression="none")  # 20 row groups
    source = open_source(str(path))
    read = request.getfixturevalue("local_reads")  # counted from here on
    assert source.read(9, 13) == blobs[9:13]  # rows 9..12: row groups 2 and 3
    assert sum(read) < 0.2 * path.stat().st_size, (sum(read), path.stat().st_size)  # 2 of 20 groups + footer


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "the folder is empty"),
    (lambda p: (p / "d").mkdir() or (p / "d" / "a.txt").write_text("x") and p / "d", "none in a format ned-ray reads"),
    (lambda p: p / "*.png", "matches no file"),
    (lambda p: np.save(p / "f.npy", np.zeros((2, 3, 4, 4), np.float32)) or p / "f.npy", "must be a C-ordered uint8 array"),
    (lambda p: np.save(p / "z.npy", np.zeros((0, 3, 4, 4), np.uint8)) or p / "z.npy", "holds 0 images"),
    (lambda p: pq.write_table(pa.table({"x": [1]}), p / "t.parquet") or p / "t.parquet", "no image column .looked for image bytes"),
    (lambda p: pq.write_table(pa.table({"image": pa.array([], pa.binary())}), p / "e.parquet") or p / "e.parquet",
     "has 0 rows"),
    (lambda p: pq.write_table(pa.table({"id": ["a", "a"], "image": [b"1", b"2"]}), p / "d.parquet") or p / "d.parquet",
     "duplicate ids"),
    (lambda p: (p / "l.txt").write_text("\n# only comments\n") and p / "l.txt", "lists no image URIs"),
    (lambda p: (p / "e.txt").write_text("") or p / "e.txt", "lists no image URIs"),
    (lambda p: (p / "b.txt").write_bytes(b"a.png\n\xff\xfe.png\n") and p / "b.txt", "not a list of image URIs .*UTF8"),
])
def test_bad_and_empty_inputs_say_what_is_wrong(tmp_path, make, message):
    with pytest.raises(NoImagesError, match=message):
        open_source(str(make(tmp_path)))


def test_decode_reports_skipped_files_without_reading_them():
    assert decode_image(Skipped("hidden file")) == (None, "hidden file", 0, 0)
    assert decode_image(io.BytesIO(b"x").getvalue())[1].startswith("not an image")


def test_a_parquet_column_of_paths_is_read_like_a_txt_list(folder, tmp_path):
    table = pa.table({"nsd_id": [7, 3, 5, 9, 4], "label": ["cat", "dog", "x", "y", "z"],
                      "path": ["imgs/b/2.png", "imgs/a/1.jpg", None, str(folder / "c.bmp"), "imgs/a/1.jpg"]})
    pq.write_table(table, tmp_path / "meta.parquet")
    source = open_source(str(tmp_path / "meta.parquet"))
    assert source.kind == "files" and source.ids == ["imgs/a/1.jpg", "imgs/b/2.png", "imgs/c.bmp"]  # relative to its folder
    assert source.uris == [str(folder / r) for r in ("a/1.jpg", "b/2.png", "c.bmp")]
    assert source.duplicates == [{"uri": str(folder / "a" / "1.jpg"), "lines": [2, 5]}]  # rows, 1-based
    assert source.notes == [f"note: '{tmp_path / 'meta.parquet'}': 1 row(s) of column 'path' are empty or null: no "
                            "image there, nothing listed for them"]
    assert [len(b) > 0 for b in source.read(0, 3)] == [True] * 3 and all(isinstance(b, bytes) for b in source.read(0, 3))


def test_a_parquet_image_column_is_chosen_or_refused_in_one_line(tmp_path):
    pq.write_table(pa.table({"path": ["a.png"], "uri": ["b.png"]}), tmp_path / "two.parquet")
    with pytest.raises(NoImagesError, match=r"several columns could hold image paths \(path, uri\); choose one with "
                                            "--image-column"):
        open_source(str(tmp_path / "two.parquet"))
    assert open_source(str(tmp_path / "two.parquet"), column="uri").ids == ["b.png"]
    with pytest.raises(NoImagesError, match="--image-column 'pth' is not a column .columns: path, uri."):
        open_source(str(tmp_path / "two.parquet"), column="pth")
    pq.write_table(pa.table({"image": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(NoImagesError, match="column 'image' holds int64; an image column holds image bytes .binary"):
        open_source(str(tmp_path / "ints.parquet"))
    pq.write_table(pa.table({"image": [b"x"], "path": ["a.png"]}), tmp_path / "both.parquet")
    assert open_source(str(tmp_path / "both.parquet")).kind == "parquet"  # bytes win; the paths are their ids
    assert open_source(str(tmp_path / "both.parquet"), column="path").kind == "files"


def test_the_output_inside_the_input_folder_is_not_listed(folder):
    out = folder / "responses"
    (out / "_commits" / "images").mkdir(parents=True)
    (out / "_commits" / "images" / "part-00000.json").write_text("{}")
    (out / "fmri" / "part-00000.npy").parent.mkdir(parents=True)
    np.save(out / "fmri" / "part-00000.npy", np.zeros(3))
    _image(out / "plots" / "heatmap.png")
    source = open_source(str(folder), exclude=str(out))
    assert not any(i.startswith("responses") for i in source.ids) and len(source) == 7
    assert source.notes == [f"note: the output '{out}' lies inside the input '{folder}': its files are not inputs "
                            "(left out of the listing)"]
    assert "responses/plots/heatmap.png" in open_source(str(folder)).ids  # what it would have listed
    glob = open_source(str(folder) + "/**/*.png", exclude=str(out))
    assert glob.ids == ["b/2.png"] and len(glob.notes) == 1
    assert open_source(str(folder), exclude=str(folder.parent / "elsewhere")).notes == []
