"""Nothing lost: bad images, a killed driver, a killed actor, unloadable models, hostile inputs."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ned_ray.cli import main as cli_main
from ned_ray.errors import StorageError
from ned_ray.ids import UnknownModelError
from ned_ray.job.decode import decode_image
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.modeldir import NedDir
from ned_ray.models.group import ModelGroup, ModelLoadError
from ned_ray.output import open_output
from ned_ray.safeload import UnsafePickleError

from .conftest import own_ray, torch_threads
from .faults import kill_an_actor_once

REPO = Path(__file__).resolve().parents[2]
FMRI = "fmri/nsd/fwrf/sub-01/V1"
EEG = "eeg/things_eeg_2/vit_b_32/sub-01"


def _png(array: np.ndarray, **kw) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **kw)
    return buffer.getvalue()


def _bomb_png(side: int = 60000) -> bytes:
    """A tiny PNG whose header claims side x side pixels (3.6 gigapixels)."""
    data = bytearray(_png(np.zeros((8, 8), np.uint8)))
    ihdr = struct.pack(">II", side, side) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def _corpus(folder: Path) -> dict[str, str]:
    """Good and bad images; returns name -> expected error substring ('' for images that must be encoded)."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG")
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG")
    rotated = io.BytesIO()
    exif = Image.Image().getexif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(rotated, format="JPEG", exif=exif.tobytes())
    files = {
        "good_rgb.png": (_png(rgb), ""),
        "good_photo.jpg": (jpeg.getvalue(), ""),
        "gray.png": (_png(rgb[..., 0]), ""),
        "rgba.png": (_png(np.dstack([rgb, rgb[..., :1]])), ""),
        "cmyk.jpg": (cmyk.getvalue(), ""),
        "gray16.png": (_png((rgb[..., 1].astype(np.uint16) * 257)), ""),
        "palette.png": (_palette(rgb), ""),
        "exif_rotated.jpg": (rotated.getvalue(), ""),
        "one_pixel.png": (_png(rgb[:1, :1]), ""),
        "corrupt.png": (rng.integers(0, 256, 500, dtype=np.uint8).tobytes(), "not an image"),
        "truncated.jpg": (jpeg.getvalue()[: len(jpeg.getvalue()) // 3], "corrupt or truncated"),
        "truncated.png": (_png(rgb)[:-100], "corrupt or truncated"),
        "empty.jpg": (b"", "empty file"),
        "notes.png": (b"these are my notes, not a picture\n" * 10, "not an image"),
        "bomb.png": (_bomb_png(), "60000x60000 = 3600000000 pixels exceeds --max-pixels 50000000 (checked from the header"),
        "wide.png": (_png(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)), "non-square image 50x20"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: expected for name, (_, expected) in files.items()}


def _palette(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_images_are_reported_and_good_ones_encoded(ray_cluster, demo_dir, tmp_path):
    expected = _corpus(tmp_path / "corpus")
    config = EncodeConfig(str(demo_dir), str(tmp_path / "corpus"), f"{FMRI},{EEG}", str(tmp_path / "out"),
                          device="cpu", non_square="error", cpu_threads=1, max_pixels=50_000_000)
    summary = run_encode(config)
    images = {row["image_id"]: row for row in open_output(config.output).images().to_pylist()}
    assert summary["images"]["total"] == len(expected) == summary["images"]["ok"] + summary["images"]["error"]
    assert summary["images"]["error"] == sum(1 for e in expected.values() if e)
    for name, error in expected.items():
        assert (images[name]["status"], error in images[name]["error"]) == ("error" if error else "ok", True), images[name]
    assert images["exif_rotated.jpg"]["status"] == "ok"  # orientation applied (documented)
    # good images: the job's numbers are the API's numbers on the same decoded pixels
    output = open_output(config.output)
    ok_names = [n for n in sorted(expected) if not expected[n]]
    group = ModelGroup(demo_dir, [FMRI, EEG], "cpu")
    prepared = [group.preprocess(decode_image((tmp_path / "corpus" / n).read_bytes())[0].transpose(2, 0, 1)[None].copy())
                for n in ok_names]
    with torch_threads(1):
        reference = group.run({k: torch.cat([p[k] for p in prepared]) for k in group.inputs})
    for mid in group.model_ids:
        index, values = output.responses(mid)
        assert [output.images().column("image_id")[int(i)].as_py() for i in index] == ok_names
        assert np.abs(values - reference[mid]).max() <= 1e-6


def _many_images(folder: Path, n: int) -> None:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img_{i:04d}.png").write_bytes(_png(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)))


def _parts_on_disk(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in (out / FMRI).glob("part-*.parquet"))


def test_actor_killed_mid_batch_job_completes_exactly(ray_cluster, demo_dir, tmp_path):
    _many_images(tmp_path / "images", 48)
    marker = tmp_path / "actor-died"
    with own_ray(num_cpus=2, log_to_driver=False, runtime_env={"worker_process_setup_hook": kill_an_actor_once(str(marker))}):
        summary = run_encode(EncodeConfig(str(demo_dir), str(tmp_path / "images"), FMRI, str(tmp_path / "out"),
                                          device="cpu", shard_size=16, cpu_threads=1))
    assert marker.exists(), "the fault was not injected"
    assert summary["images"] == {"total": 48, "ok": 48, "error": 0, "skipped": 0, "file": "images.parquet"}
    run_encode(EncodeConfig(str(demo_dir), str(tmp_path / "images"), FMRI, str(tmp_path / "clean"), device="cpu",
                            shard_size=16, cpu_threads=1))
    index, values = open_output(str(tmp_path / "out")).responses(FMRI)
    assert index.tolist() == list(range(48))
    np.testing.assert_array_equal(values, open_output(str(tmp_path / "clean")).responses(FMRI)[1])


def _broken_copy(demo_dir: Path, tmp_path: Path, payload: bytes) -> Path:
    copy = tmp_path / "ned"
    shutil.copytree(demo_dir, copy)
    (copy / NedDir(str(copy)).fwrf_weights(1, "V1")[0]).write_bytes(payload)
    return copy


def test_a_model_that_fails_to_load_stops_the_job_early(ray_cluster, demo_dir, tmp_path):
    _many_images(tmp_path / "images", 8)
    good = (demo_dir / NedDir(str(demo_dir)).fwrf_weights(1, "V1")[0]).read_bytes()
    ned = _broken_copy(demo_dir, tmp_path, good[: len(good) // 2])
    start = time.time()
    with pytest.raises(ModelLoadError) as info:
        run_encode(EncodeConfig(str(ned), str(tmp_path / "images"), FMRI, str(tmp_path / "out"), device="cpu"))
    message = str(info.value)
    assert "model fmri/nsd/fwrf/sub-01/V1 failed to load" in message and "weights_sub-01_roi-V1.pt" in message
    assert time.time() - start < 120 and not (tmp_path / "out" / "_manifest.json").exists()


def test_a_malicious_checkpoint_never_runs_in_a_job(ray_cluster, demo_dir, tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    buffer = io.BytesIO()
    torch.save({"stim_mean": np.zeros((1, 3, 1, 1), np.float32), "best_params": Payload()}, buffer)
    ned = _broken_copy(demo_dir, tmp_path, buffer.getvalue())
    _many_images(tmp_path / "images", 4)
    with pytest.raises(UnsafePickleError, match="weights_sub-01_roi-V1.pt: refusing to unpickle.*system"):
        run_encode(EncodeConfig(str(ned), str(tmp_path / "images"), FMRI, str(tmp_path / "out"), device="cpu"))
    assert not (tmp_path / "pwned").exists()


def test_ids_cannot_write_outside_the_output(ray_cluster, demo_dir, tmp_path):
    for spec in ("../../etc/x", "fmri/nsd/fwrf/sub-01/../../../../tmp", "/etc/passwd", "fmri/nsd/fwrf/sub-01/V1/.."):
        with pytest.raises(UnknownModelError):
            run_encode(EncodeConfig(str(demo_dir), str(tmp_path), spec, str(tmp_path / "out")))
    # image ids with '..' and absolute paths are data, never output paths
    (tmp_path / "deep" / "inner").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(_png(np.zeros((8, 8, 3), np.uint8)))
    listing = tmp_path / "deep" / "inner" / "list.txt"
    listing.write_text(f"../../outside.png\n{tmp_path / 'outside.png'}\n")
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "deep" / "out"
    run_encode(EncodeConfig(str(demo_dir), str(listing), FMRI, str(out), device="cpu"))
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p == out or out in p.parents for p in created)
    ids = open_output(str(out)).images().column("image_id").to_pylist()
    assert sorted(ids) == sorted(["../../outside.png", str(tmp_path / "outside.png")])


def test_unwritable_output_and_unreachable_bucket_are_one_line_errors(ray_cluster, demo_dir, tmp_path, capsys):
    _many_images(tmp_path / "images", 2)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot write the output to"):
        run_encode(EncodeConfig(str(demo_dir), str(tmp_path / "images"), FMRI, str(blocker / "out")))
    from .conftest import free_port

    options = json.dumps({"s3": {"key": "x", "secret": "y", "client_kwargs": {
        "endpoint_url": f"http://127.0.0.1:{free_port()}", "region_name": "us-west-2"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}})
    code = cli_main(["encode", "--ned-dir", str(demo_dir), "--images", "s3://no-such-bucket/stimuli/", "--models", FMRI,
                     "--output", str(tmp_path / "o"), "--storage-options", options])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "s3://no-such-bucket/stimuli/" in err, err
    assert "Traceback" not in err
