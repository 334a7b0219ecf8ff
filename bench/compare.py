"""Side by side, one run: the NED way vs the ned-ray job vs the models alone (run by hand).

* baseline: the NED-compatible API called once per model (a loop over EEG subjects or fMRI ROIs),
  images already in memory as one uint8 array, batch 100 (NED's), model loading included.
* job: the Ray Data job on the same images stored as files (alternately JPEG and PNG), all models
  in one run, model loading (actor start) included; the Ray cluster is started before timing.
* model-only: the same models, loaded beforehand, on preprocessed uint8 tensors in memory (batch 100):
  the ceiling for the job.

* model-only bf16: the same, under ``--precision bf16`` (autocast), with its max deviation from fp32.
* job x5 (``--steady``): the job on 5x the images, to separate the job's fixed costs (actor start,
  model loading, hashing) from its steady-state throughput: (T(5n) - T(n)) / 4n.

Modes alternate within each repeat; medians of --repeats. Real model sizes, random weights
(bench/realsize.py).

    python bench/compare.py --suite eeg --images 200 --repeats 3 --steady
    python bench/compare.py --suite fmri --images 100 --repeats 3
    python bench/compare.py --suite eeg --images 200 --repeats 3 --steady --executor local --no-baseline

``--executor local``: the job in this process (job/executors/local.py) instead of Ray Data (Ray is then not started).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from realsize import build_eeg, build_fmri  # noqa: E402

from ned_ray import NED, ModelGroup  # noqa: E402
from ned_ray.job.options import EncodeConfig  # noqa: E402
from ned_ray.job.run import run_encode  # noqa: E402


def make_images(folder: Path, n: int, side: int = 425) -> np.ndarray:
    """n photographs-like images (crops of scikit-image's photos), as files and as one uint8 array."""
    import skimage.data

    from ned_ray.demo import DEMO_PHOTOS

    rng = np.random.default_rng(0)
    photos = [np.asarray(Image.fromarray(np.asarray(getattr(skimage.data, p)())).convert("RGB")) for p in DEMO_PHOTOS]
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        crop = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        image = Image.fromarray(photo[top:top + crop, left:left + crop]).resize((side, side), Image.Resampling.BILINEAR)
        if i % 2 == 0:
            image.save(folder / f"img_{i:05d}.png")
            arrays.append(np.asarray(image))
        else:  # JPEG: the array is what the file decodes to, so every mode sees the same pixels
            image.save(folder / f"img_{i:05d}.jpg", quality=95)
            arrays.append(np.asarray(Image.open(folder / f"img_{i:05d}.jpg").convert("RGB")))
    return np.stack(arrays).transpose(0, 3, 1, 2).copy()


def baseline(ned_dir: Path, ids: list[str], images: np.ndarray, device: str) -> float:
    start = time.perf_counter()
    ned = NED(ned_dir)
    for mid in ids:
        parts = mid.split("/")
        subject = int(parts[3][4:])
        model = ned.get_encoding_model(parts[0], parts[1], parts[2], subject, parts[4] if len(parts) > 4 else None, device=device)
        ned.encode(model, images, return_metadata=False)
        del model
    return time.perf_counter() - start


def job(ned_dir: Path, spec: str, folder: Path, out: Path, device: str, executor: str = "ray") -> float:
    start = time.perf_counter()
    summary = run_encode(EncodeConfig(ned_dir=str(ned_dir), images=str(folder), models=spec, output=str(out), device=device,
                                      executor=executor))
    assert summary["images"]["error"] == 0
    return time.perf_counter() - start


def model_only(group: ModelGroup, inputs: dict[str, torch.Tensor], precision: str = "fp32") -> tuple[float, dict]:
    n = next(iter(inputs.values())).shape[0]
    start = time.perf_counter()
    out = [group.run({k: v[s:s + 100] for k, v in inputs.items()}, precision) for s in range(0, n, 100)]
    elapsed = time.perf_counter() - start
    return elapsed, {m: np.concatenate([o[m] for o in out]) for m in out[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["eeg", "fmri"], required=True)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steady", action="store_true", help="also run the job on 5x the images")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--executor", default="ray", choices=["ray", "local"], help="the job's executor")
    parser.add_argument("--no-baseline", action="store_true", help="skip the NED API loop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.suite == "eeg":
            ned = build_eeg(root / "ned", 10)
            spec = "eeg/*"
        else:
            ned = build_fmri(root / "ned", 1)
            spec = "fmri/nsd/fwrf/sub-01/*"
        ids = [str(m) for m in ned.catalogue]
        images = make_images(root / "images", args.images)
        if args.steady:
            make_images(root / "images5", 5 * args.images)
        if args.executor == "ray":
            ray.init(include_dashboard=False, log_to_driver=False)
        group = ModelGroup(ned, ids, args.device, batch_size=100)
        inputs = group.preprocess(images)
        modes = (["baseline"] if not args.no_baseline else []) + ["job", "model-only", "model-only bf16"] + (
            ["job x5"] if args.steady else [])
        times: dict[str, list[float]] = {k: [] for k in modes}
        deviation: dict[str, float] = {}
        for r in range(args.repeats):
            if not args.no_baseline:
                times["baseline"].append(baseline(root / "ned", ids, images, args.device))
            times["job"].append(job(root / "ned", spec, root / "images", root / f"out{r}", args.device, args.executor))
            elapsed, exact = model_only(group, inputs)
            times["model-only"].append(elapsed)
            elapsed, reduced = model_only(group, inputs, "bf16")
            times["model-only bf16"].append(elapsed)
            deviation = {m: float(np.abs(reduced[m] - exact[m]).max() / exact[m].std()) for m in exact}
            if args.steady:
                times["job x5"].append(job(root / "ned", spec, root / "images5", root / f"out5-{r}", args.device,
                                           args.executor))
            print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()), flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"suite {args.suite}: {len(ids)} models, {args.images} images of 425 px, torch threads {torch.get_num_threads()}")
        for k, v in times.items():
            n = 5 * args.images if k == "job x5" else args.images
            print(f"  {k:16s} median {med[k]:7.1f}s  ({n / med[k]:6.2f} images/s)  runs {[round(x, 1) for x in v]}")
        if "baseline" in med:
            print(f"  job speed-up over baseline: {med['baseline'] / med['job']:.2f}x")
        print(f"  job throughput / model-only throughput: {med['model-only'] / med['job']:.2f}")
        print(f"  bf16 speed-up (model-only): {med['model-only'] / med['model-only bf16']:.2f}x; max |bf16 - fp32| / std "
              f"over all images: worst model {max(deviation.values()):.2e}, median model {statistics.median(deviation.values()):.2e}")
        if args.steady:
            steady = (med["job x5"] - med["job"]) / (4 * args.images)
            print(f"  job steady state (T(5n) - T(n)) / 4n: {1 / steady:.2f} images/s = "
                  f"{(args.images / med['model-only']) and (1 / steady) / (args.images / med['model-only']):.2f} of model-only; "
                  f"fixed cost T(n) - n x steady: {med['job'] - args.images * steady:.1f}s")


if __name__ == "__main__":
    main()
