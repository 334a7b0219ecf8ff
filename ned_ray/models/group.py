"""A :class:`ModelGroup`: the models one worker (a Ray actor, or the Python API) hosts together.

All requested EEG subjects live in one :class:`~ned_ray.models.vit_eeg.EegModel` (one backbone, one
shared code); each fMRI model keeps its own backbone (NED trained one per subject and ROI). The group
says which preprocessed inputs it needs (``"fwrf"``: 227 px, ``"vit"``: 224 px crop), so images are
decoded and resized once for all of its models.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..ids import ModelId, UnknownModelError
from ..nedfmt import MissingFileError, NedDir
from ..preprocess import check_images, fwrf_input, vit_input
from ..safeload import UnsafePickleError
from .fwrf import FwrfModel, load_fwrf
from .vit_eeg import EegModel, load_eeg

__all__ = ["ModelGroup", "ModelLoadError", "resolve_device", "INPUTS"]

# Preprocessing each input kind needs, from uint8 (N,3,H,W) square images to uint8 tensors.
INPUTS: dict[str, Callable[[np.ndarray | torch.Tensor], torch.Tensor]] = {"fwrf": fwrf_input, "vit": vit_input}


class ModelLoadError(RuntimeError):
    """A model's files exist but cannot be loaded (corrupt, unsafe, or not NED's architecture)."""


@contextmanager
def _naming(model: ModelId | str, ned: NedDir):
    """Re-raise any loading failure as one ModelLoadError line naming the model (files are in the message)."""
    try:
        yield
    except (MissingFileError, UnknownModelError, UnsafePickleError):
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"model {model} failed to load from {ned.url}: {type(exc).__name__}: {reason}") from exc


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use device='cpu' or 'auto'")
    return device


class ModelGroup:
    """Models loaded once onto one device; ``encode`` maps uint8 images to float32 responses per model."""

    def __init__(self, ned: NedDir | str, model_ids: Sequence[ModelId | str], device: str | torch.device = "auto",
                 vit_weights: str | None = None) -> None:
        self.ned = ned if isinstance(ned, NedDir) else NedDir(ned)
        ids = sorted({ModelId.parse(m) if isinstance(m, str) else m for m in model_ids})
        if not ids:
            raise ValueError("a ModelGroup needs at least one model id")
        for mid in ids:
            self.ned.entry(mid)  # unknown ids fail here, listing the valid ones
        self.device = resolve_device(device)
        self.model_ids: list[ModelId] = ids
        self.fmri: dict[ModelId, FwrfModel] = {}
        for m in ids:
            if m.modality == "fmri":
                with _naming(m, self.ned):
                    self.fmri[m] = load_fwrf(self.ned, m, self.device)
        eeg_ids = [m for m in ids if m.modality == "eeg"]
        self.eeg: EegModel | None = None
        if eeg_ids:
            with _naming(eeg_ids[0] if len(eeg_ids) == 1 else "eeg/things_eeg_2/vit_b_32/sub-*", self.ned):
                self.eeg = load_eeg(self.ned, [m.subject for m in eeg_ids], self.device, vit_weights)
        self._eeg_ids = {m.subject: m for m in eeg_ids}

    @property
    def inputs(self) -> tuple[str, ...]:
        """The preprocessed inputs this group consumes."""
        return tuple(k for k, used in (("fwrf", bool(self.fmri)), ("vit", self.eeg is not None)) if used)

    def output_shape(self, model_id: ModelId) -> tuple[int, ...]:
        """Per-image response shape: (V,) for fMRI, (reps, channels, times) for EEG."""
        if model_id.modality == "fmri":
            return (self.fmri[model_id].n_voxels,)
        lay = self.eeg.layout
        return (lay.repetitions, len(lay.ch_names), len(lay.times))

    def preprocess(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 square images -> the uint8 tensors this group needs (CPU work)."""
        return {kind: INPUTS[kind](images) for kind in self.inputs}

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[ModelId, np.ndarray]:
        """Forward preprocessed uint8 inputs through every model; float32 numpy out, per model."""
        out: dict[ModelId, np.ndarray] = {}
        if self.fmri:
            x = inputs["fwrf"].to(self.device, non_blocking=True)
            for mid, model in self.fmri.items():
                out[mid] = model(x).cpu().numpy()
        if self.eeg is not None:
            y = self.eeg(inputs["vit"].to(self.device, non_blocking=True)).cpu().numpy()
            for i, subject in enumerate(self.eeg.layout.subjects):
                out[self._eeg_ids[subject]] = y[:, i]
        return out

    def encode(self, images: np.ndarray, batch_size: int = 100) -> dict[ModelId, np.ndarray]:
        """Responses of every model to ``images`` (uint8, N x 3 x H x W, square), in batches."""
        images = check_images(images)
        n = images.shape[0]
        results = {m: np.empty((n, *self.output_shape(m)), dtype=np.float32) for m in self.model_ids}
        for start in range(0, n, batch_size):
            batch = self.run(self.preprocess(images[start:start + batch_size]))
            for mid, values in batch.items():
                results[mid][start:start + len(values)] = values
        return results
