"""WebDataset tar shards as --images: indexed once by their headers, read by ranged reads, every
member accounted for (a corrupt member, a member cut by the shard's end, an unreadable tail, a header
that lies about its size, links and special members)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from ned_ray.errors import ListingChangedError
from ned_ray.job.decode import decode_image
from ned_ray.job.inputs import NoImagesError, Skipped, open_source, tarshards
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.output import open_output
from ned_ray.storage import filesystem

MODELS = "fmri/nsd/fwrf/sub-01/V1,eeg/things_eeg_2/vit_b_32/sub-01"
LONG = "n01440764/" + "a-long-folder-name-" * 6  # > 100 characters: a PAX header, as tar writes long names


def _png(seed: int, side: int = 96) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> list[int]:
    """A tar of the samples (key -> {extension: bytes}); returns each member header's offset."""
    offsets = []
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for key, members in samples:
            for extension, data in members.items():
                offsets.append(tar.offset)
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return offsets


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """4 shards: plain samples; a corrupt image member and a sample without an image; long names
    and a shard cut inside a header; a shard cut inside an image. Also the good images as loose
    files (``loose/<id>.png``). Returns (shards folder, loose folder, {image id: png bytes})."""
    folder, loose = tmp_path / "shards", tmp_path / "loose"
    folder.mkdir()
    good: dict[str, bytes] = {}
    seed = 0

    def sample(shard: str, key: str, **extra: bytes) -> tuple[str, dict[str, bytes]]:
        nonlocal seed
        seed += 1
        good[f"{shard}/{key}"] = _png(seed)
        return key, {"png": good[f"{shard}/{key}"], "cls": str(seed).encode(), "json": b'{"seed": %d}' % seed, **extra}

    _write_shard(folder / "shard-0000.tar", [sample("shard-0000.tar", f"s{i:03d}") for i in range(5)])
    _write_shard(folder / "shard-0001.tar", [sample("shard-0001.tar", "s000"), ("s001", {"jpg": b"\xff\xd8 not a jpeg"}),
                                             ("s002", {"json": b"{}", "cls": b"3"}),
                                             sample("shard-0001.tar", "s003")])
    samples = [sample("shard-0002.tar", f"{LONG}{i}") for i in range(4)]
    offsets = _write_shard(folder / "shard-0002.tar", samples)
    cut = offsets[9] + 100  # inside the header of the 4th sample's image member
    (folder / "shard-0002.tar").write_bytes((folder / "shard-0002.tar").read_bytes()[:cut])
    good.pop(f"shard-0002.tar/{LONG}3")
    samples = [sample("shard-0003.tar", f"s{i:03d}") for i in range(3)]
    offsets = _write_shard(folder / "shard-0003.tar", samples)
    cut = offsets[6] + 512 + 1000  # 1000 bytes into the 3rd sample's image
    (folder / "shard-0003.tar").write_bytes((folder / "shard-0003.tar").read_bytes()[:cut])
    good.pop("shard-0003.tar/s002")
    for image_id, data in good.items():
        (loose / f"{image_id}.png").parent.mkdir(parents=True, exist_ok=True)
        (loose / f"{image_id}.png").write_bytes(data)
    return folder, loose, good


def test_every_member_of_the_shards_is_listed_with_its_fate(shards):
    folder, _, good = shards
    source = open_source(str(folder))
    assert source.kind == "tar" and set(good) <= set(source.ids)
    rows = dict(zip(source.ids, source.listing.column("skip").to_pylist()))
    assert rows["shard-0001.tar/s002"] == "no image member in this tar sample (it has .json, .cls)"
    tail = rows[f"shard-0002.tar/{tarshards.TAIL}"]
    assert tail.startswith("truncated or corrupt tar shard: no readable tar header at byte")
    # + the corrupt member, the sample without image, the tail, the cut image and the tail its header starts
    assert len(source) == len(good) + 5
    items = dict(zip(source.ids, source.read(0, len(source))))
    for image_id, data in good.items():
        assert items[image_id] == data  # the member's exact bytes
    assert isinstance(items["shard-0001.tar/s002"], Skipped)
    assert decode_image(items["shard-0001.tar/s001"])[1] == "not an image: Pillow cannot identify the file format"
    cut = items["shard-0003.tar/s002"]  # never read: its header declares more than the shard holds
    assert isinstance(cut, Skipped) and "the shard ends inside it, or its header is corrupt" in cut.reason
    assert rows["shard-0003.tar/(unreadable tail)"].startswith("truncated or corrupt tar shard")
    assert source.listing.column("version").to_pylist()[0] != ""  # the shard's identity: a changed shard is seen


class _Counting(LocalFileSystem):
    """A local filesystem that counts the bytes and requests of ranged reads."""

    read = requests = 0

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = super().cat_file(path, start=start, end=end, **kwargs)
        _Counting.read += len(data)
        _Counting.requests += 1
        return data


def test_a_shard_is_indexed_from_its_headers_and_read_in_merged_ranges(shards):
    folder, _, _ = shards
    path = str(folder / "shard-0000.tar")
    size = Path(path).stat().st_size
    fs = _Counting(skip_instance_cache=True)
    _Counting.read = _Counting.requests = 0
    index = tarshards.index_shard(fs, path, size)
    assert [name for name, _, _, _ in index.members][:3] == ["s000.png", "s000.cls", "s000.json"]
    assert _Counting.read < 0.25 * size and _Counting.requests <= 6  # headers only, ~one request per sample
    _Counting.read = _Counting.requests = 0
    images = [(offset, length) for name, offset, length, _ in index.members if name.endswith(".png")]
    data = tarshards.read_members(fs, [path] * len(images), *map(list, zip(*images)))
    with open(path, "rb") as fh:
        raw = fh.read()
    assert data == [raw[o:o + n] for o, n in images]
    assert _Counting.requests == 1  # the five images, 1 KB apart, in one request


def test_a_brace_pattern_names_the_shards(shards):
    folder, _, _ = shards
    whole = open_source(str(folder))
    braces = open_source(f"{folder}/shard-{{0000..0003}}.tar")
    assert braces.kind == "tar" and braces.ids == whole.ids
    with pytest.raises(NoImagesError, match=r"names 5 files and 1 of them do not exist \(e.g. '.*shard-0004.tar'\)"):
        open_source(f"{folder}/shard-{{0000..0004}}.tar")


def _config(demo_dir, images, out, **kw) -> EncodeConfig:
    return EncodeConfig(str(demo_dir), str(images), MODELS, str(out), device="cpu", shard_size=4,
                        formats=("parquet",), cpu_threads=1, **kw)


def _by_id(out) -> dict[str, dict[str, np.ndarray]]:
    """{model: {image id: response}} of an output's successful images."""
    result = open_output(str(out))
    ids = result.images().column("image_id").to_numpy(zero_copy_only=False)
    found = {}
    for model in result.models:
        index, values = result.responses(model)
        found[model] = {str(ids[i]).removesuffix(".png"): v for i, v in zip(index, values)}
    return found


def test_a_job_over_tar_shards_encodes_what_loose_files_give_and_accounts_for_every_member(shards, demo_dir, tmp_path,
                                                                                          monkeypatch):
    folder, loose, good = shards
    summary = run_encode(_config(demo_dir, folder, tmp_path / "tar", executor="local"))
    assert summary["images"] == {**summary["images"], "ok": len(good), "error": 1, "skipped": 4}
    status = pq.read_table(tmp_path / "tar" / "images.parquet").to_pydict()
    fate = dict(zip(status["image_id"], status["status"]))
    assert fate["shard-0001.tar/s001"] == "error"
    assert fate["shard-0001.tar/s002"] == fate[f"shard-0002.tar/{tarshards.TAIL}"] == fate["shard-0003.tar/s002"] == \
        fate[f"shard-0003.tar/{tarshards.TAIL}"] == "skipped"
    run_encode(_config(demo_dir, loose, tmp_path / "loose", executor="local"))
    tar, files = _by_id(tmp_path / "tar"), _by_id(tmp_path / "loose")
    for model in tar:
        assert tar[model].keys() == files[model].keys() == good.keys()
        for image_id in good:
            np.testing.assert_array_equal(tar[model][image_id], files[model][image_id])

    indexed = []
    index_shard = tarshards.index_shard
    monkeypatch.setattr(tarshards, "index_shard", lambda fs, path, size: indexed.append(path) or index_shard(fs, path, size))
    again = run_encode(_config(demo_dir, folder, tmp_path / "tar", executor="local"))
    assert again["run"]["plan"] == "nothing to do" and indexed == []  # the recorded listing: no shard read again
    with open(folder / "shard-0000.tar", "ab") as fh:  # the shard changes: a rerun refuses, naming it
        fh.write(b"\0" * 1024)
    with pytest.raises(ListingChangedError, match="modified .*shard-0000.tar/s00"):
        run_encode(_config(demo_dir, folder, tmp_path / "tar", executor="local"))
    assert [Path(p).name for p in indexed] == ["shard-0000.tar"]  # only the changed shard was indexed again


@pytest.mark.slow
def test_tar_shards_on_s3_through_ray_data_match_the_local_job(shards, demo_dir, tmp_path, ray_cluster, s3_server):
    folder, _, good = shards
    fs, _ = filesystem("s3://ned-ray-tar", s3_server)
    fs.mkdir("ned-ray-tar")
    for path in sorted(folder.iterdir()):
        fs.pipe_file(f"ned-ray-tar/shards/{path.name}", path.read_bytes())
    remote = EncodeConfig(str(demo_dir), "s3://ned-ray-tar/shards/shard-{0000..0003}.tar", MODELS, "s3://ned-ray-tar/out",
                          device="cpu", shard_size=4, formats=("parquet",), storage_options=s3_server, executor="ray")
    summary = run_encode(remote)
    assert (summary["run"]["executor"], summary["images"]["ok"], summary["images"]["error"]) == ("ray", len(good), 1)
    run_encode(_config(demo_dir, folder, tmp_path / "local", executor="local"))
    a, b = open_output(remote.output, s3_server), open_output(str(tmp_path / "local"))
    assert a.images().column("image_id").to_pylist() == b.images().column("image_id").to_pylist()
    for model in a.models:
        np.testing.assert_array_equal(a.responses(model)[1], b.responses(model)[1])


def _patch_size(path: Path, header: int, size: int) -> None:
    """Rewrite a ustar header's size field (and its checksum, so the header stays valid)."""
    raw = bytearray(path.read_bytes())
    block = raw[header:header + 512]
    assert size < 8**11  # 11 octal digits
    block[124:136] = f"{size:011o}\0".encode()
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    raw[header:header + 512] = block
    path.write_bytes(bytes(raw))


@pytest.fixture
def odd_shards(tmp_path: Path) -> tuple[Path, dict[str, bytes], dict[str, str]]:
    """Shards with headers that lie about sizes, links, special members, and GNU tar's own archive of a
    folder with links. Returns (folder, {ok image id: bytes}, {skipped image id: words of its reason})."""
    folder = tmp_path / "odd"
    folder.mkdir()
    pngs = [_png(100 + i, side=40) for i in range(4)]
    with tarfile.open(folder / "pax.tar", "w", format=tarfile.PAX_FORMAT) as tar:  # b's PAX size: 1 TiB
        for name, data, pax in (("a.png", pngs[0], {}), ("b.png", pngs[1], {"size": str(2**40)}), ("c.png", pngs[2], {})):
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = len(data), pax
            tar.addfile(info, io.BytesIO(data))
    offsets = _write_shard(folder / "ustar.tar", [("a", {"png": pngs[0]}), ("b", {"png": pngs[1]}), ("c", {"png": pngs[2]})])
    _patch_size(folder / "ustar.tar", offsets[1], 4 * 2**30)  # b's ustar size: 4 GiB
    with tarfile.open(folder / "links.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        def add(name: str, kind: bytes, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.linkname = kind, len(data), link
            tar.addfile(info, io.BytesIO(data) if data else None)
        add("dir", tarfile.DIRTYPE)
        add("dir/img0.png", tarfile.REGTYPE, pngs[3])
        add("dir/hard.png", tarfile.LNKTYPE, link="dir/img0.png")
        add("dir/soft.png", tarfile.SYMTYPE, link="img0.png")
        add("dir/away.png", tarfile.SYMTYPE, link="../../outside.png")
        add("dir/dev.png", tarfile.CHRTYPE)
        add("dir/fifo.png", tarfile.FIFOTYPE)
        add("dir/fifo", tarfile.FIFOTYPE)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "x.png").write_bytes(pngs[0])
    os.link(tree / "x.png", tree / "y.png")
    (tree / "z.png").symlink_to("x.png")
    subprocess.run(["tar", "-cf", str(folder / "gnu.tar"), "-C", str(tree), "."], check=True)
    ok = {"pax.tar/a": pngs[0], "ustar.tar/a": pngs[0], "links.tar/dir/img0": pngs[3], "links.tar/dir/hard": pngs[3],
          "links.tar/dir/soft": pngs[3], "gnu.tar/./x": pngs[0], "gnu.tar/./y": pngs[0], "gnu.tar/./z": pngs[0]}
    skipped = {"pax.tar/b": f"declares {2**40} bytes", f"pax.tar/{tarshards.TAIL}": "no readable tar header",
               "ustar.tar/b": f"declares {4 * 2**30} bytes", f"ustar.tar/{tarshards.TAIL}": "no readable tar header",
               "links.tar/dir/away": "a symbolic link to '../../outside.png', which is not a file of this shard",
               "links.tar/dir/dev": "a character device", "links.tar/dir/fifo": "a FIFO"}
    return folder, ok, skipped


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_lying_headers_links_and_special_members_are_rows_with_their_reason(odd_shards, demo_dir, tmp_path, executor,
                                                                           request, capsys):
    from ned_ray.cli import main

    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    folder, ok, skipped = odd_shards
    out = tmp_path / "out"
    assert main(["encode", "--ned-dir", str(demo_dir), "--images", str(folder), "--models", "fmri/nsd/fwrf/sub-01/V1",
                 "--output", str(out), "--device", "cpu", "--cpu-threads", "1", "--quiet", "--executor", executor]) == 0
    capsys.readouterr()
    status = pq.read_table(out / "images.parquet").to_pydict()
    rows = {i.removesuffix(".png"): (s, e) for i, s, e in zip(status["image_id"], status["status"], status["error"])}
    assert {i for i, (s, _) in rows.items() if s == "ok"} == set(ok)
    for image_id, words in skipped.items():
        assert rows[image_id][0] == "skipped" and words in rows[image_id][1], (image_id, rows[image_id])
    assert set(rows) == set(ok) | set(skipped) | {"links.tar/dir/fifo"}  # every member but the folders is a row
    assert "a FIFO" in rows["links.tar/dir/fifo"][1]  # a sample without an image says what its member is
    result = open_output(str(out))
    ids = result.images().column("image_id").to_pylist()
    index, values = result.responses("fmri/nsd/fwrf/sub-01/V1")
    by_id = {ids[i].removesuffix(".png"): v for i, v in zip(index, values)}
    np.testing.assert_array_equal(by_id["links.tar/dir/hard"], by_id["links.tar/dir/img0"])  # the same bytes
    np.testing.assert_array_equal(by_id["gnu.tar/./z"], by_id["pax.tar/a"])
