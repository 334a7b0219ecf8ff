"""The parts of the numbers path that --precision and the device change (run by hand).

1. fwrf under bf16: the backbone in bf16 with the pooling/readout head in float32 (what ned-ray
   does) vs the whole model in bf16 (what it did before): max |x - fp32| / std(fp32) per model.
2. EEG projection at real size (460,800 features -> 250 components): float64 scale-then-project (as
   NED, the CPU default) vs the scaler folded into one float32 product (the GPU default): time per
   block, and parity of the folded float32 path with NED's fixture outputs.

    python bench/precision_parts.py [--device cuda] [--block 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ned_ray import ModelGroup, NedDir  # noqa: E402
from ned_ray.models.vit_eeg import _Projection  # noqa: E402
from ned_ray.preprocess import fwrf_normalise  # noqa: E402

FIXTURES = Path(os.environ.get("NED_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "ned-fixtures"))


def fwrf_bf16(device: str) -> None:
    images = np.load(FIXTURES / "images.npy")
    ned = NedDir(str(FIXTURES / "ned_dir"))
    ids = [m for m in ned.catalogue if m.modality == "fmri"]
    group = ModelGroup(ned, ids, device)
    x = group.preprocess(images)["fwrf"].to(device)
    print(f"fwrf under bf16 autocast ({device}), {len(images)} fixture images: max |x - fp32| / std(fp32)")
    for mid in ids:
        model = group.fmri[mid]
        with torch.inference_mode():
            exact = model(x)
            with torch.autocast(device, dtype=torch.bfloat16):
                head_fp32 = model(x)
                whole = torch.cat([h(e(fwrf_normalise(x))).float() for e, h in zip(model.encoders, model.heads)], 1)
        std = exact.std()
        print(f"  {str(mid):32s} head float32 {float((head_fp32 - exact).abs().max() / std):.4f}   "
              f"whole model bf16 {float((whole - exact).abs().max() / std):.4f}")


def projection(device: str, block: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    features = 460_800
    mean, scale = rng.normal(0, 1, features), rng.uniform(0.5, 2, features)
    components = rng.standard_normal((250, features), dtype=np.float32) / np.sqrt(features)
    x = torch.from_numpy(rng.normal(0, 1, (block, features)).astype(np.float32)).to(device)
    print(f"EEG projection, {block} images x {features} features -> 250 ({device}), median of {repeats}:")
    for name, dtype in (("float64 (NED's order)", torch.float64), ("float32 folded", torch.float32)):
        proj = _Projection(mean, scale, [components], [np.zeros(features)], dtype).to(device)
        times = []
        for _ in range(repeats + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.inference_mode():
                proj(x)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        print(f"  {name:22s} {1000 * statistics.median(times[1:]):8.1f} ms per block  runs "
              f"{[round(1000 * t, 1) for t in times[1:]]}")


def eeg_parity(device: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "vit.pth"
        subprocess.run([sys.executable, str(FIXTURES / "make_vit_weights.py"), str(weights)], check=True,
                       capture_output=True)
        ids = ["eeg/things_eeg_2/vit_b_32/sub-01", "eeg/things_eeg_2/vit_b_32/sub-02"]
        print(f"EEG parity with NED's fixture outputs ({device}): max |ours - NED| / std(NED)")
        for projection_dtype in ("float64", "float32"):
            group = ModelGroup(str(FIXTURES / "ned_dir"), ids, device, vit_weights=str(weights),
                               projection=projection_dtype)
            worst = 0.0
            for images in ("images", "images_227", "images_small"):
                out = group.encode(np.load(FIXTURES / f"{images}.npy"))
                for s, mid in zip((1, 2), group.model_ids):
                    expected = np.load(FIXTURES / "expected" / f"eeg_sub-0{s}__{images}.npy")
                    worst = max(worst, float(np.abs(out[mid] - expected).max() / expected.std()))
            print(f"  projection {projection_dtype}: worst {worst:.2e} (tolerance 1e-4)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    fwrf_bf16(args.device)
    eeg_parity(args.device)
    projection(args.device, args.block, args.repeats)


if __name__ == "__main__":
    main()
