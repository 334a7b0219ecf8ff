"""Images read from, and outputs written to, s3:// (moto's server) and gs:// (a GCS emulator)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.output import open_output
from ned_ray.storage import filesystem


def _upload(fs, local_folder, remote: str) -> None:
    for path in sorted(local_folder.glob("*.png")):
        fs.pipe_file(f"{remote}/{path.name}", path.read_bytes())


def _run(bucket_uri: str, options: dict, demo_dir, folder, tmp_path, ned_on_bucket: bool):
    fs, root = filesystem(bucket_uri, options)
    fs.mkdir(root)
    _upload(fs, folder, f"{root}/stimuli/set-a")
    ned_uri = str(demo_dir)
    models = "fmri/nsd/fwrf/sub-01/V1,eeg/things_eeg_2/vit_b_32/sub-02"
    if ned_on_bucket:  # the NED directory itself on the bucket, as on a cluster
        for path in demo_dir.rglob("*"):
            if path.is_file():
                fs.pipe_file(f"{root}/ned/{path.relative_to(demo_dir).as_posix()}", path.read_bytes())
        ned_uri = f"{bucket_uri}/ned"
    config = EncodeConfig(ned_dir=ned_uri, images=f"{bucket_uri}/stimuli", models=models, output=f"{bucket_uri}/out",
                          device="cpu", shard_size=8, formats=("parquet", "npy"), storage_options=options,
                          model_cache=str(tmp_path / "model_cache"))
    summary = run_encode(config)
    assert fs.exists(f"{root}/out/_manifest.json") and fs.exists(f"{root}/out/images.parquet")
    local = EncodeConfig(ned_dir=str(demo_dir), images=str(folder), models=models, output=str(tmp_path / "local"),
                         device="cpu", shard_size=8)
    run_encode(local)
    return summary, open_output(config.output, options), open_output(local.output)


@pytest.fixture(scope="module")
def png_folder(fixture_image_folder):
    return fixture_image_folder


def test_s3_round_trip(ray_cluster, s3_server, demo_dir, png_folder, tmp_path):
    summary, remote, local = _run("s3://ned-ray-test", s3_server, demo_dir, png_folder, tmp_path, ned_on_bucket=True)
    assert summary["images"]["ok"] == 20
    cached = [p for p in (tmp_path / "model_cache").iterdir() if p.stat().st_size > 100_000]
    assert cached, "remote model files were not cached on the node's disk"
    assert remote.images().column("image_id").to_pylist()[0] == "set-a/images_00.png"
    for model in remote.models:
        np.testing.assert_array_equal(remote.responses(model)[1], local.responses(model)[1])


def test_gcs_round_trip(ray_cluster, gcs_server, demo_dir, png_folder, tmp_path):
    summary, remote, local = _run("gs://ned-ray-test", gcs_server, demo_dir, png_folder, tmp_path, ned_on_bucket=False)
    assert summary["images"]["ok"] == 20
    for model in remote.models:
        np.testing.assert_array_equal(remote.responses(model)[1], local.responses(model)[1])


def test_a_local_list_of_s3_uris_reads_them_with_the_job_options(ray_cluster, s3_server, demo_dir, png_folder, tmp_path):
    fs, _ = filesystem("s3://ned-ray-list", s3_server)
    fs.mkdir("ned-ray-list")
    _upload(fs, png_folder, "ned-ray-list/stimuli")
    names = sorted(p.name for p in png_folder.glob("*.png"))[:4]
    listing = tmp_path / "stimuli.txt"
    listing.write_text("".join(f"s3://ned-ray-list/stimuli/{n}\n" for n in names) + "s3://ned-ray-list/stimuli/gone.png\n"
                       + f"{png_folder / names[0]}\n")  # a local file in the same list
    config = EncodeConfig(ned_dir=str(demo_dir), images=str(listing), models="fmri/nsd/fwrf/sub-01/V1",
                          output=str(tmp_path / "out"), device="cpu", storage_options=s3_server)
    summary = run_encode(config)
    assert summary["images"] == {"total": 6, "ok": 5, "error": 1, "skipped": 0, "file": "images.parquet"}
    rows = {r["image_id"]: r for r in open_output(config.output).images().to_pylist()}
    assert rows["s3://ned-ray-list/stimuli/gone.png"]["status"] == "error"
    assert "gone.png" in rows["s3://ned-ray-list/stimuli/gone.png"]["error"]
    assert all(rows[f"s3://ned-ray-list/stimuli/{n}"]["status"] == "ok" for n in names)
    # the same pictures from local files give the same numbers
    local = EncodeConfig(ned_dir=str(demo_dir), images=str(png_folder / "images_0*.png"), models=config.models,
                         output=str(tmp_path / "local"), device="cpu")
    run_encode(local)
    by_name = dict(zip(open_output(local.output).images().column("image_id").to_pylist(),
                       open_output(local.output).responses(config.models)[1]))
    index, values = open_output(config.output).responses(config.models)
    ids = open_output(config.output).images().column("image_id").to_pylist()
    for i, row in zip(index, values):
        np.testing.assert_array_equal(row, by_name[ids[i].rsplit("/", 1)[-1]])


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_a_missing_output_bucket_is_one_line_and_creates_nothing(scheme, request, ray_cluster, demo_dir, png_folder,
                                                                 tmp_path, capsys):
    from ned_ray.cli import main as cli_main

    options = request.getfixturevalue("s3_server" if scheme == "s3" else "gcs_server")
    fs, _ = filesystem(f"{scheme}://x", options)
    bucket = f"ned-ray-missing-{scheme}"
    args = ["encode", "--ned-dir", str(demo_dir), "--images", str(png_folder), "--models", "fmri/nsd/fwrf/sub-01/V1",
            "--output", f"{scheme}://{bucket}/out", "--device", "cpu", "--storage-options", json.dumps(options)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"'{scheme}://{bucket}' does not exist" in err, err
    assert "--create-output-bucket" in err
    fs.invalidate_cache()
    assert not fs.exists(bucket)  # nothing created
    assert cli_main([*args, "--create-output-bucket"]) == 0  # asked for: the bucket is made and the job runs
    fs.invalidate_cache()
    assert fs.exists(f"{bucket}/out/_manifest.json")


def test_a_changed_listing_on_s3_is_appended_or_refused(ray_cluster, s3_server, demo_dir, png_folder):
    """Added objects are encoded alone; a modified (new ETag) or removed object is refused in one line;
    --overwrite starts over. Listings are taken fresh from the store each run (no fsspec cache)."""
    from ned_ray.errors import ListingChangedError

    fs, root = filesystem("s3://ned-ray-listing", s3_server)
    fs.mkdir(root)
    pngs = sorted(png_folder.glob("*.png"))
    for path in pngs[:6]:
        fs.pipe_file(f"{root}/in/{path.name}", path.read_bytes())
    config = EncodeConfig(ned_dir=str(demo_dir), images="s3://ned-ray-listing/in", models="fmri/nsd/fwrf/sub-01/V1",
                          output="s3://ned-ray-listing/out", device="cpu", shard_size=4, storage_options=s3_server)
    assert run_encode(config)["run"]["encoded_images"] == 6
    for path in pngs[6:8]:
        fs.pipe_file(f"{root}/in/{path.name}", path.read_bytes())
    summary = run_encode(config)
    assert summary["run"]["encoded_images"] == 2 and summary["run"]["skipped_images"] == 6
    out = open_output(config.output, s3_server)
    index, _ = out.responses("fmri/nsd/fwrf/sub-01/V1")
    assert index.tolist() == list(range(8)) and out.images().num_rows == 8
    fs.pipe_file(f"{root}/in/{pngs[2].name}", pngs[9].read_bytes())  # same name, other bytes
    with pytest.raises(ListingChangedError, match=f"1 modified .e.g. {pngs[2].name}"):
        run_encode(config)
    fs.rm(f"{root}/in/{pngs[3].name}")
    with pytest.raises(ListingChangedError, match=f"1 removed .e.g. {pngs[3].name}"):
        run_encode(config)
    assert open_output(config.output, s3_server).images().num_rows == 8  # untouched by the refusals
    summary = run_encode(EncodeConfig(**{**config.__dict__, "overwrite": True}))
    assert summary["run"]["encoded_images"] == 7 and open_output(config.output, s3_server).images().num_rows == 7
