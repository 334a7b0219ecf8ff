"""``ned_ray.data.encode`` in a driver script vs ``ned-ray encode --executor ray``, on the same images
and models, as whole processes (Python, Ray's start, loading, decoding, writing), alternated (run by
hand; results go to bench/RESULTS.md).

    python bench/data_vs_job.py --images 2000 --repeats 3

*job*: ``ned-ray encode --executor ray --device DEV --quiet`` into a fresh output folder. *data*: a
driver script ``ray.data.read_binary_files -> ned_ray.data.encode -> write_parquet`` into a fresh
folder. Both start their own local Ray instance. The demo models (6 fwrf, 3 EEG subjects) by default.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from job_throughput import write_images

from ned_ray.demo import make_demo_models

DRIVER = """
import sys, ray, ray.data, ned_ray.data
images, ned, models, out, device = sys.argv[1:6]
ray.init(include_dashboard=False, log_to_driver=False)
ds = ray.data.read_binary_files(images)
ned_ray.data.encode(ds, ned_dir=ned, models=models, device=device).write_parquet(out)
"""


def run(mode: str, images: Path, ned: Path, models: str, out: Path, device: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    if mode == "job":
        command = [str(Path(sys.executable).with_name("ned-ray")), "encode", "--ned-dir", str(ned), "--images",
                   str(images), "--models", models, "--output", str(out), "--executor", "ray", "--device", device,
                   "--quiet"]
    else:
        command = [sys.executable, "-c", DRIVER, str(images), str(ned), models, str(out), device]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ned-ray-data-bench-"))
    images, ned = work / "images", work / "ned"
    if not images.is_dir():
        write_images(images, args.images)
    if not (ned / "encoding_models").is_dir():
        make_demo_models(str(ned))
    times: dict[str, list[float]] = {"job": [], "data": []}
    for repeat in range(args.repeats):
        for mode in (("job", "data") if repeat % 2 == 0 else ("data", "job")):
            seconds = run(mode, images, ned, args.models, work / f"out-{mode}", args.device)
            times[mode].append(seconds)
            print(f"{mode}: {seconds:.1f} s ({args.images / seconds:.1f} images/s)", flush=True)
    job, data = statistics.median(times["job"]), statistics.median(times["data"])
    print(f"median job {job:.1f} s, data {data:.1f} s: data / job = {data / job:.2f}x "
          f"({args.images} images, models {args.models}, device {args.device})")


if __name__ == "__main__":
    main()
