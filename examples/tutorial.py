"""NED's tutorials, done with ned-ray: browse models, encode a folder of images, read the metadata,
export a NIfTI, plot, and decode pairs of images from in-silico EEG.

    python examples/tutorial.py                                   # demo models + built-in photos
    python examples/tutorial.py --ned-dir /data/neural_encoding_dataset --images my_photos/

Without --ned-dir it builds the demo models (random weights: the numbers show the workflow, not a
brain). Everything it writes goes to --workdir (default .tutorial/). Each step names the NED call it
replaces.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import ned_ray
from ned_ray import NED
from ned_ray.job.options import EncodeConfig
from ned_ray.job.run import run_encode
from ned_ray.plots import channel_groups, plot_output
from ned_ray.summaries import model_summary


def step(title: str) -> None:
    print(f"\n== {title} ==")


def pairwise_decoding(eeg: np.ndarray, channels: np.ndarray, n_images: int = 50) -> np.ndarray:
    """NED's EEG tutorial: for every time point and every pair of images, train a linear classifier
    on 3 repetitions and test it on the 4th (leave one repetition out); accuracy averaged over pairs
    and folds. ``eeg``: (images, 4 repetitions, channels, times). The classifier here is a
    least-squares linear discriminant in numpy (NED's notebook uses scikit-learn's linear SVM)."""
    data = eeg[:n_images][:, :, channels]  # (N, R, C, T)
    n, reps, _, times = data.shape
    first, second = np.triu_indices(n, k=1)
    accuracy = np.zeros(times)
    for test in range(reps):
        train = [r for r in range(reps) if r != test]
        a_train, b_train = data[first][:, train], data[second][:, train]  # (P, R-1, C, T)
        # discriminant w = mean(a) - mean(b) (the least-squares direction for equal, isotropic classes)
        w = a_train.mean(1) - b_train.mean(1)  # (P, C, T)
        threshold = 0.5 * ((a_train.mean(1) + b_train.mean(1)) * w).sum(1)  # (P, T)
        score_a = (data[first][:, test] * w).sum(1) - threshold  # > 0 means "a"
        score_b = (data[second][:, test] * w).sum(1) - threshold  # < 0 means "b"
        accuracy += ((score_a > 0).mean(0) + (score_b < 0).mean(0)) / 2
    return accuracy / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ned-dir", default=None, help="NED's neural_encoding_dataset folder (default: demo models)")
    parser.add_argument("--images", default=None, help="a folder of images (default: the built-in photographs)")
    parser.add_argument("--workdir", default=".tutorial")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.ned_dir is None:
        from ned_ray.demo import make_demo_models

        args.ned_dir = str(work / "ned_dir")
        if not (work / "ned_dir" / "encoding_models").is_dir():
            make_demo_models(args.ned_dir)
        print(f"demo models (random, untrained) in {args.ned_dir}")
    if args.images is None:
        from ned_ray.demo import write_demo_images

        args.images = str(work / "images")
        if not (work / "images").is_dir():
            write_demo_images(work / "images")

    step("1. Browse the models (NED: which_modalities / which_subjects / which_rois)")
    ned = NED(args.ned_dir)
    print("modalities:", ned.which_modalities())
    print("fMRI subjects:", ned.which_subjects("fmri", "nsd"), " ROIs:", ned.which_rois("nsd"))
    print("EEG subjects:", ned.which_subjects("eeg", "things_eeg_2"))
    for row in model_summary(ned.directory)[:4]:
        print(f"  {row['id']:38s} outputs {row['response_shape']}  mean noise-normalised accuracy "
              f"{row['accuracy']:.1f}%")

    step("2. Encode a folder of images with every model at once (NED: a loop of get_encoding_model + encode)")
    out = work / "out"
    summary = run_encode(EncodeConfig(ned_dir=args.ned_dir, images=args.images, models="all", output=str(out),
                                      device=args.device, overwrite=True), progress=5.0)
    print(f"{summary['images']['ok']} images encoded, {summary['images']['error']} errors, "
          f"{summary['run']['images_per_second']:.1f} images/s")
    result = ned_ray.open_output(str(out))
    fmri_id = next(m for m in result.models if m.startswith("fmri/"))
    eeg_ids = [m for m in result.models if m.startswith("eeg/")]
    index, fmri = result.responses(fmri_id)
    print(f"{fmri_id}: {fmri.shape} (images x voxels), float32")

    step("3. Metadata (NED: get_metadata): ncsnr, noise ceiling, channels and times")
    meta = result.metadata(fmri_id)["npz"]
    ncsnr = meta["fmri/ncsnr"]
    print(f"ncsnr: {len(ncsnr)} voxels, median {np.median(ncsnr):.3f}, {np.mean(ncsnr > 0.2):.0%} above 0.2")
    volume_path = result.to_nifti(fmri_id, str(work / "responses.nii.gz"))
    print(f"NIfTI of every image's response in the subject's volume: {volume_path} "
          f"(mask {meta['fmri/roi_mask_volume'].shape}, NED's affine)")
    if eeg_ids:
        eeg = result.to_xarray(eeg_ids[0])
        groups = channel_groups(eeg.coords["channel"].values)
        print(f"{eeg_ids[0]}: dims {eeg.dims}, {eeg.sizes['channel']} channels "
              f"({', '.join(f'{g} {len(i)}' for g, i in groups.items())}), times {float(eeg.time[0]):.2f} to "
              f"{float(eeg.time[-1]):.2f} s")

    step("4. Plots (ned-ray plot)")
    for path in plot_output(result, work / "plots"):
        print(f"  {path}")

    if eeg_ids:
        step("5. EEG pairwise decoding from occipital channels (NED's EEG tutorial)")
        _, values = result.responses(eeg_ids[0])
        occipital = channel_groups(result.coords(eeg_ids[0])["channel"])["occipital"]
        accuracy = pairwise_decoding(values, occipital)
        times = result.coords(eeg_ids[0])["time"]
        best = int(np.argmax(accuracy))
        print(f"{len(values)} images, {len(occipital)} occipital channels: peak accuracy {accuracy[best]:.0%} at "
              f"{times[best]:.2f} s (chance 50%)")
    print(f"\ndone: everything is in {work}/")


if __name__ == "__main__":
    main()
