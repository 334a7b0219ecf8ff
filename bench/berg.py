"""BERG's models: one shared ViT pass vs BERG's per-model loop, and what 10 real EEG subjects need.

Run by hand (needs scikit-learn for the baseline, and the fixtures' weights: see berg-fixtures/README):

    python bench/berg.py --berg-dir /tmp/berg_dir --torch-home /tmp/th [--images 16] [--repeat 3]

1. **BERG's per-model loop** (the baseline): for each model, what BERG's ``encode`` does (berg-spec
   §2-§3, §10): its own ViT pass (torchvision ``create_feature_extractor`` on the 12 ``add_1``
   nodes), then scikit-learn's ``StandardScaler.transform``, ``PCA.transform`` (one per EEG
   repetition) and ``LinearRegression.predict`` on objects whose attributes are set from the file,
   in batches of 100, float32 features. BERG's own package is not installable here (not on PyPI,
   no network); this is its code path statement for statement as the spec gives it, with the same
   libraries.
2. **ned-ray, models one at a time**: ``ModelGroup([id]).encode`` per model (a ViT pass each).
3. **ned-ray, one group**: ``ModelGroup(all ids).encode``: one ViT pass, one stacked projection.

Both ned-ray figures and the baseline run in this process, side by side, on the same images, after
one warm-up call each; load times are reported separately. Parity of (3) with (1) is printed too.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

MODELS = {  # ned-ray id -> BERG (model id, kwargs): every model of the fixtures' BERG directory
    "eeg/things_eeg_2/vit_b_32/sub-01": ("eeg", {}),
    "fmri/nsd_fsaverage/vit_b_32/sub-01/lh": ("fsaverage", {}),
    "fmri/nsd_fsaverage/vit_b_32/sub-01/rh": ("fsaverage", {}),
    "fmri/things_fmri_1/vit_b_32/sub-01": ("things_fmri", {}),
    "meg/things_meg_1/vit_b_32/sub-01/full": ("meg", {}),
    "meg/things_meg_1/vit_b_32/sub-01/split2": ("meg", {}),
    "utah_array/tvsd/vit_b_32/sub-F": ("tvsd", {}),
}


class BergLoopModel:
    """One model as BERG runs it: its own ViT + feature extractor, sklearn scaler, PCA(s), regression(s)."""

    def __init__(self, ned, mid) -> None:
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LinearRegression
        from sklearn.preprocessing import StandardScaler
        from torchvision.models import vit_b_32
        from torchvision.models.feature_extraction import create_feature_extractor

        from ned_ray.models.vit_eeg import find_vit_weights
        from ned_ray.safeload import load_torch_checkpoint

        entry = ned.entry(mid)
        weights = ned.load_npy(entry.weights[0])
        vit = vit_b_32()
        with open(find_vit_weights(None, ned), "rb") as fh:
            vit.load_state_dict(load_torch_checkpoint(fh))
        self.extractor = create_feature_extractor(
            vit.eval(), [f"encoder.layers.encoder_layer_{i}.add_1" for i in range(12)])
        scaler = StandardScaler()
        for key, value in weights["scaler_param"].items():
            setattr(scaler, key, value)
        self.scaler = scaler

        def pca_of(params) -> PCA:
            pca = PCA(n_components=params["components_"].shape[0] if isinstance(params, dict) else 250)
            for key in ("components_", "explained_variance_", "explained_variance_ratio_", "singular_values_",
                        "mean_", "n_components_", "n_samples_", "noise_variance_", "n_features_in_"):
                setattr(pca, key, params[key] if isinstance(params, dict) else getattr(params, key))
            return pca

        def regression_of(params) -> LinearRegression:
            reg = LinearRegression()
            for key in ("coef_", "intercept_", "n_features_in_"):
                setattr(reg, key, params[key])
            return reg

        family = mid.family.key
        if family == "eeg":
            reps = sorted(weights["reg_param"], key=lambda k: int(k.split("-")[-1]))
            self.heads = [(pca_of(_attrs(weights["pca_param"][r])), regression_of(weights["reg_param"][r])) for r in reps]
        elif family == "fsaverage":
            self.heads = [(pca_of(weights["pca_param"]), regression_of(weights[f"{mid.variant}_reg_param"]))]
        else:
            self.heads = [(pca_of(weights["pca_param"]), regression_of(weights["reg_param"]))]

    def encode(self, images: np.ndarray) -> np.ndarray:
        from torchvision.models import ViT_B_32_Weights

        transform = ViT_B_32_Weights.IMAGENET1K_V1.transforms()
        out = []
        for start in range(0, len(images), 100):
            x = transform(torch.from_numpy(images[start:start + 100]))
            with torch.no_grad():
                feats = self.extractor(x)
            features = torch.cat([f.flatten(1) for f in feats.values()], dim=1).numpy()
            z = self.scaler.transform(features)
            out.append(np.stack([reg.predict(pca.transform(z).astype(np.float32)).astype(np.float32)
                                 for pca, reg in self.heads], axis=1))
        return np.concatenate(out)


def _attrs(obj) -> dict:
    """A pickled PCA read by ned-ray's restricted unpickler (an attribute holder) as a dict."""
    return dict(obj.items()) if hasattr(obj, "items") else vars(obj)


def timed(fn, repeat: int) -> tuple[float, object]:
    fn()  # warm-up
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--berg-dir", required=True)
    parser.add_argument("--torch-home", required=True)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-eeg", action="store_true", help="leave out the 1.9 GB EEG model")
    args = parser.parse_args()
    os.environ["TORCH_HOME"] = args.torch_home
    from ned_ray.modeldir import NedDir
    from ned_ray.models.group import ModelGroup

    ned = NedDir(args.berg_dir)
    ids = [m for m in MODELS if not (args.no_eeg and m.startswith("eeg"))]
    fixtures = Path(__file__).resolve().parents[2] / "shared" / "berg-fixtures"
    base = np.load(fixtures / "images.npy")
    images = np.concatenate([base] * -(-args.images // len(base)))[:args.images]
    print(f"{len(ids)} BERG models x {len(images)} images ({images.shape[2]} px), torch threads "
          f"{torch.get_num_threads()}, CPU: {os.cpu_count()} cores")

    from ned_ray.ids import ModelId

    start = time.perf_counter()
    group = ModelGroup(ned, ids, "cpu")
    load_group = time.perf_counter() - start
    t_group, ours = timed(partial(group.encode, images), args.repeat)
    print(f"ned-ray one group   : load {load_group:6.1f} s, encode {t_group:6.2f} s ({len(images) / t_group:.1f} images/s)")
    del group

    t_alone, load_alone = 0.0, 0.0
    for mid in ids:
        start = time.perf_counter()
        single = ModelGroup(ned, [mid], "cpu")
        load_alone += time.perf_counter() - start
        t, _ = timed(partial(single.encode, images), args.repeat)
        t_alone += t
        del single
    print(f"ned-ray one by one  : load {load_alone:6.1f} s, encode {t_alone:6.2f} s")

    t_berg, load_berg, worst = 0.0, 0.0, 0.0
    for mid in ids:
        start = time.perf_counter()
        model = BergLoopModel(ned, ModelId.parse(mid))
        load_berg += time.perf_counter() - start
        t, theirs = timed(partial(model.encode, images), args.repeat)
        t_berg += t
        mine = ours[ModelId.parse(mid)].reshape(theirs.shape)
        worst = max(worst, float(np.abs(mine - theirs).max() / theirs.std()))
        del model
    print(f"BERG per-model loop : load {load_berg:6.1f} s, encode {t_berg:6.2f} s")
    print(f"speed-up of one group: {t_berg / t_group:.1f}x over BERG's loop, {t_alone / t_group:.1f}x over ned-ray one by one "
          f"(encode only); with loading: {(t_berg + load_berg) / (t_group + load_group):.1f}x")
    print(f"max |ned-ray - BERG loop| / std: {worst:.1e}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB")


if __name__ == "__main__":
    sys.exit(main())
