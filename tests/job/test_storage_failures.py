"""A full or read-only output disk is one line naming the path and exit 2, on both executors; after
the disk is grown the same command completes exactly and leaves no temporary file.

The disk is real: a size-limited tmpfs mounted in a private mount namespace (``unshare --user
--mount``, no root needed), grown with ``mount -o remount,size=...`` between the two runs.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ned_ray.output import open_output

REPO = Path(__file__).resolve().parents[2]
FMRI = "fmri/nsd/fwrf/sub-01/V1"
N = 240


def _namespaces_work() -> str:
    """'' when unprivileged mount namespaces work here, else why not."""
    if not shutil.which("unshare"):
        return "the unshare command (util-linux) is not installed"
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"],
                           capture_output=True, text=True)
    return "" if probe.returncode == 0 else f"this kernel refuses unprivileged mount namespaces ({probe.stderr.strip()})"


REASON = _namespaces_work()
needs_namespaces = pytest.mark.skipif(bool(REASON), reason=f"a real size-limited disk needs `unshare --user --mount`: {REASON}")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("disk_images")
    for i in range(N):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buffer, "PNG")
        (folder / f"img_{i:04d}.png").write_bytes(buffer.getvalue())
    return folder


def _in_namespace(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)


def _encode(demo_dir: Path, images: Path, out: str, executor: str, log: str) -> str:
    return (f"{sys.executable} -m ned_ray.cli encode --ned-dir {demo_dir} --images {images} --models {FMRI} "
            f"--output {out} --device cpu --shard-size 16 --cpu-threads 1 --quiet --executor {executor} "
            f"> {log}.out 2> {log}.err; echo $? > {log}.rc")


@needs_namespaces
@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_full_disk_is_one_line_and_the_rerun_after_growing_it_completes(demo_dir, images, tmp_path, executor):
    disk = tmp_path / "disk"
    disk.mkdir()
    script = " && ".join([
        f"mount -t tmpfs -o size=200k tmpfs {disk}",  # the whole output needs ~400 kB: the disk fills mid-job
        _encode(demo_dir, images, f"{disk}/out", executor, "first"),
        f"mount -o remount,size=64m {disk}",
        _encode(demo_dir, images, f"{disk}/out", executor, "second"),
        f"cp -a {disk}/out {tmp_path}/result",
    ])
    done = _in_namespace(script, tmp_path)
    assert done.returncode == 0, done.stderr
    first = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "2", first
    ours = [line for line in first.splitlines() if line.startswith("ned-ray encode:")]
    assert len(ours) == 1 and "Traceback" not in first, first
    assert ours[0].startswith(f"ned-ray encode: error: cannot write '{disk}/out/") and "No space left on device" in ours[0]
    assert "the disk is full" in ours[0] and "rerun the same command to resume" in ours[0], ours
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()
    result = open_output(str(tmp_path / "result"))
    assert result.responses(FMRI)[0].tolist() == list(range(N)) and result.manifest["images"]["ok"] == N
    assert [p for p in (tmp_path / "result").rglob(".tmp-*")] == []  # nothing of the failed writes is left
    print(f"\nfull disk ({executor}): {ours[0]}")


@needs_namespaces
def test_a_read_only_output_is_one_line_naming_it(demo_dir, images, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    script = " && ".join([f"mount -t tmpfs -o size=1m tmpfs {disk}", f"mkdir {disk}/out",
                          f"mount -o remount,ro {disk}", _encode(demo_dir, images, f"{disk}/out", "local", "run")])
    done = _in_namespace(script, tmp_path)
    assert done.returncode == 0, done.stderr
    err = (tmp_path / "run.err").read_text()
    assert (tmp_path / "run.rc").read_text().strip() == "2" and len(err.strip().splitlines()) == 1, err
    assert f"'{disk}/out" in err and "the filesystem is read-only" in err, err


def _reader(command: str, log: str) -> str:
    return f"{sys.executable} -m ned_ray.cli {command} > {log}.out 2> {log}.err; echo $? > {log}.rc"


@needs_namespaces
def test_reading_commands_on_full_and_read_only_disks_are_one_line_and_leave_nothing(families_output, tmp_path):
    """``ned-ray export --to netcdf`` onto a full disk (HDF5 used to die there with a segmentation
    fault), and ``ned-ray plot`` of an output kept on read-only media."""
    full, media = tmp_path / "full", tmp_path / "media"
    full.mkdir()
    media.mkdir()
    eeg = "eeg/things_eeg_2/vit_b_32/sub-01"
    script = " && ".join([
        f"mount -t tmpfs -o size=64k tmpfs {full}",  # the export is ~2 MB
        _reader(f"export {families_output} --model {eeg} --to netcdf --dest {full}/eeg.nc", "export"),
        f"ls -A {full} > export.left",
        f"mount --bind {families_output} {media}", f"mount -o remount,bind,ro {media}",  # the output, read-only
        _reader(f"plot {media} --models {eeg}", "plot"),
        _reader(f"plot {media} --models {eeg} --to {tmp_path}/figures", "elsewhere"),
    ])
    done = _in_namespace(script, tmp_path)
    assert done.returncode == 0, done.stderr
    for log, fix in (("export", "the disk is full"), ("plot", "write the figures elsewhere with --to DIR")):
        err = (tmp_path / f"{log}.err").read_text()
        assert (tmp_path / f"{log}.rc").read_text().strip() == "2", err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and fix in err, err
    assert (tmp_path / "export.left").read_text() == ""  # no partial file, no temporary file
    assert (tmp_path / "elsewhere.rc").read_text().strip() == "0", (tmp_path / "elsewhere.err").read_text()
    assert (tmp_path / "figures" / "heatmap.png").exists()
