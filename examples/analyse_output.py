"""An encode job's output read back as a Ray Dataset and reduced on the cluster: each fMRI model's
mean response per image (an ROI mean, as RNC's univariate analyses start), the images that drive each
ROI most, and each EEG model's mean response over all images.

    python examples/analyse_output.py                        # encodes the built-in photographs first
    python examples/analyse_output.py --output s3://lab/nsd-responses --top 25

Nothing but the small reductions reaches this process: the responses are read and reduced by Ray
tasks, one part of the output each (``ned_ray.data.read_output``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np


def roi_means(batch: dict[str, np.ndarray], fmri: list[str]) -> dict[str, np.ndarray]:
    """Each fMRI model's mean over its voxels, per image (one float per image and model)."""
    return {"image_id": batch["image_id"], **{m: batch[m].mean(axis=1) for m in fmri}}


def partial_sums(batch: dict[str, np.ndarray], eeg: list[str]) -> dict[str, np.ndarray]:
    """One row per block: each EEG model's sum of responses over the block's images, and their count."""
    return {"images": np.asarray([len(batch["image_index"])]),
            **{m: batch[m].astype(np.float64).sum(axis=0, keepdims=True) for m in eeg}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=None, help="a finished ned-ray output (default: encode the demo first)")
    parser.add_argument("--workdir", default=".analysis_example")
    parser.add_argument("--top", type=int, default=3, help="images listed per ROI")
    parser.add_argument("--num-gpus", type=int, default=None, help="logical GPUs of a local Ray (unused by reading)")
    args = parser.parse_args(argv)

    import ray

    import ned_ray.data
    from ned_ray.output import open_output

    output_uri = args.output
    if output_uri is None:
        from ned_ray.demo import make_demo_models, write_demo_images
        from ned_ray.job.options import EncodeConfig
        from ned_ray.job.run import run_encode

        work = Path(args.workdir)
        make_demo_models(str(work / "ned"))
        write_demo_images(work / "photos")
        output_uri = str(work / "out")
        run_encode(EncodeConfig(str(work / "ned"), str(work / "photos"), "all", output_uri, device="cpu",
                                executor="local", overwrite=True, shard_size=4))
    if not ray.is_initialized():
        ray.init(num_gpus=args.num_gpus)
    models = open_output(output_uri).models
    fmri = [m for m in models if m.startswith("fmri/")]
    eeg = [m for m in models if m.startswith("eeg/")]
    found: dict[str, Any] = {"top": {}, "eeg_mean": {}}
    if fmri:
        means = ned_ray.data.read_output(output_uri, models=fmri).map_batches(roi_means, fn_kwargs={"fmri": fmri})
        means = means.materialize()  # one float per image and model: small
        for m in fmri:
            top = means.sort(m, descending=True).limit(args.top).take_all()
            found["top"][m] = [(row["image_id"], float(row[m])) for row in top]
            print(f"{m}: most driving images " + ", ".join(f"{i} ({v:.3f})" for i, v in found["top"][m]))
    if eeg:
        sums = ned_ray.data.read_output(output_uri, models=eeg).map_batches(partial_sums, fn_kwargs={"eeg": eeg})
        rows = sums.take_all()  # one small row per part
        n = sum(int(r["images"]) for r in rows)
        for m in eeg:
            mean = np.sum([r[m] for r in rows], axis=0) / n
            found["eeg_mean"][m] = mean
            print(f"{m}: mean response over {n} images, shape {mean.shape}, peak {mean.max():.3f}")
    return found


if __name__ == "__main__":
    main()
