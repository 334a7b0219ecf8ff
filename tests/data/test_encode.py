"""ned_ray.data.encode and Encoder inside users' own Ray Data pipelines, on 2 logical GPUs: the same
numbers as ``ned-ray encode`` on the same images, from every kind of image column, error rows kept."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

import ned_ray.data as nd
from ned_ray.data.encode import decode_images
from ned_ray.errors import ConfigError, UnknownModelError

from .conftest import MODELS


def _same(rows: dict[str, np.ndarray], reference: dict[str, dict[str, np.ndarray]], names: list[str]) -> None:
    """Each model's column equals ned-ray encode's responses to the same files (names: row order)."""
    for mid, by_name in reference.items():
        got = np.stack([rows[mid][i] for i, name in enumerate(names) if name in by_name])
        want = np.stack([by_name[name] for name in names if name in by_name])
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.std()))


@pytest.mark.slow
def test_a_driver_script_read_images_filter_encode_write_gives_ned_rays_numbers(gpu_ray, demo_dir, photos, reference,
                                                                               tmp_path):
    ray = gpu_ray
    good = tmp_path / "good"  # the photographs but the broken file (read_images would fail on it)
    good.mkdir()
    for path in photos.glob("*.*"):
        if path.name != "zz_broken.jpg":
            (good / path.name).write_bytes(path.read_bytes())
    ds = ray.data.read_images(str(good), include_paths=True)
    ds = ds.filter(lambda row: "coffee" not in row["path"])  # the user's own step
    ds = nd.encode(ds, ned_dir=str(demo_dir), models=MODELS, cpu_threads=1)
    ds.write_parquet(str(tmp_path / "out"))
    rows = ray.data.read_parquet(str(tmp_path / "out")).take_batch(100, batch_format="numpy")
    names = [Path(p).name for p in rows["path"]]
    assert sorted(names) == sorted(p.name for p in good.iterdir() if "coffee" not in p.name)
    assert set(rows["status"]) == {"ok"} and "image" not in rows  # the pixels are left out
    assert {m: rows[m].shape[1:] for m in reference} == {m: next(iter(v.values())).shape for m, v in reference.items()}
    _same(rows, reference, names)


@pytest.mark.slow
def test_bytes_paths_and_hugging_face_structs_keep_their_error_rows(gpu_ray, demo_dir, photos, reference):
    import datasets

    ray = gpu_ray
    files = sorted(photos.glob("*.*"))
    hf = datasets.Dataset.from_dict(
        {"image": [{"bytes": p.read_bytes(), "path": p.name} for p in files] + [None],
         "label": list(range(len(files) + 1))},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    eeg = {m: v for m, v in reference.items() if m.startswith("eeg/")}  # one pool: one model load per step
    ds = ray.data.from_huggingface(hf)
    out = nd.encode(ds, ned_dir=str(demo_dir), models=list(eeg), cpu_threads=1, keep_images=True).take_batch(100, batch_format="numpy")
    names = [(d or {}).get("path") or "" for d in out["image"]]
    assert sorted(out["label"].tolist()) == list(range(len(files) + 1))  # the user's columns, every row (Ray Data
    assert all(name == (files[label].name if label < len(files) else "")  # keeps no order unless asked)
               for name, label in zip(names, out["label"]))
    status = dict(zip(names, out["status"]))
    assert status.pop("zz_broken.jpg") == "error" and status.pop("") == "error" and set(status.values()) == {"ok"}
    errors = dict(zip(names, out["error"]))
    assert errors["zz_broken.jpg"].startswith("corrupt or truncated image") and "null" in errors[""]
    bad = [i for i, s in enumerate(out["status"]) if s != "ok"]
    assert all(np.isnan(out[m][bad]).all() for m in eeg)  # no number for an image that was not read
    _same(out, eeg, names)

    by_path = ray.data.from_items([{"uri": str(p)} for p in files] + [{"uri": str(photos / "missing.jpg")}])
    out = by_path.map_batches(nd.Encoder, fn_constructor_kwargs={"ned_dir": str(demo_dir), "models": list(eeg),
                                                                 "image_column": "uri", "id_column": "uri", "cpu_threads": 1},
                              concurrency=1, num_gpus=1, batch_size=8).take_batch(100, batch_format="numpy")
    names = [Path(p).name for p in out["image_id"]]
    assert "uri" not in out and sorted(names) == sorted([p.name for p in files] + ["missing.jpg"])
    missing = names.index("missing.jpg")
    assert out["status"][missing] == "error" and "FileNotFoundError" in out["error"][missing]
    _same(out, eeg, names)


@pytest.mark.slow
def test_webdataset_samples_with_their_codes(gpu_ray, demo_dir, photos, reference, tmp_path):
    ray = gpu_ray
    files = sorted(p for p in photos.glob("*.*") if p.name != "zz_broken.jpg")
    with tarfile.open(tmp_path / "shard-0000.tar", "w") as tar:
        for path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(path.name)  # key: the stem; column: its extension
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = ray.data.read_webdataset(str(tmp_path / "shard-0000.tar"), decoder=None)
    eeg = [m for m in reference if m.startswith("eeg/")]
    out = nd.encode(raw.map(_one_image_column), ned_dir=str(demo_dir), models=eeg, store="both",
                    cpu_threads=1).take_batch(100, batch_format="numpy")
    names = [next(p.name for p in files if p.stem == key) for key in out["__key__"]]
    _same(out, {m: reference[m] for m in eeg}, names)
    assert all(out[nd.code_column(m)].shape == (len(files), 16) for m in eeg)  # the demo EEG models' PCA codes


def _one_image_column(row: dict) -> dict:
    """WebDataset gives one column per extension: the one each sample has, as ``image``."""
    found = [row.pop(ext, None) for ext in ("jpg", "png")]
    return {**row, "image": next(v for v in found if isinstance(v, bytes))}


def test_bad_arguments_fail_on_the_driver_in_one_line(gpu_ray, demo_dir):
    ds = gpu_ray.data.from_items([{"image": b""}])
    with pytest.raises(UnknownModelError, match="fmri/nsd/fwrf/sub-09/V1"):
        nd.encode(ds, ned_dir=str(demo_dir), models="fmri/nsd/fwrf/sub-09/V1")
    with pytest.raises(ConfigError, match="--precision must be one of"):
        nd.encode(ds, ned_dir=str(demo_dir), models=MODELS, precision="fp8")


def test_decoding_a_batch_names_the_columns_and_reads_every_kind_of_value(photos):
    png = (photos / "camera.png").read_bytes()
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    batch = {"image": np.array([png, rgb, rgb[:, :, 0], {"bytes": None, "path": str(photos / "camera.png")},
                                rgb.astype(np.float32), None, 7], dtype=object)}
    kw = {"image_column": None, "kinds": ("vit",), "non_square": "center-crop", "max_pixels": 10**8}
    with pytest.raises(ConfigError, match="holds int values"):
        decode_images(batch, **kw)
    batch["image"] = batch["image"][:6]
    out = decode_images(batch, **kw)
    assert out["status"].tolist() == ["ok", "ok", "ok", "ok", "error", "error"]
    assert "dtype float32" in out["error"][4] and "null" in out["error"][5]
    vit = out["__ned_ray_input_vit"]
    assert (vit[0] == vit[1]).all() and (vit[0] == vit[3]).all()  # bytes, arrays and paths: the same input
    with pytest.raises(ConfigError, match="none of image, bytes.*its columns: pixels"):
        decode_images({"pixels": batch["image"]}, **kw)
    with pytest.raises(ConfigError, match="already has column.*status"):
        decode_images({**batch, "status": batch["image"]}, **kw)
