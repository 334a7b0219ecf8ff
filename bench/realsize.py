"""NED-format model directories at the real sizes, with random weights (for benchmarks only).

EEG: torchvision ViT-B/32 architecture, 460,800 features, 250 PCA components, 4 x (8820 x 250)
regressions per subject. fMRI: fwrf checkpoints with the voxel counts of NSD subject 1 (ned-spec §2).
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torchvision

from ned_ray.demo import _eeg_metadata, _fwrf_metadata
from ned_ray.ids import SPLIT_ROIS
from ned_ray.modeldir import VIT_IN_NED_DIR, NedDir
from ned_ray.models.fwrf import FwrfEncoder, FwrfHead

FEATURES, COMPONENTS, OUTPUTS = 460800, 250, 63 * 140
SUB01_VOXELS = {"V1": 1350, "V2": 1433, "V3": 1187, "hV4": 687, "EBA": 2971, "FBA-2": 430, "OFA": 355, "FFA-1": 484,
                "FFA-2": 310, "PPA": 1033, "RSC": 566, "OPA": 1611, "OWFA": 464, "VWFA-1": 773, "VWFA-2": 505,
                "mfs-words": 165, "early": 5917, "midventral": 986, "midlateral": 834, "midparietal": 950,
                "parietal": 3548, "lateral": 7799, "ventral": 7604}


def _save(path: Path, obj: object, torch_file: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer) if torch_file else np.save(buffer, np.array(obj, dtype=object), allow_pickle=True)
    path.write_bytes(buffer.getvalue())


def build_eeg(root: Path, subjects: int) -> NedDir:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    _save(root / VIT_IN_NED_DIR, torchvision.models.vit_b_32(weights=None).state_dict(), torch_file=True)
    _save(root / NedDir.EEG_SCALER, {"mean_": rng.normal(0, 1, FEATURES), "scale_": rng.uniform(0.5, 2, FEATURES),
                                     "var_": np.ones(FEATURES), "n_features_in_": FEATURES, "n_samples_seen_": 16540})
    components = rng.standard_normal((COMPONENTS, FEATURES), dtype=np.float32) / np.sqrt(FEATURES)
    _save(root / NedDir.EEG_PCA, {"components_": components, "mean_": np.zeros(FEATURES), "n_components_": COMPONENTS})
    for s in range(1, subjects + 1):
        _save(root / NedDir.eeg_regression(s), {f"rep-{r}": {"coef_": rng.normal(0, 0.05, (OUTPUTS, COMPONENTS)),
                                                             "intercept_": np.zeros(OUTPUTS), "n_features_in_": COMPONENTS}
                                                for r in range(1, 5)})
        _save(root / NedDir.eeg_metadata(s), _eeg_metadata(rng))
    return NedDir(str(root))


def build_fmri(root: Path, subject: int = 1, rois: dict[str, int] | None = None) -> NedDir:
    rng = np.random.default_rng(1)
    for roi, voxels in (rois or SUB01_VOXELS).items():
        halves = [math.ceil(voxels / 2), voxels - math.ceil(voxels / 2)] if roi in SPLIT_ROIS else [voxels]
        for rel, n in zip(NedDir.fwrf_weights(subject, roi), halves):
            torch.manual_seed(int(rng.integers(2**31)))
            head = FwrfHead(n)
            with torch.no_grad():
                for rf in (head.rf0, head.rf1, head.rf2):
                    rf.normal_(0, 2)
                head.w.normal_(0, 1 / math.sqrt(768))
            enc = OrderedDict(FwrfEncoder().state_dict())
            _save(root / rel, {"stim_mean": np.full((1, 3, 1, 1), 0.45, np.float32),
                               "best_params": {"enc": enc, "fwrfs": {subject: OrderedDict(head.state_dict())}}},
                  torch_file=True)
        _save(root / NedDir.fwrf_metadata(subject, roi), _fwrf_metadata(rng, voxels))
    return NedDir(str(root))
