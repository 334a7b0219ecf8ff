"""Reading images from S3 (moto's server, on this machine): WebDataset tar shards vs loose files.

The same N JPEG images (random content, ~``--side`` px) uploaded twice to a local moto S3 server:
as N loose objects and as ``--shards`` tar shards (each sample: .jpg + .cls + .json, as ImageNet's
WebDataset shards). For each layout, side by side and alternating over ``--repeats``: the listing
(``open_source``: list the folder; tar: index every shard from its headers) and the reads of every
image in the job's shards of ``--shard-size`` (``ImageSource.read``, what each decode task does).
Reported: seconds, images/s, S3 requests (moto counts them) per image.

    python bench/tar_read.py --images 4000 --shards 8 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from ned_ray.job.inputs import open_source
from ned_ray.storage import filesystem


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jpeg(seed: int, side: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)  # smooth-ish content: realistic JPEG sizes
    buffer = io.BytesIO()
    Image.fromarray(small).resize((side, side), Image.BILINEAR).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


COUNTER = {"n": 0}


def _count_requests(fs) -> None:
    """Count every request s3fs sends (botocore's before-send event on its client)."""
    import fsspec.asyn

    async def hook():
        client = await fs.set_session()
        client.meta.events.register("before-send.s3", lambda **kw: COUNTER.__setitem__("n", COUNTER["n"] + 1))

    fsspec.asyn.sync(fs.loop, hook)


def _read_all(source, shard_size: int) -> int:
    n = 0
    for start in range(0, len(source), shard_size):
        items = source.read(start, min(len(source), start + shard_size))
        n += sum(isinstance(i, bytes) for i in items)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    port = _port()
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        options = {"s3": {"key": "testing", "secret": "testing",
                          "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-west-2"}}}
        fs, _ = filesystem("s3://bench", options)
        fs.mkdir("bench")
        _count_requests(fs)  # the instance every read below uses (fsspec caches it by its options)
        images = [_jpeg(i, args.side) for i in range(args.images)]
        fs.pipe({f"bench/loose/img_{i:06d}.jpg": data for i, data in enumerate(images)})
        per_shard = -(-args.images // args.shards)
        for s in range(args.shards):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                for i in range(s * per_shard, min(args.images, (s + 1) * per_shard)):
                    for ext, data in (("jpg", images[i]), ("cls", str(i % 1000).encode()),
                                      ("json", json.dumps({"i": i}).encode())):
                        info = tarfile.TarInfo(f"img_{i:06d}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
            fs.pipe_file(f"bench/shards/{s:05d}.tar", buffer.getvalue())
        total = sum(map(len, images))
        print(f"{args.images} JPEGs of {args.side} px, {total / 2**20:.1f} MiB, mean {total / args.images / 1024:.1f} KiB; "
              f"{args.shards} tar shards; job shards of {args.shard_size} images")

        layouts = {"loose": "s3://bench/loose", "tar": f"s3://bench/shards/{{00000..{args.shards - 1:05d}}}.tar"}
        keys = ("list", "read", "list_requests", "read_requests")
        results: dict[str, dict[str, list[float]]] = {k: {key: [] for key in keys} for k in layouts}
        for _ in range(args.repeats):
            for name, uri in layouts.items():
                fs.invalidate_cache()
                n0, t0 = COUNTER["n"], time.perf_counter()
                source = open_source(uri, options)
                n1, t1 = COUNTER["n"], time.perf_counter()
                ok = _read_all(source, args.shard_size)
                n2, t2 = COUNTER["n"], time.perf_counter()
                assert ok == args.images, (name, ok)
                for key, value in zip(keys, (t1 - t0, t2 - t1, (n1 - n0) / args.images, (n2 - n1) / args.images)):
                    results[name][key].append(value)
        print("| layout | listing (s) | requests per image (listing) | reads (s) | images/s (reads) | requests per image (reads) |")
        print("|---|---|---|---|---|---|")
        for name, r in results.items():
            m = {key: statistics.median(v) for key, v in r.items()}
            print(f"| {name} | {m['list']:.2f} | {m['list_requests']:.3f} | {m['read']:.2f} | {args.images / m['read']:.0f} "
                  f"| {m['read_requests']:.3f} |")
        loose, tar = (statistics.median(results[k]["read"]) for k in ("loose", "tar"))
        print(f"tar reads / loose reads: {tar / loose:.2f}x the time ({loose / tar:.1f}x the throughput)")
    finally:
        moto.terminate()
        moto.wait()


if __name__ == "__main__":
    main()
