"""A job removes ned-ray's own files and nothing else: ``--overwrite`` on folders that hold a user's
files or the job's input, and reruns of outputs whose bookkeeping (commit markers, the manifest) was
crafted to name files outside them: ``../`` paths, absolute paths, another piece's name, another
bucket. Each case runs the CLI as a user does and checks every file of the user's is still there."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ned_ray.cli import main as cli_main
from ned_ray.output import open_output

from .conftest import random_png, store_with_images

FMRI = "fmri/nsd/fwrf/sub-01/V1"
FMRI_2 = "fmri/nsd/fwrf/sub-02/V1"


def _encode(ned: Path, images, out, *extra: str, models: str = FMRI, executor: str = "local") -> int:
    return cli_main(["encode", "--ned-dir", str(ned), "--images", str(images), "--models", models, "--output", str(out),
                     "--device", "cpu", "--cpu-threads", "1", "--quiet", "--executor", executor, *extra])


def _user_files(folder: Path) -> dict[str, bytes]:
    """A user's project: notes, a script, a results table, a figure folder (with some bytes each)."""
    files = {"notes.txt": b"session notes\n", "analysis.py": b"print('hi')\n", "results/table.csv": b"a,b\n1,2\n",
             "plots/my_figure.png": random_png(99), "fmri/my_own_data.txt": b"a user's fmri folder\n"}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def _images(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img_{i}.png").write_bytes(random_png(i))
    return folder


def _still_there(folder: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data, f"{rel} was removed or changed"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.mark.local_executor
@pytest.mark.parametrize("where", ["the input folder", "the input's parent"])
def test_overwrite_refuses_an_output_folder_that_holds_the_input(demo_dir, tmp_path, capsys, where):
    project = tmp_path / "project"
    user = _user_files(project)
    images = _images(project / "images")
    pictures = {p.name: p.read_bytes() for p in images.iterdir()}
    out = images if where == "the input folder" else project
    assert _encode(demo_dir, images, out, "--overwrite") == 2
    line = _error_line(capsys)
    assert line.startswith("ned-ray encode: error: --output") and "holds the job's input" in line, line
    _still_there(project, user)
    _still_there(images, pictures)
    assert not (out / "_job.json").exists() and not (out / "_lease.json").exists()


@pytest.mark.local_executor
def test_overwrite_in_a_project_folder_keeps_every_file_that_is_not_the_outputs(demo_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    project, images = tmp_path / "project", _images(tmp_path / "stimuli")
    user = _user_files(project)
    monkeypatch.chdir(project)
    assert _encode(demo_dir, images, ".", "--overwrite") == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "kept 5 other file(s)" in err, err
    _still_there(project, user)
    assert open_output(str(project)).responses(FMRI)[1].shape[0] == 4


@pytest.mark.local_executor
def test_overwrite_replaces_an_earlier_output_and_keeps_the_users_files_beside_it(demo_dir, tmp_path, capsys):
    images, results = _images(tmp_path / "stimuli"), tmp_path / "results"
    assert _encode(demo_dir, images, results, models=f"{FMRI},{FMRI_2}") == 0
    user = _user_files(results)
    (results / FMRI_2 / "my_note.txt").write_text("a note in a model's folder")
    assert _encode(demo_dir, images, results) == 2  # other models: refused without --overwrite
    assert "--overwrite" in _error_line(capsys)
    assert _encode(demo_dir, images, results, "--overwrite") == 0
    _still_there(results, {**user, f"{FMRI_2}/my_note.txt": b"a note in a model's folder"})
    assert not list((results / FMRI_2).glob("part-*")) and not (results / FMRI_2 / "metadata.json").exists()
    assert open_output(str(results)).models == [FMRI]


def _complete(demo_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    images, out = _images(tmp_path / "stimuli"), tmp_path / "lab" / "shared" / "out"
    assert _encode(demo_dir, images, out) == 0
    return images, out


def _victims(tmp_path: Path) -> dict[str, Path]:
    victim = tmp_path / "victim"
    victim.mkdir()
    paths = {name: victim / name for name in ("secret.txt", "piece.json", "absolute.txt", "other.txt")}
    for path in paths.values():
        path.write_text(f"{path.name} must survive")
    return paths


def _marker(out: Path, writer: str, piece: str) -> Path:
    return out / "_commits" / writer / f"{piece}.json"


@pytest.mark.local_executor
def test_crafted_markers_never_lead_a_rerun_outside_the_output(demo_dir, tmp_path, capsys):
    images, out = _complete(demo_dir, tmp_path)
    victims = _victims(tmp_path)
    images_marker = _marker(out, "images", "part-00000")
    original = json.loads(images_marker.read_text())
    model_marker = next((out / "_commits").glob("models-*/part-00000.json"))
    # a relative path out of the output (of another size, so the rerun would think it damaged)
    images_marker.write_text(json.dumps({**original, "files": {"../../../victim/secret.txt": 1}}))
    # an absolute path, in the model writer's marker
    model = json.loads(model_marker.read_text())
    model_marker.write_text(json.dumps({**model, "files": {str(victims["absolute.txt"]): 1}}))
    # a piece name that climbs out of _commits/ (the marker's own path is built from it)
    relative = os.path.relpath(victims["piece.json"].with_suffix(""), images_marker.parent)
    (images_marker.parent / "part-00001.json").write_text(json.dumps({**original, "piece": relative}))
    # a well-formed marker naming a file of the output's folder that is not its piece's
    (out / "other.txt").write_text("a user's file in the output folder")
    (images_marker.parent / "part-00002.json").write_text(json.dumps({**original, "piece": "part-00002",
                                                                      "files": {"other.txt": 1}}))
    (out / "_manifest.json").unlink()  # as a half-finished output received to "just rerun"
    assert _encode(demo_dir, images, out) == 0
    err = capsys.readouterr().err
    assert "4 commit marker(s)" in err and "are not ned-ray's" in err and "never the files they name" in err, err
    for path in victims.values():
        assert path.read_text() == f"{path.name} must survive"
    assert (out / "other.txt").read_text() == "a user's file in the output folder"
    result = open_output(str(out))
    assert result.manifest["images"]["ok"] == 4 and result.responses(FMRI)[1].shape[0] == 4


@pytest.mark.local_executor
def test_a_manifest_naming_files_outside_the_output_is_not_read(demo_dir, tmp_path, capsys):
    _, out = _complete(demo_dir, tmp_path)
    manifest = json.loads((out / "_manifest.json").read_text())
    manifest["models"][FMRI]["parts"]["parquet"] = ["../../../victim/secret.parquet"]
    (out / "_manifest.json").write_text(json.dumps(manifest))
    assert cli_main(["inspect", str(out)]) == 2
    line = _error_line(capsys)
    assert "manifest names '../../../victim/secret.parquet'" in line and "damaged" in line, line


@pytest.fixture(params=["s3"])
def bucket(request, tmp_path):
    return store_with_images(request, tmp_path, 4)


def test_a_marker_naming_another_bucket_is_not_followed(ray_cluster, demo_dir, bucket, capsys):
    images, out, options, fs = bucket
    victim = f"{out.split('://')[1].split('/')[0]}-victim"
    fs.mkdir(victim)
    fs.pipe_file(f"{victim}/secret.txt", b"must survive")
    extra = ("--storage-options", json.dumps(options))
    assert _encode(demo_dir, images, out, *extra, executor="ray") == 0, capsys.readouterr().err
    root = out.split("://")[1]
    marker = json.loads(fs.cat_file(f"{root}/_commits/images/part-00000.json"))
    fs.pipe_file(f"{root}/_commits/images/part-00000.json",
                 json.dumps({**marker, "files": {f"/{victim}/secret.txt": 1}}).encode())
    fs.rm(f"{root}/_manifest.json")
    assert _encode(demo_dir, images, out, *extra, executor="ray") == 0, capsys.readouterr().err
    assert "are not ned-ray's" in capsys.readouterr().err
    fs.invalidate_cache()
    assert fs.cat_file(f"{victim}/secret.txt") == b"must survive"


@pytest.mark.local_executor
def test_removal_never_follows_a_symbolic_link_out_of_the_output(tmp_path):
    from ned_ray.job.commit import owned
    from ned_ray.storage import filesystem

    victim = tmp_path / "victim"
    (victim / "V1").mkdir(parents=True)
    (victim / "V1" / "part-00000.parquet").write_bytes(b"a user's file")
    out = tmp_path / "out"
    (out / "fmri/nsd/fwrf/sub-01").mkdir(parents=True)
    (out / "fmri/nsd/fwrf/sub-01/V1").symlink_to(victim / "V1")  # a model's folder that is a link elsewhere
    (out / "_job.json").symlink_to(victim / "V1" / "part-00000.parquet")
    (out / "_listing.parquet").write_bytes(b"ned-ray's")
    fs, root = filesystem(str(out))
    own, foreign = owned.scan(fs, root)
    assert own == ["_listing.parquet"] and "_job.json" in foreign and "fmri/nsd/fwrf/sub-01/V1" in foreign
    assert owned.remove(fs, root, ["fmri/nsd/fwrf/sub-01/V1/part-00000.parquet", "_job.json", "_listing.parquet"]) == 1
    assert (victim / "V1" / "part-00000.parquet").read_bytes() == b"a user's file"
    assert (out / "_job.json").is_symlink() and not (out / "_listing.parquet").exists()


@pytest.mark.local_executor
def test_a_recorded_listing_gives_the_order_never_where_to_read(demo_dir, tmp_path, capsys):
    """A crafted ``_listing.parquet`` pointing an image's row at another file: the rerun reads the input's
    own file (the listing as listed now), so the responses are the image's, not the other file's."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, out = _images(tmp_path / "stimuli"), tmp_path / "out"
    assert _encode(demo_dir, images, out, "--shard-size", "2") == 0  # two pieces: one stays committed
    before = open_output(str(out)).responses(FMRI)[1]
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(random_png(1234))
    listing = pq.read_table(out / "_listing.parquet")
    uris = listing.column("uri").to_pylist()
    uris[0] = str(elsewhere)
    pq.write_table(listing.set_column(listing.schema.get_field_index("uri"), "uri", pa.array(uris)),
                   out / "_listing.parquet")
    for marker in (out / "_commits").glob("*/part-00000.json"):  # piece 0 to encode again
        marker.unlink()
    (out / "_manifest.json").unlink()
    assert _encode(demo_dir, images, out, "--shard-size", "2") == 0, capsys.readouterr().err
    np.testing.assert_array_equal(open_output(str(out)).responses(FMRI)[1], before)
