"""The fwrf per-voxel head: the straightforward formulation vs ned-ray's, side by side (run by hand).

* straightforward: phi = log1p(|z|) * tanh(z) out of place, then einsum('bcv,vc->bv') (what
  ned-ray did before; most of the time goes to fresh (B x 768 x v) buffers and einsum's copies);
* ned-ray: phi in place as NED writes it (log of 1 + |z|), weighted sum without copies.

    python bench/fwrf_head.py --voxels 1350 --batch 100 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ned_ray.models.fwrf import HEAD_ELEMENTS, FwrfEncoder, FwrfHead


def straightforward(head: FwrfHead, fmaps: tuple[torch.Tensor, ...]) -> torch.Tensor:
    def phi(z: torch.Tensor) -> torch.Tensor:
        return torch.log1p(z.abs()) * torch.tanh(z)

    batch = fmaps[0].shape[0]
    feats = [phi(f).flatten(2) for f in fmaps]
    fields = [torch.softmax(rf.flatten(1), dim=1) for rf in (head.rf0, head.rf1, head.rf2)]
    chunk = max(1, HEAD_ELEMENTS // max(1, batch * head.w.shape[1]))
    out = []
    for start in range(0, head.n_voxels, chunk):
        sl = slice(start, start + chunk)
        pooled = torch.cat([f @ g[sl].T for f, g in zip(feats, fields)], dim=1)
        out.append(torch.einsum("bcv,vc->bv", phi(pooled), head.w[sl]) + head.b[sl])
    return torch.cat(out, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, default=1350)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    head = FwrfHead(args.voxels).eval()
    with torch.no_grad():
        for rf in (head.rf0, head.rf1, head.rf2):
            rf.normal_(0, 2)
        head.w.normal_(0, 768 ** -0.5)
    runs = {"straightforward": lambda f: straightforward(head, f), "ned-ray": head}
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        fmaps = FwrfEncoder().eval()(torch.rand(args.batch, 3, 227, 227))
        results = {k: fn(fmaps) for k, fn in runs.items()}  # warm-up, and the outputs to compare
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn(fmaps)
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    reference = results["straightforward"]
    print(f"fwrf head, {args.voxels} voxels, batch {args.batch}, torch threads {torch.get_num_threads()}")
    for name, values in times.items():
        print(f"  {name:16s} median {med[name]:.3f}s  runs {[round(v, 3) for v in values]}")
    print(f"  speed-up {med['straightforward'] / med['ned-ray']:.2f}x; max |difference| / std "
          f"{float((results['ned-ray'] - reference).abs().max() / reference.std()):.1e}")


if __name__ == "__main__":
    main()
