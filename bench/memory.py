"""Peak memory of the job at 200, 1,000 and 5,000 images: streaming, no accumulation (run by hand).

Samples, every 0.2 s, the proportional set size (PSS: shared pages such as Ray's object store are
divided among the processes that map them, not counted once per process) of the driver and the sum
over Ray's worker processes (decode tasks, model actors, write tasks); reports the peaks and the
job's time per size. Demo
models (all 6 fMRI models of the demo directory, on one actor), images of 425 px as files.

    python bench/memory.py --sizes 200 1000 5000
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import ray

sys.path.insert(0, str(Path(__file__).parent))
from compare import make_images  # noqa: E402

from ned_ray.demo import make_demo_models  # noqa: E402
from ned_ray.job.options import EncodeConfig  # noqa: E402
from ned_ray.job.run import run_encode  # noqa: E402


class PeakRSS(threading.Thread):
    """Background sampler of driver PSS and the sum of Ray worker PSS."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.driver = self.workers = self.processes = 0
        self.running = True

    def run(self) -> None:
        me = psutil.Process()
        while self.running:
            total = count = 0
            for proc in psutil.process_iter(["name", "cmdline"]):
                try:
                    cmd = " ".join(proc.info["cmdline"] or [])
                    if (proc.info["name"] or "").startswith("ray::") or "default_worker.py" in cmd:
                        total += proc.memory_full_info().pss  # shared object-store pages split, not multiplied
                        count += 1
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.driver = max(self.driver, me.memory_full_info().pss)
            self.workers = max(self.workers, total)
            self.processes = max(self.processes, count)
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 5000])
    parser.add_argument("--models", default="fmri/*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_demo_models(str(root / "ned"))
        # in another process, so the driver's memory holds nothing of the image generation
        maker = multiprocessing.get_context("spawn").Process(target=make_images, args=(root / "images", max(args.sizes)))
        maker.start()
        maker.join()
        ray.init(include_dashboard=False, log_to_driver=False)
        rows = []
        for size in args.sizes:
            listing = root / f"list_{size}.txt"
            listing.write_text("\n".join(sorted(str(p) for p in (root / "images").iterdir())[:size]) + "\n")
            sampler = PeakRSS()
            sampler.start()
            start = time.perf_counter()
            summary = run_encode(EncodeConfig(ned_dir=str(root / "ned"), images=str(listing), models=args.models,
                                              output=str(root / f"out_{size}"), device="cpu"))
            seconds = time.perf_counter() - start
            sampler.running = False
            sampler.join()
            assert summary["images"]["ok"] == size
            rows.append((size, seconds, sampler.driver / 2**20, sampler.workers / 2**20))
            print(f"{size:6d} images: {seconds:7.1f}s ({size / seconds:5.1f} images/s)  peak driver {rows[-1][2]:7.0f} MiB"
                  f"  peak workers {rows[-1][3]:7.0f} MiB  (at most {sampler.processes} worker processes)", flush=True)
        base = rows[0]
        for size, _, driver, workers in rows[1:]:
            print(f"ratio {size} / {base[0]} images: driver {driver / base[2]:.2f}, workers {workers / base[3]:.2f}, "
                  f"total {(driver + workers) / (base[2] + base[3]):.2f}")


if __name__ == "__main__":
    main()
