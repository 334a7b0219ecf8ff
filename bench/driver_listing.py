"""Driver memory and time to plan a job over a 1,000,000-entry `.txt` list (run by hand).

For each size, a fresh process runs the driver's own steps on a list of `s3://` URIs (a list of a
cloud bucket's keys, as a user would write for ImageNet): list the input (`open_source`),
fingerprint the listing, write `_listing.parquet`, work out what is left to do (`Work.of`), cut the
shard table and hand it to Ray Data (`ray.data.from_arrow`, Ray started before timing). It prints
the resident set size after each step and the process's peak, so that the growth per entry can be
read off two sizes.

    python bench/driver_listing.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def measure(n: int, workdir: Path) -> dict:
    """The driver's steps for an n-entry list, in this process."""
    import ray

    from ned_ray.ids import ModelId
    from ned_ray.job.commit import Ledger, listing_fingerprint, write_listing
    from ned_ray.job.executors import Work
    from ned_ray.job.inputs import open_source
    from ned_ray.storage import filesystem

    listing = workdir / f"list_{n}.txt"
    with open(listing, "w") as fh:
        for i in range(n):
            fh.write(f"s3://imagenet-bucket/train/n{i // 1300:08d}/n{i // 1300:08d}_{i:07d}.JPEG\n")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    steps = {"ray started": (0.0, _rss_mib())}

    def step(name, fn):
        t = time.perf_counter()
        result = fn()
        steps[name] = (time.perf_counter() - t, _rss_mib())
        return result

    source = step("open_source (list read, sorted, Arrow listing)", lambda: open_source(str(listing)))
    step("listing fingerprint", lambda: listing_fingerprint(source.listing))
    fs, root = filesystem(str(workdir / f"out_{n}"))
    fs.makedirs(root, exist_ok=True)
    step("write _listing.parquet", lambda: write_listing(fs, root, source.listing))
    work = step("work left (empty output)",
                lambda: Work.of(Ledger(), [ModelId("fmri", "nsd", "fwrf", 1, "V1")], len(source), 256))
    shards = step("shard rows (start, stop)", lambda: [{"start": a, "stop": b} for a, b in work.remaining])
    step("ray.data.from_items (one block per shard)", lambda: ray.data.from_items(shards, override_num_blocks=len(shards)))
    step("listing put once in the object store",
         lambda: ray.put(source.listing.select(["image_id", "uri", "skip"])))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ray.shutdown()
    return {"entries": n, "shards": len(shards), "steps": steps, "peak_rss_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one size, JSON out
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(measure(args.one, Path(tmp))))
        return
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"\n{n:,} entries, {result['shards']:,} shards; peak RSS {result['peak_rss_mib']:.0f} MiB")
        print("| step | seconds | RSS after (MiB) |\n|---|---|---|")
        for name, (seconds, rss) in result["steps"].items():
            print(f"| {name} | {seconds:.2f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
