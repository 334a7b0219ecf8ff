"""Throughput of the encode job on the demo models (run by hand; results go to bench/RESULTS.md).

Writes N images (random crops of the built-in photographs, alternately JPEG and PNG, 300-640 px)
to a folder, then runs the full job (all 9 demo models: 6 fMRI fwrf, 3 EEG subjects on the small
demo ViT) on a local Ray cluster started beforehand, so the figure excludes Ray's start-up.

    python bench/job_throughput.py --images 200 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from PIL import Image

from ned_ray.demo import DEMO_PHOTOS, make_demo_models
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode


def write_images(folder: Path, n: int) -> None:
    import skimage.data

    rng = np.random.default_rng(0)
    photos = [np.asarray(Image.fromarray(np.asarray(getattr(skimage.data, p)())).convert("RGB")) for p in DEMO_PHOTOS]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        image = Image.fromarray(photo[top:top + side, left:left + side]).resize((int(rng.integers(300, 641)),) * 2)
        image.save(folder / (f"img_{i:05d}.jpg" if i % 2 == 0 else f"img_{i:05d}.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="all")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_demo_models(str(root / "ned"))
        write_images(root / "images", args.images)
        ray.init(include_dashboard=False, log_to_driver=False)
        seconds = []
        for r in range(args.repeats):
            config = EncodeConfig(ned_dir=str(root / "ned"), images=str(root / "images"), models=args.models,
                                  output=str(root / f"out{r}"), device="cpu")
            start = time.perf_counter()
            summary = run_encode(config)
            seconds.append(time.perf_counter() - start)
            assert summary["images"]["ok"] == args.images
        median = statistics.median(seconds)
        print(f"{args.images} images x {len(summary['models'])} models, groups {summary['run']['model_groups']}")
        print(f"runs (s): {[round(s, 1) for s in seconds]}; median {median:.1f}s = {args.images / median:.1f} images/s")


if __name__ == "__main__":
    main()
