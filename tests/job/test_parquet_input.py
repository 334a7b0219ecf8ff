"""Parquet inputs of many files (Hugging Face datasets' layout): image columns as bytes or as
``struct<bytes, path>``, ids from a column, the struct's path or row numbers, row groups read per
shard; the same on hf:// (a stand-in filesystem: no network here), on moto S3 and through Ray Data."""

from __future__ import annotations

import io

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from ned_ray.job.inputs import NoImagesError, open_source
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.output import open_output
from ned_ray.storage import filesystem

MODELS = "fmri/nsd/fwrf/sub-01/V1,eeg/things_eeg_2/vit_b_32/sub-01"


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _write_dataset(root, n_files=3, rows=10, paths=True, row_group_size=4) -> dict[str, bytes]:
    """``data/train-0000k-of-0000n.parquet`` files as ``datasets`` writes them: an ``image`` struct
    (bytes, path) and a ``label``. Returns {path field: bytes}."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    images = {}
    for k in range(n_files):
        blobs = [_png(k * rows + r) for r in range(rows)]
        names = [f"img_{k * rows + r:04d}.png" if paths else None for r in range(rows)]
        images.update(zip(names, blobs))
        struct = pa.array([{"bytes": b, "path": p} for b, p in zip(blobs, names)],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        table = pa.table({"image": struct, "label": pa.array(np.arange(rows) % 3)})
        pq.write_table(table, root / "data" / f"train-{k:05d}-of-{n_files:05d}.parquet", row_group_size=row_group_size)
    return images


def test_a_folder_of_parquet_shards_is_one_input_with_the_struct_paths_as_ids(tmp_path):
    images = _write_dataset(tmp_path / "ds")
    source = open_source(str(tmp_path / "ds"))
    assert source.kind == "parquet" and source.ids == sorted(images) and len(source) == 30
    assert source.read(8, 13) == [images[i] for i in source.ids[8:13]]  # rows across two files
    assert source.read(0, 30) == [images[i] for i in source.ids]
    glob = open_source(str(tmp_path / "ds" / "data" / "train-0000[01]-*.parquet"))
    assert glob.ids == sorted(images)[:20] and source.notes == []
    (tmp_path / "ds" / "README.md").write_text("a dataset card")
    assert open_source(str(tmp_path / "ds")).notes == [f"note: '{tmp_path / 'ds'}': 1 file(s) beside its Parquet files "
                                                        "are not inputs (e.g. README.md)"]


def test_ids_are_row_numbers_per_file_without_paths_and_a_chosen_column_must_be_unique(tmp_path):
    _write_dataset(tmp_path / "ds", n_files=2, rows=3, paths=False)
    source = open_source(str(tmp_path / "ds"))
    assert source.ids == [f"data/train-0000{k}-of-00002.parquet/{r}" for k in range(2) for r in range(3)]
    with pytest.raises(NoImagesError, match=r"column 'label' has duplicate ids \('0' at rows 0 and 3\)"):
        open_source(str(tmp_path / "ds"), id_column="label")
    with pytest.raises(NoImagesError, match="--id-column 'nope' is not a column"):
        open_source(str(tmp_path / "ds"), id_column="nope")
    with pytest.raises(NoImagesError, match="column 'image.path' has 6 empty id"):
        open_source(str(tmp_path / "ds"), id_column="image.path")


def test_shards_must_share_their_image_column(tmp_path):
    _write_dataset(tmp_path / "ds", n_files=2, rows=2)
    pq.write_table(pa.table({"image": pa.array([1, 2])}), tmp_path / "ds" / "data" / "train-00002-of-00002.parquet")
    with pytest.raises(NoImagesError, match=r"train-00002-of-00002.parquet': its column 'image' \(int64\) does not hold "
                                            "image bytes"):
        open_source(str(tmp_path / "ds"))


def test_a_shard_reads_only_the_row_groups_of_its_rows(tmp_path, request):
    blobs = [np.random.default_rng(i).bytes(20_000) for i in range(80)]
    for k in range(2):
        pq.write_table(pa.table({"image": blobs[k * 40:(k + 1) * 40]}), tmp_path / f"part-{k}.parquet", row_group_size=4,
                       compression="none")
    source = open_source(str(tmp_path / "part-*.parquet"))
    read = request.getfixturevalue("local_reads")  # counted from here on
    assert source.read(38, 43) == blobs[38:43]  # 2 rows of one file's last group, 3 of the next file's first
    assert sum(read) < 0.25 * 80 * 20_000, sum(read)  # 2 of the 20 row groups, and the two footers


class _Hub(DirFileSystem):
    """hf:// served from a local folder in the Hub's layout (datasets/<org>/<name>/...): the code path
    of a real ``hf://`` URL, without the network."""

    protocol = "hf"
    root = ""

    def __init__(self, **kwargs):
        super().__init__(path=_Hub.root, fs=LocalFileSystem())


def test_hf_urls_read_a_dataset_in_the_hubs_layout(tmp_path, demo_dir):
    images = _write_dataset(tmp_path / "hub" / "datasets" / "lab" / "stimuli", n_files=2, rows=4)
    from fsspec.registry import _registry

    _Hub.root, before = str(tmp_path / "hub"), _registry.get("hf")
    fsspec.register_implementation("hf", _Hub, clobber=True)
    try:
        source = open_source("hf://datasets/lab/stimuli/data")
        assert source.ids == sorted(images) and source.uris[0].startswith("hf://datasets/lab/stimuli/data/train-")
        summary = run_encode(EncodeConfig(str(demo_dir), "hf://datasets/lab/stimuli", MODELS, str(tmp_path / "out"),
                                          device="cpu", shard_size=4, executor="local", cpu_threads=1))
        assert summary["images"]["ok"] == 8
    finally:  # fsspec's own hf:// (huggingface_hub's HfFileSystem) again for later tests
        _registry.pop("hf", None)
        if before is not None:
            _registry["hf"] = before


def test_a_listing_recorded_before_offsets_existed_keeps_its_order_and_reads_with_the_inputs_columns(tmp_path):
    """An output started by an earlier ned-ray recorded its listing without ``offset``: a rerun keeps
    that order (image_index) and takes how to read each image from the input's listing now."""
    from ned_ray.job.commit import reconcile

    _write_dataset(tmp_path / "ds", n_files=1, rows=6)
    current = open_source(str(tmp_path / "ds")).listing
    recorded = current.drop(["offset"]).take(pa.array([5, 4, 3, 2, 1, 0]))
    listing, added = reconcile(recorded, current, "out")
    assert added == 0 and listing.schema == current.schema
    assert listing.column("image_id").to_pylist() == recorded.column("image_id").to_pylist()
    assert listing.column("offset").to_pylist() == [5, 4, 3, 2, 1, 0]
    listing, added = reconcile(recorded.slice(0, 4), current, "out")  # two images added since: appended
    assert added == 2 and listing.column("offset").to_pylist() == [5, 4, 3, 2, 0, 1]


@pytest.mark.slow
def test_parquet_shards_on_s3_through_ray_data_match_the_local_job(tmp_path, demo_dir, ray_cluster, s3_server):
    images = _write_dataset(tmp_path / "ds")
    fs, _ = filesystem("s3://ned-ray-parquet", s3_server)
    fs.mkdir("ned-ray-parquet")
    for path in sorted((tmp_path / "ds" / "data").iterdir()):
        fs.pipe_file(f"ned-ray-parquet/ds/data/{path.name}", path.read_bytes())
    remote = EncodeConfig(str(demo_dir), "s3://ned-ray-parquet/ds", MODELS, "s3://ned-ray-parquet/out", device="cpu",
                          shard_size=8, storage_options=s3_server, executor="ray")
    summary = run_encode(remote)
    assert (summary["run"]["executor"], summary["images"]["ok"]) == ("ray", len(images))
    local = EncodeConfig(str(demo_dir), str(tmp_path / "ds"), MODELS, str(tmp_path / "out"), device="cpu", shard_size=8,
                         executor="local", cpu_threads=1)
    run_encode(local)
    a, b = open_output(remote.output, s3_server), open_output(local.output)
    assert a.images().column("image_id").to_pylist() == b.images().column("image_id").to_pylist() == sorted(images)
    for model in a.models:
        np.testing.assert_array_equal(a.responses(model)[1], b.responses(model)[1])
