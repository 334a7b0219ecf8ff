"""On a GPU: the encode job end to end vs the models alone, fp32 / tf32 / bf16 (run by hand).

Suites, with real-size random weights (bench/realsize.py): ``eeg`` = 10 EEG subjects (one ViT-B/32
pass, the folded float32 projection, 10 x 4 regressions); ``fmri`` = subject 1, all 23 ROIs (25
fwrf backbones, 45,151 voxels).

* model-only <precision>: a loaded ModelGroup on CUDA, preprocessed uint8 images in pinned memory,
  blocks of --block images, synchronised; after one warm-up block. Deviation from fp32 over all
  images: max |x - fp32| / std(fp32), worst model.
* job: ``run_encode --device cuda`` on the same images as PNG/JPEG files, Ray started before timing
  (model loading, decoding, writing included); ``job x5`` on 5x the images gives the steady state
  (T(5n) - T(n)) / 4n and the fixed cost. Skipped, with a note, where Ray is not installed.

    PYTHONPATH=/tmp/site:. python bench/gpu.py --suite eeg --images 500
    PYTHONPATH=/tmp/site:. python bench/gpu.py --suite fmri --images 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from compare import make_images  # noqa: E402
from realsize import build_eeg, build_fmri  # noqa: E402

from ned_ray import ModelGroup  # noqa: E402


def model_only(group: ModelGroup, inputs: dict[str, torch.Tensor], block: int, precision: str) -> tuple[float, dict]:
    n = next(iter(inputs.values())).shape[0]
    group.run({k: v[:block] for k, v in inputs.items()}, precision)  # warm-up: cuDNN plans, allocator
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = [group.run({k: v[s:s + block] for k, v in inputs.items()}, precision) for s in range(0, n, block)]
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return elapsed, {m: np.concatenate([o[m] for o in out]) for m in out[0]}


def job(ned_dir: Path, spec: str, folder: Path, out: Path, precision: str) -> float:
    from ned_ray.job.options import EncodeConfig
    from ned_ray.job.run import run_encode

    start = time.perf_counter()
    summary = run_encode(EncodeConfig(ned_dir=str(ned_dir), images=str(folder), models=spec, output=str(out),
                                      device="cuda", precision=precision))
    assert summary["images"]["error"] == 0 and all("cuda" in d["ran_on"] for d in summary["devices"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["eeg", "fmri"], required=True)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--block", type=int, default=256, help="images per model call (the job's shard size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-job", action="store_true", help="model-only figures (no Ray)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU")
    try:
        import ray
    except ImportError:
        ray = None
    run_job = ray is not None and not args.no_job
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ned = build_eeg(root / "ned", 10) if args.suite == "eeg" else build_fmri(root / "ned", 1)
        spec = "eeg/*" if args.suite == "eeg" else "fmri/nsd/fwrf/sub-01/*"
        ids = [str(m) for m in ned.catalogue]
        images = make_images(root / "images", args.images)
        if run_job:
            make_images(root / "images5", 5 * args.images)
            ray.init(include_dashboard=False, log_to_driver=False)
        start = time.perf_counter()
        group = ModelGroup(ned, ids, "cuda", batch_size=args.block)
        load = time.perf_counter() - start
        inputs = {k: v.pin_memory() for k, v in group.preprocess(images).items()}
        times: dict[str, list[float]] = {}
        deviation: dict[str, float] = {}
        for r in range(args.repeats):
            _, exact = model_only(group, inputs, args.block, "fp32")
            for precision in ("fp32", "tf32", "bf16"):
                elapsed, values = model_only(group, inputs, args.block, precision)
                times.setdefault(f"model-only {precision}", []).append(elapsed)
                deviation[precision] = max(float(np.abs(values[m] - exact[m]).max() / exact[m].std()) for m in exact)
            if run_job:
                for precision in ("fp32", "bf16"):
                    times.setdefault(f"job {precision}", []).append(
                        job(root / "ned", spec, root / "images", root / f"out-{precision}-{r}", precision))
                times.setdefault("job x5 fp32", []).append(
                    job(root / "ned", spec, root / "images5", root / f"out5-{r}", "fp32"))
            print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    gpu = torch.cuda.get_device_name(0)
    result = {"suite": args.suite, "gpu": gpu, "models": len(ids), "images": args.images, "block": args.block,
              "load_seconds": round(load, 2), "batch_sizes": group.batch_sizes, "projection": group.projection,
              "deviation_over_std": deviation, "runs": times,
              "images_per_second": {k: (5 if "x5" in k else 1) * args.images / v for k, v in med.items()}}
    if run_job:
        steady = (med["job x5 fp32"] - med["job fp32"]) / (4 * args.images)
        result["job_steady_images_per_second"] = 1 / steady
        result["job_fixed_seconds"] = med["job fp32"] - args.images * steady
        result["steady_over_model_only"] = (1 / steady) / result["images_per_second"]["model-only fp32"]
    else:
        result["job"] = "not run: Ray is not installed here (see DEVELOPERS.md) or --no-job"
    print(f"suite {args.suite} on {gpu}: {len(ids)} models, {args.images} images of 425 px, block {args.block}, "
          f"model load {load:.1f}s, batch sizes {group.batch_sizes}, EEG projection {group.projection}")
    for k, v in times.items():
        n = 5 * args.images if "x5" in k else args.images
        print(f"  {k:18s} median {med[k]:7.2f}s  ({n / med[k]:8.1f} images/s)  runs {[round(x, 2) for x in v]}")
    print("  max |x - fp32| / std(fp32), worst model: " + ", ".join(f"{k} {v:.2e}" for k, v in deviation.items()))
    if run_job:
        print(f"  job steady state {result['job_steady_images_per_second']:.1f} images/s = "
              f"{result['steady_over_model_only']:.2f} of model-only fp32; fixed cost {result['job_fixed_seconds']:.1f}s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
