"""How much more do 10 EEG subjects cost than 1? (run by hand; results go to bench/RESULTS.md)

Builds a NED-format EEG directory at the real sizes (torchvision ViT-B/32 architecture with random
weights, 460,800 features, 250 PCA components, 4 x (8820, 250) regressions per subject), then times
encoding the same images with a model hosting 1 subject and one hosting all 10, side by side,
alternating, median of --repeats runs. The NED-style loop (one single-subject model per subject,
each with its own backbone pass) is timed once for comparison.

    python bench/eeg_subjects.py --images 100 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from realsize import build_eeg as build

from ned_ray.modeldir import NedDir
from ned_ray.models.group import ModelGroup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--workdir", default=None, help="where to build the model directory (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp) / "ned_dir"
        t0 = time.perf_counter()
        ned = build(root, args.subjects) if not (root / NedDir.EEG_PCA).exists() else NedDir(str(root))
        print(f"built real-size EEG directory in {time.perf_counter() - t0:.0f}s at {root}")
        ids = [f"eeg/things_eeg_2/vit_b_32/sub-{s:02d}" for s in range(1, args.subjects + 1)]
        images = np.random.default_rng(1).integers(0, 256, (args.images, 3, 256, 256), dtype=np.uint8)
        one, many = ModelGroup(ned, ids[:1], "cpu"), ModelGroup(ned, ids, "cpu")
        one.encode(images[:4]), many.encode(images[:4])  # warm-up
        times: dict[str, list[float]] = {"1 subject": [], f"{args.subjects} subjects": []}
        for _ in range(args.repeats):
            for name, group in (("1 subject", one), (f"{args.subjects} subjects", many)):
                start = time.perf_counter()
                group.encode(images)
                times[name].append(time.perf_counter() - start)
        medians = {k: statistics.median(v) for k, v in times.items()}
        start = time.perf_counter()
        for mid in ids:  # the NED way: one model per subject, each runs the backbone
            ModelGroup(ned, [mid], "cpu").encode(images)
        ned_loop = time.perf_counter() - start
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images of 256 px")
        for name, values in times.items():
            print(f"{name:12s} median {medians[name]:.2f}s  runs {[round(v, 2) for v in values]}  "
                  f"({args.images / medians[name]:.1f} images/s)")
        ratio = medians[f"{args.subjects} subjects"] / medians["1 subject"]
        print(f"ratio {args.subjects} subjects / 1 subject: {ratio:.3f}")
        print(f"NED-style loop over {args.subjects} single-subject models (load + encode, once): {ned_loop:.1f}s "
              f"= {ned_loop / medians[f'{args.subjects} subjects']:.1f}x the shared model")


if __name__ == "__main__":
    main()
