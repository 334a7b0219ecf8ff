"""Demo models and images: a small NED-format directory with RANDOM (untrained) weights.

``make_demo_models(DIR)`` writes fMRI ``fwrf`` checkpoints (full architecture, few voxels; one split
ROI) and EEG files (shared scaler and PCA, per-subject regressions, metadata) exactly in NED's
layout, plus a small ViT in ned-ray's backbone slot, so the demo and the tests need no download;
with ``berg=True`` also one small model of each BERG family in BERG's layout, and BERG's
untrained-AlexNet fsaverage model (the real untrained network: it has no weight file to download).
**These are not trained models**: their responses mean nothing about brains. Every metadata dict
says so under ``ned_ray_demo``, and the directory has a README.txt saying the same.

``demo_images()`` returns real photographs bundled with scikit-image (no download).
"""

from __future__ import annotations

import io
import math
import posixpath
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import fsspec
import numpy as np
import torch
from torchvision.models.vision_transformer import VisionTransformer

from .errors import MissingDependencyError, storage_error
from .ids import CHANNELS, SPLIT_ROIS
from .modeldir import VIT_IN_NED_DIR, NedDir
from .models.fwrf import FwrfEncoder, FwrfHead
from .models.vit_eeg import vit_features
from .preprocess import center_square, fwrf_input, fwrf_normalise, vit_input, vit_normalise

__all__ = ["DEMO_NOTE", "make_demo_models", "demo_images"]

DEMO_NOTE = (
    "NOT TRAINED: random weights written by `ned-ray make-demo-models` for demos and tests. "
    "Responses from these models mean nothing about brains; use NED's released models for science."
)
DEMO_VOXELS = {"V1": 48, "FFA-1": 24, "lateral": 40}
EEG_TIMES = np.round(np.arange(140) * 0.005 - 0.1, 3)


def _save_npy(fs, path: str, obj: object) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array(obj, dtype=object), allow_pickle=True)
    with fs.open(path, "wb") as fh:
        fh.write(buffer.getvalue())


def _save_torch(fs, path: str, obj: object) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with fs.open(path, "wb") as fh:
        fh.write(buffer.getvalue())


def _fwrf_checkpoint(rng: np.random.Generator, subject: int, n_voxels: int, calibration: torch.Tensor) -> dict:
    """A random fwrf checkpoint whose voxels respond with ~unit variance across ``calibration`` images."""
    torch.manual_seed(int(rng.integers(2**31)))
    encoder = FwrfEncoder()
    for module in encoder.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.1, c)))
            module.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c)))
    stim_mean = rng.uniform(0.35, 0.5, (1, 3, 1, 1)).astype(np.float32)
    head = FwrfHead(n_voxels)
    with torch.no_grad():
        for rf in (head.rf0, head.rf1, head.rf2):
            rf.copy_(torch.from_numpy(rng.normal(0, 2.0, tuple(rf.shape))))
        head.w.copy_(torch.from_numpy(rng.normal(0, 1 / math.sqrt(768), (n_voxels, 768))))
        head.b.zero_()
        encoder.mu.copy_(torch.from_numpy(stim_mean))
        raw = head(encoder.eval()(calibration))  # (N, V): z-score each voxel over the demo images
        sd = raw.std(0).clamp_min(1e-12)
        head.w.div_(sd[:, None])
        head.b.copy_(-raw.mean(0) / sd + torch.from_numpy(rng.normal(0, 0.1, n_voxels)))
    enc_state = OrderedDict((k, v.clone()) for k, v in encoder.state_dict().items())
    enc_state["mu"] = torch.from_numpy(stim_mean)
    return {"stim_mean": stim_mean,
            "best_params": {"enc": enc_state, "fwrfs": {subject: OrderedDict(head.state_dict())}}}


def _fwrf_metadata(rng: np.random.Generator, n_voxels: int) -> dict:
    side = max(16, math.ceil((2 * n_voxels) ** (1 / 3)))
    shape = (14, 16, 12) if n_voxels <= 1000 else (side, side, side)
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    mask[rng.choice(mask.size, n_voxels, replace=False)] = True
    ncsnr = rng.gamma(2.0, 0.25, n_voxels)
    noise_ceiling = ncsnr**2 / (ncsnr**2 + 1 / 3)
    r2 = rng.uniform(0, 1, n_voxels) * noise_ceiling
    affine = np.diag([1.8, 1.8, 1.8, 1.0])
    affine[:3, 3] = [-12.6, -14.4, -10.8]
    return {
        "fmri": {"ncsnr": ncsnr, "roi_mask_volume": mask.reshape(shape), "fmri_affine": affine},
        "encoding_models": {
            "encoding_accuracy": {"r2": r2, "noise_ceiling": noise_ceiling,
                                  "noise_normalized_encoding": np.minimum(r2 / np.maximum(noise_ceiling, 1e-14), 1)},
            "train_val_test_nsd_image_splits": {"train_img_num": np.arange(1000, dtype=np.int64),
                                                "val_img_num": np.arange(1000, 1485, dtype=np.int64),
                                                "test_img_num": np.arange(1485, 2000, dtype=np.int64)}},
        "ned_ray_demo": DEMO_NOTE,
    }


def _eeg_metadata(rng: np.random.Generator) -> dict:
    acc = rng.uniform(0, 0.6, (4, 63, 140))
    files = [f"train_{i:05d}.jpg" for i in range(20)], [f"test_{i:05d}.jpg" for i in range(10)]
    return {
        "eeg": {"ch_names": list(CHANNELS), "times": EEG_TIMES.copy()},
        "encoding_models": {
            "encoding_accuracy": {"correlation_all_repetitions": acc.mean(0), "correlation_single_repetitions": acc,
                                  "noise_ceiling_upper": np.full((63, 140), 0.8), "noise_ceiling_lower": np.full((63, 140), 0.6)},
            "train_test_things_image_splits": {
                "train_img_files": files[0], "test_img_files": files[1],
                "train_img_concepts": [f"concept_{i}" for i in range(20)], "test_img_concepts": [f"concept_{i}" for i in range(10)],
                "train_img_concepts_THINGS": [f"{i}_concept" for i in range(20)],
                "test_img_concepts_THINGS": [f"{i}_concept" for i in range(10)]}},
        "ned_ray_demo": DEMO_NOTE,
    }


def _demo_vit(seed: int) -> VisionTransformer:
    torch.manual_seed(seed)
    vit = VisionTransformer(image_size=224, patch_size=32, num_layers=2, num_heads=2, hidden_dim=128, mlp_dim=256)
    with torch.no_grad():  # torchvision zero-initialises these; give the demo some structure
        vit.class_token.normal_(0, 0.02)
        vit.heads.head.weight.normal_(0, 0.02)
    return vit.eval()


def _berg_demo(fs, root: str, rng: np.random.Generator, scaler: dict, pca: dict, k: int) -> None:
    """One small model of each BERG family in BERG's layout (berg-spec §1, §4-§8), on the demo ViT's
    features: BERG-format EEG (subject 4, a PCA per repetition), fsaverage (subject 1, 163,842
    vertices per hemisphere), THINGS-fMRI (subject 1, 800 voxels), THINGS-MEG (subject 1, split
    'full', 271 sensors x 281 times), TVSD (monkey F, 1,024 electrodes x 300 times). Random weights."""
    variance = np.asarray(pca["explained_variance_"])
    scale = 1 / math.sqrt(k) / np.sqrt(np.maximum(variance, variance[0] * 1e-2))

    def regression(n: int) -> dict:
        return {"coef_": (rng.normal(0, 1, (n, k)) * scale).astype(np.float32),
                "intercept_": rng.normal(0, 0.1, n).astype(np.float32), "n_features_in_": k}

    def save(family: str, weights_name: str, weights: dict, meta_name: str, meta: dict) -> None:
        folder = posixpath.join(root, "encoding_models", family)
        for sub, name, obj in (("encoding_models_weights", weights_name, weights), ("metadata", meta_name, meta)):
            fs.makedirs(posixpath.join(folder, sub), exist_ok=True)
            _save_npy(fs, posixpath.join(folder, sub, name), {**obj, "ned_ray_demo": DEMO_NOTE} if sub == "metadata" else obj)

    def rois(names: Sequence[str], n: int) -> dict:
        return {r: np.sort(rng.choice(n, int(rng.integers(5, n // 10)), replace=False)).astype(np.int64) for r in names}

    acc = rng.uniform(0, 0.5, (4, 63, 140))
    save("modality-eeg/train_dataset-things_eeg_2/model-vit_b_32", "weights_subject-04.npy",
         {"scaler_param": scaler, "pca_param": {f"rep-{r}": pca for r in range(1, 5)},
          "reg_param": {f"rep-{r}": regression(63 * 140) for r in range(1, 5)}},
         "metadata_subject-04.npy", {"eeg": {"ch_names": list(CHANNELS), "times": EEG_TIMES.copy()},
                                     "encoding_models": {"correlation_single_repetitions": acc,
                                                         "correlation_averaged_repetitions": acc.mean(0)}})
    from .families.fsaverage import FSAVERAGE_ROIS
    from .families.meg import CTF_275

    n = FSAVERAGE_VERTICES  # the whole hemisphere, so that surface figures paint the whole cortex
    save("modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32", "weights_subject-01.npy",
         {"scaler_param": scaler, "pca_param": pca, "lh_reg_param": regression(n), "rh_reg_param": regression(n)},
         "metadata_subject-01.npy", {"fmri": {"lh_ncsnr": rng.gamma(2, 0.25, n), "rh_ncsnr": rng.gamma(2, 0.25, n),
                                              "lh_fsaverage_rois": rois(FSAVERAGE_ROIS, n),
                                              "rh_fsaverage_rois": rois(FSAVERAGE_ROIS, n)},
                                     "encoding_models": {"lh_correlation": rng.uniform(0, 0.6, n),
                                                         "rh_correlation": rng.uniform(0, 0.6, n)}})
    n = 800
    things_rois = ("V1 V2 V3 hV4 VO1 VO2 LO1_prf LO2_prf TO1 TO2 V3b V3a lFFA rFFA lOFA rOFA lEBA rEBA lPPA rPPA "
                   "lRSC rRSC lTOS rTOS lLOC rLOC IT lSTS rSTS").split()
    save("modality-fmri/train_dataset-things_fmri_1/model-vit_b_32", "weights_sub-01.npy",
         {"scaler_param": scaler, "pca_param": pca, "reg_param": regression(n)},
         "metadata_sub-01.npy", {"fmri": {"voxel_coords": rng.integers(0, 60, (n, 3)), "n_voxels": n, "subject_id": 1},
                                 "roi": rois(things_rois, n), "encoding_model": {"correlation_results": rng.uniform(0, 0.6, n)}})
    sensors = CTF_275[:271]  # real CTF names, so that sensor topographies can place them
    prefixes = np.asarray([name[:3] for name in sensors])
    regions = {"C": "Central", "F": "Frontal", "O": "Occipital", "P": "Parietal", "T": "Temporal"}
    save("modality-meg/train_dataset-things_meg_1/model-vit_b_32", "weights_P1_full.npy",
         {"scaler_param": scaler, "pca_param": pca, "reg_param": regression(271 * 281)},
         "metadata_P1.npy", {"meg": {"times": np.round(np.arange(281) * 0.005 - 0.1, 3), "subject_id": 1},
                             "sensors": {"sensor_names": np.asarray([f"{name}-4408" for name in sensors]),
                                         "sensor_prefixes": prefixes,
                                         "sensor_hemispheres": np.asarray([p[1] for p in prefixes]),
                                         "sensor_regions": np.asarray([regions[p[2]] for p in prefixes]), "n_sensors": 271},
                             "encoding_model": {"correlation_results": rng.uniform(0, 0.6, (281, 271))}})
    assignments = np.repeat([0, 1, 2], [512, 192, 320])
    save("modality-utah_array/train_dataset-tvsd/model-vit_b_32", "weights_monkeyF.npy",
         {"scaler_param": scaler, "pca_param": pca, "reg_param": regression(1024 * 300)},
         "metadata_monkeyF.npy", {"utah-array": {"times": np.arange(-100, 200), "electrode_order": np.arange(1024),
                                                 "monkey_id": "F", "n_electrodes": 1024},
                                  "roi": {"roi_assignments": assignments, "roi_labels": ["V1", "V4", "IT"]},
                                  "encoding_model": {"oracle": rng.uniform(0, 0.8, 1024),
                                                     "ncsnr": rng.gamma(2, 0.25, 1024)}})


FSAVERAGE_VERTICES = 163_842  # per hemisphere


def _fitted_projection(feats: np.ndarray, n_components: int) -> tuple[dict, dict, int]:
    """(scaler, PCA, k) fitted to demo features in BERG's dict layout, so that codes are O(1)."""
    feats = feats.astype(np.float64)
    mean, std = feats.mean(0), feats.std(0)
    floor = 0.25 * np.median(std)  # no feature may blow up on new images
    if floor <= 0:  # most features constant (dead ReLUs): the median of the others
        floor = 0.25 * np.median(std[std > 0]) if (std > 0).any() else 1.0
    std = np.maximum(std, floor)
    z = (feats - mean) / std
    _, singular, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
    k = min(n_components, vt.shape[0])
    scaler = {"scale_": std, "mean_": mean, "var_": std**2, "n_features_in_": feats.shape[1], "n_samples_seen_": len(feats)}
    variance = singular[:k] ** 2 / max(1, len(feats) - 1)
    pca = {"components_": vt[:k].astype(np.float32), "explained_variance_": variance,
           "explained_variance_ratio_": variance / (singular**2).sum() * max(1, len(feats) - 1),
           "singular_values_": singular[:k], "mean_": z.mean(0), "n_components_": k, "n_samples_": len(feats),
           "noise_variance_": 0.0, "n_features_in_": feats.shape[1]}
    return scaler, pca, k


def _demo_views(images: np.ndarray) -> list[np.ndarray]:
    """Varied views of the demo photographs, to fit demo projections on."""
    return [images, images[..., ::-1], images[:, :, 16:-16, 16:-16], images[:, :, :-48, 48:]]


def _alexnet_demo(fs, root: str, rng: np.random.Generator, n_components: int) -> None:
    """BERG's untrained-AlexNet fsaverage model (subject 1): the real
    untrained network (it needs no download), a scaler and PCA fitted to its features of the demo
    photographs, random regressions (the whole hemisphere: 163,842 vertices)."""
    from .families.alexnet import FSAVERAGE_ROIS
    from .models.alexnet import alexnet_features, untrained_alexnet

    network = untrained_alexnet()
    with torch.inference_mode():
        feats = torch.cat([alexnet_features(network, vit_normalise(vit_input(np.ascontiguousarray(v))))
                           for v in _demo_views(demo_images())]).numpy()
    scaler, pca, k = _fitted_projection(feats, n_components)
    variance = np.asarray(pca["explained_variance_"])
    scale = 1 / math.sqrt(k) / np.sqrt(np.maximum(variance, variance[0] * 1e-2))
    n = FSAVERAGE_VERTICES
    weights = {"scaler_param": scaler, "pca_param": pca}
    for h in ("lh", "rh"):
        weights[f"{h}_reg_param"] = {"coef_": (rng.normal(0, 1, (n, k)) * scale).astype(np.float32),
                                     "intercept_": rng.normal(0, 0.1, n).astype(np.float32), "n_features_in_": k}
    rois = {h: {r: np.sort(rng.choice(n, int(rng.integers(5, n // 10)), replace=False)).astype(np.int64)
                for r in FSAVERAGE_ROIS} for h in ("lh", "rh")}
    meta = {"fmri": {f"{h}_{key}": value for h in ("lh", "rh")
                     for key, value in (("ncsnr", rng.gamma(2, 0.25, n)), ("fsaverage_rois", rois[h]))},
            "encoding_models": {f"{h}_correlation_nsdcore": rng.uniform(0, 0.6, n) for h in ("lh", "rh")},
            "ned_ray_demo": DEMO_NOTE}
    folder = posixpath.join(root, "encoding_models", "modality-fmri/train_dataset-nsd_fsaverage/model-alexnet_untrained")
    for sub, name, obj in (("encoding_models_weights", "weights_subject-01.npy", weights),
                           ("metadata", "metadata_subject-01.npy", meta)):
        fs.makedirs(posixpath.join(folder, sub), exist_ok=True)
        _save_npy(fs, posixpath.join(folder, sub, name), obj)


def make_demo_models(out_dir: str, fmri_subjects: Sequence[int] = (1, 2),
                     rois: Sequence[str] = ("V1", "FFA-1", "lateral"), eeg_subjects: Sequence[int] = (1, 2, 3),
                     n_components: int = 16, seed: int = 0, berg: bool = False) -> NedDir:
    """Write a small NED-format directory of random (untrained) models; returns it as a :class:`NedDir`.

    ``berg``: also one small model of each BERG family, in BERG's layout (:func:`_berg_demo`)."""
    rng = np.random.default_rng(seed)
    fs, root = fsspec.core.url_to_fs(str(out_dir))
    try:  # the first writes: a folder that cannot be written fails here, in one line
        fs.makedirs(root, exist_ok=True)
        with fs.open(posixpath.join(root, "README.txt"), "w") as fh:
            fh.write(DEMO_NOTE + "\nLayout: NED's neural_encoding_dataset (encoding_models/...).\n")
    except OSError as exc:
        raise storage_error("write demo models to", str(out_dir), exc) from exc
    ned_root = NedDir(str(out_dir))

    calibration = fwrf_normalise(fwrf_input(demo_images())) if fmri_subjects else None
    for subject in fmri_subjects:
        for roi in rois:
            n_voxels = DEMO_VOXELS.get(roi, 32)
            halves = [math.ceil(n_voxels / 2), n_voxels - math.ceil(n_voxels / 2)] if roi in SPLIT_ROIS else [n_voxels]
            for rel, n in zip(ned_root.fwrf_weights(subject, roi), halves):
                fs.makedirs(posixpath.dirname(ned_root.path(rel)), exist_ok=True)
                _save_torch(fs, ned_root.path(rel), _fwrf_checkpoint(rng, subject, n, calibration))
            rel = ned_root.fwrf_metadata(subject, roi)
            fs.makedirs(posixpath.dirname(ned_root.path(rel)), exist_ok=True)
            _save_npy(fs, ned_root.path(rel), _fwrf_metadata(rng, n_voxels))

    if eeg_subjects or berg:
        vit = _demo_vit(seed)
        fs.makedirs(posixpath.dirname(ned_root.path(VIT_IN_NED_DIR)), exist_ok=True)
        _save_torch(fs, ned_root.path(VIT_IN_NED_DIR), vit.state_dict())
        # Scaler and PCA fitted to the demo ViT's features of the demo photographs, so codes are O(1).
        with torch.inference_mode():
            feats = torch.cat([vit_features(vit, vit_normalise(vit_input(np.ascontiguousarray(c))))
                               for c in _demo_views(demo_images())])
        scaler, pca, k = _fitted_projection(feats.numpy(), n_components)
        variance = np.asarray(pca["explained_variance_"])
        fs.makedirs(posixpath.dirname(ned_root.path(ned_root.EEG_SCALER)), exist_ok=True)
        if berg:
            _berg_demo(fs, root, rng, scaler, pca, k)
            _alexnet_demo(fs, root, rng, n_components)
        if eeg_subjects:
            _save_npy(fs, ned_root.path(ned_root.EEG_SCALER), scaler)
            _save_npy(fs, ned_root.path(ned_root.EEG_PCA), pca)
        metadata_dir = posixpath.dirname(ned_root.path(ned_root.eeg_metadata(1)))
        fs.makedirs(metadata_dir, exist_ok=True)
        for subject in eeg_subjects:
            scale = 1 / math.sqrt(k) / np.sqrt(np.maximum(variance, variance[0] * 1e-2))
            regs = {f"rep-{r}": {"coef_": rng.normal(0, 1, (63 * 140, k)) * scale,
                                 "intercept_": rng.normal(0, 0.1, 63 * 140), "n_features_in_": k}
                    for r in range(1, 5)}
            _save_npy(fs, ned_root.path(ned_root.eeg_regression(subject)), regs)
            _save_npy(fs, ned_root.path(ned_root.eeg_metadata(subject)), _eeg_metadata(rng))
    return NedDir(str(out_dir))


DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
               "camera", "coins", "moon", "brick", "grass", "gravel", "clock")


def demo_images(size: int = 256) -> np.ndarray:
    """Built-in photographs (scikit-image's bundled set): uint8 (N, 3, size, size), center-cropped."""
    try:
        import skimage.data
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError("demo images need scikit-image: pip install 'ned-ray[demo]'") from exc
    out = []
    for name in DEMO_PHOTOS:
        photo = np.asarray(getattr(skimage.data, name)())  # (H, W) or (H, W, C)
        square = center_square(photo.transpose(2, 0, 1) if photo.ndim == 3 else photo)  # as NED's tutorials
        pil = Image.fromarray(square.transpose(1, 2, 0) if photo.ndim == 3 else square).convert("RGB")
        pil = pil.resize((size, size), Image.Resampling.BILINEAR)
        out.append(np.asarray(pil).transpose(2, 0, 1))
    return np.stack(out)


def write_demo_images(out_dir: str | Path) -> list[Path]:
    """Save the built-in photographs as JPEG (and a few as PNG) files, e.g. as a job input folder."""
    from PIL import Image

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    import skimage.data

    paths = []
    for i, name in enumerate(DEMO_PHOTOS):
        image = Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")
        path = folder / (f"{name}.png" if i % 4 == 3 else f"{name}.jpg")
        image.save(path, quality=95) if path.suffix == ".jpg" else image.save(path)
        paths.append(path)
    return paths
