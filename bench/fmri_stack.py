"""Is it faster to run K fwrf backbones of one actor stacked (torch.func + vmap) than one by one?

NED's fMRI models each carry their own backbone (ned-spec §2), so several ROIs on one actor cannot
share one pass; they can only be batched as one vmapped (grouped) computation. This measures that
against the plain loop, on the same input, and checks both give the same features.

    python bench/fmri_stack.py --backbones 8 --batch 64 --repeats 3 [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.func import functional_call, stack_module_state

from ned_ray.models.fwrf import FwrfEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    encoders = [FwrfEncoder().eval().to(device) for _ in range(args.backbones)]
    for module in encoders:
        module.requires_grad_(False)
    params, buffers = stack_module_state(encoders)
    template = copy.deepcopy(encoders[0]).to("meta")
    stacked = torch.vmap(lambda p, b, x: functional_call(template, (p, b), (x,)), in_dims=(0, 0, None))
    x = torch.rand(args.batch, 3, 227, 227, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    runs = {"loop": lambda: [e(x) for e in encoders], "vmap": lambda: stacked(params, buffers, x)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
        loop, vmapped = runs["loop"](), runs["vmap"]()
        worst = max(float((loop[k][i] - vmapped[i][k]).abs().max()) for k in range(args.backbones) for i in range(3))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.backbones} fwrf backbones, batch {args.batch}, {device}, torch threads {torch.get_num_threads()}")
    for name, values in times.items():
        print(f"  {name:5s} median {med[name]:.3f}s  runs {[round(v, 3) for v in values]}")
    print(f"  vmap / loop time: {med['vmap'] / med['loop']:.2f}   max |loop - vmap| {worst:.1e}")


if __name__ == "__main__":
    main()
