"""Compact outputs (``--store codes``): bytes per image per model both ways, and rebuild throughput.

1. The demo models (every family; random weights, PCAs of 16 components) over ``--images`` images
   (random crops of the built-in photographs), stored as responses and as codes: bytes per image per model,
   measured from the part files (Parquet, zstd), and the rebuild rate of ``Output.responses`` from codes.
2. Real sizes: each family's real output count with BERG's 250-component PCAs (NED's EEG: one shared
   code; BERG's EEG: one PCA per repetition, 1,000 codes), random heads: bytes per image of float32
   responses vs codes (raw arrays, before Parquet), and ``rebuild()`` images/s on this machine's CPU.
3. What accumulating the job's readouts in float64 costs (so that codes rebuild to the stored
   responses exactly): one real-size readout (250 codes -> one fsaverage hemisphere) in float32 and
   in float64 (``ned_ray.models.vit_heads.readout64``), beside a ViT-B/32 forward pass of the same
   batch, side by side in one run, on this machine's CPU (torch threads as given).

    python bench/codes.py --images 512
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ned_ray import EncodeConfig, open_output, run_encode
from ned_ray.demo import make_demo_models, write_demo_images
from ned_ray.output.codes import CodeHead, Readout, rebuild

REAL = {  # family: (outputs per image, code width, readouts)
    "NED EEG (4 x 63 x 140)": (4 * 63 * 140, 250, 4),
    "BERG EEG (4 x 63 x 140)": (4 * 63 * 140, 1000, 4),
    "fsaverage, one hemisphere (163,842)": (163_842, 250, 1),
    "THINGS-fMRI (211,339)": (211_339, 250, 1),
    "THINGS-MEG (271 x 281)": (271 * 281, 250, 1),
    "TVSD (1,024 x 300)": (1024 * 300, 250, 1),
}


def _part_bytes(folder: Path, model: str, pattern: str) -> int:
    return sum(p.stat().st_size for p in (folder / model).glob(pattern))


def demo(images: int, work: Path) -> None:
    make_demo_models(str(work / "ned"), fmri_subjects=(1,), rois=("V1",), eeg_subjects=(1,), berg=True)
    photos = write_demo_images(work / "photos")
    folder = work / "images"
    folder.mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):  # a different crop of a photograph each: no two images (or codes) are the same
        with Image.open(photos[i % len(photos)]) as photo:
            w, h = photo.size
            side = int(min(w, h) * rng.uniform(0.6, 0.95))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            photo.convert("RGB").crop((x, y, x + side, y + side)).save(folder / f"{i:05d}.jpg", quality=90)
    for store in ("responses", "codes"):
        t = time.perf_counter()
        run_encode(EncodeConfig(str(work / "ned"), str(folder), "all", str(work / store), device="cpu",
                                executor="local", store=store))
        print(f"--store {store}: job {time.perf_counter() - t:.1f} s")
    plain, coded = open_output(str(work / "responses")), open_output(str(work / "codes"))
    print(f"\ndemo models, {images} images (PCAs of 16 components)\n")
    print("| model | responses, bytes/image | codes, bytes/image | ratio | rebuild, images/s |")
    print("|---|---|---|---|---|")
    for model in plain.models:
        if coded.manifest["models"][model]["store"] == "responses":
            continue
        a = _part_bytes(work / "responses", model, "part-*.parquet") / images
        b = _part_bytes(work / "codes", model, "part-*.codes.parquet") / images
        t = time.perf_counter()
        coded.responses(model)
        rate = images / (time.perf_counter() - t)
        print(f"| {model} | {a:,.0f} | {b:,.0f} | {a / b:,.0f}x | {rate:,.0f} |")


def real(batch: int) -> None:
    rng = np.random.default_rng(0)
    print(f"\nreal sizes, random heads; rebuild() of {batch} images on CPU (float64 accumulation)\n")
    print("| family | responses, bytes/image | codes, bytes/image | ratio | rebuild, images/s |")
    print("|---|---|---|---|---|")
    for family, (outputs, width, n) in REAL.items():
        step = width // n if n > 1 and width > 250 else 0
        readouts = tuple(Readout(r * step, r * step + 250, rng.standard_normal((outputs // n, 250), np.float32),
                                 rng.standard_normal(outputs // n).astype(np.float32)) for r in range(n))
        head = CodeHead(width, readouts, (outputs,))
        codes = rng.standard_normal((batch, width), np.float32)
        rebuild(codes[:2], head)
        t = time.perf_counter()
        rebuild(codes, head)
        rate = batch / (time.perf_counter() - t)
        print(f"| {family} | {outputs * 4:,} | {width * 4:,} | {outputs / width:,.0f}x | {rate:,.0f} |")


def readout_cost(batch: int, threads: int) -> None:
    import torch
    from torchvision.models import vit_b_32

    from ned_ray.models.vit_heads import readout64

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    codes = torch.as_tensor(rng.standard_normal((batch, 250), np.float32))
    coef = torch.as_tensor(rng.standard_normal((250, 163_842), np.float32))
    bias = torch.as_tensor(rng.standard_normal(163_842).astype(np.float32))
    with torch.device("meta"):
        vit = vit_b_32()
    vit = vit.to_empty(device="cpu").eval()
    x = torch.randn(batch, 3, 224, 224)

    def best(fn, repeats: int = 3) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    with torch.inference_mode():
        f32 = best(lambda: torch.addmm(bias, codes, coef))
        f64 = best(lambda: readout64(codes.double(), coef, bias))
        backbone = best(lambda: vit(x), repeats=1)
    print(f"\nreadout cost, {batch} images, {threads} torch thread(s): one fsaverage hemisphere (250 -> 163,842)\n")
    print("| step | seconds | per image, ms | vs the ViT-B/32 pass |")
    print("|---|---|---|---|")
    for name, seconds in (("ViT-B/32 forward", backbone), ("readout, float32 accumulation", f32),
                          ("readout, float64 accumulation (the job's)", f64)):
        print(f"| {name} | {seconds:.3f} | {seconds / batch * 1000:.2f} | {seconds / backbone:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256, help="images per rebuild() call at real sizes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the readout cost")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        demo(args.images, Path(tmp))
    real(args.batch)
    readout_cost(64, args.threads)


if __name__ == "__main__":
    main()
