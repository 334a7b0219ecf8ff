"""A :class:`ModelGroup`: the models one worker (a Ray actor, or the Python API) hosts together.

Every model on a shared backbone (ViT-B/32: NED's EEG subjects, BERG's EEG, fsaverage, THINGS-fMRI,
MEG and TVSD heads; BERG's AlexNets) lives in one :class:`~ned_ray.models.shared.SharedModels`: one
pass per backbone and image feeds every head on it. Each fwrf model keeps its own backbone (NED
trained one per subject and ROI). The group says which preprocessed inputs it needs (``"fwrf"``:
227 px, ``"vit"``: the 224 px crop ViT-B/32 and AlexNet read), so images are decoded and resized once
for all of its models.
"""

from __future__ import annotations

import pickle
import zipfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import psutil
import torch

from ..errors import DeviceError, ModelLoadError
from ..families import BY_INPUT, FWRF, VIT_B_32
from ..ids import ModelId, UnknownModelError
from ..modeldir import MissingFileError, ModelFileError, NedDir
from ..preprocess import check_images, fwrf_input, vit_input
from ..safeload import UnsafePickleError
from .alexnet import find_alexnet_weights
from .fwrf import FwrfModel, load_fwrf
from .shared import SharedModels, load_shared_models
from .vit_eeg import N_COMPONENTS, find_vit_weights, vit_filesystem
from .vit_heads import SelectionError

__all__ = ["ModelGroup", "ModelLoadError", "DeviceError", "resolve_device", "INPUTS", "PRECISIONS", "free_memory", "weights_bytes"]

# Preprocessing each input kind needs, from uint8 (N,3,H,W) square images to uint8 tensors.
INPUTS: dict[str, Callable[[np.ndarray | torch.Tensor], torch.Tensor]] = {"fwrf": fwrf_input, "vit": vit_input}


PRECISIONS = ("fp32", "tf32", "bf16")
MEMORY_FRACTION = 0.5  # of the device's free memory, for one model's batch (after all models are loaded)
MAX_BATCH = {"cpu": 100, "cuda": 1024}  # CPU gains nothing from larger batches; NED uses 100


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(psutil.virtual_memory().available)


# what a damaged, truncated, foreign or unreadable model file raises while it loads (torch's own
# checks: RuntimeError; pickle, zip, HDF5 and numpy readers; storage). Anything else is a bug and
# stays a traceback.
LOAD_FAILURES = (OSError, ValueError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


@contextmanager
def _naming(model: ModelId | str, ned: NedDir):
    """Re-raise a loading failure (:data:`LOAD_FAILURES`) as one ModelLoadError line naming the model
    (files are in the message)."""
    try:
        yield
    except (MissingFileError, UnknownModelError, UnsafePickleError, ModelFileError, SelectionError):
        raise
    except LOAD_FAILURES as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"model {model} failed to load from {ned.url}: {type(exc).__name__}: {reason}") from exc


def _check_voxels(ned: NedDir, model: ModelId, n_voxels: int) -> None:
    """The checkpoint's voxel count is its metadata's: a file of another ROI or subject under this
    model's name is refused, naming both files."""
    entry = ned.entry(model)
    expected = len(ned.metadata(model)["fmri"]["ncsnr"])
    if n_voxels != expected:
        files = " + ".join(ned.uri(w) for w in entry.weights)
        raise ValueError(f"{files} holds {n_voxels} voxels but its metadata {ned.uri(entry.metadata)} describes "
                         f"{expected}: the weights are not {model}'s (another ROI or subject saved under its name?)")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use device='cpu' or 'auto'")
    return device


FEATURES = 460_800  # ViT-B/32 block features per image (EEG)
ALEXNET_BYTES = 61_100_840 * 4  # torchvision's AlexNet in float32 (the untrained one has no file)


def weights_bytes(ned: NedDir, model_ids: Sequence[ModelId], vit_weights: str | None = None,
                  alexnet_weights: str | None = None) -> tuple[dict[ModelId, int], dict[str, int]]:
    """Memory the models' weights take once loaded, estimated from file sizes (nothing is read).

    Returns (per model, shared by the models of each backbone, by its name). fwrf: its checkpoints.
    NED's EEG: its regressions. BERG's models: their file (folded components in float32; an
    fsaverage file counted once for both hemispheres). Shared: the backbone's weights (ViT-B/32's
    file, plus NED's scaler and 250 principal components in float64; AlexNet's 61 M float32 values).
    """
    sizes: dict[ModelId, int] = {}
    for mid in model_ids:
        entry = ned.entry(mid)
        if not mid.family.has_heads:
            sizes[mid] = sum(ned.size(w) for w in entry.weights)
        elif entry.format == "ned":  # NED's EEG: scaler, PCA (shared) and the subject's regression
            sizes[mid] = ned.size(entry.weights[2])
        else:
            sizes[mid] = ned.size(entry.weights[0]) // (len(mid.family.variants) if mid.family.variant_is_part else 1)
    shared: dict[str, int] = {}
    for backbone in {m.family.backbone for m in model_ids if m.family.has_heads}:
        if backbone == VIT_B_32:
            fs, path = vit_filesystem(find_vit_weights(vit_weights, ned), ned)
            shared[backbone.name] = int(fs.size(path))
            if any(m.family.backbone == VIT_B_32 and ned.entry(m).format == "ned" for m in model_ids):
                files = ned.size(ned.EEG_SCALER) + ned.size(ned.EEG_PCA)  # 250 components + scaler, float64
                shared[backbone.name] += min(files, 8 * FEATURES * (N_COMPONENTS + 2))
        elif backbone.name == "alexnet":
            fs, path = vit_filesystem(find_alexnet_weights(alexnet_weights), None)
            shared[backbone.name] = int(fs.size(path))
        else:
            shared[backbone.name] = ALEXNET_BYTES
    return sizes, shared


def _selections(ned: NedDir, ids: Sequence[ModelId],
                selections: Mapping[ModelId | str, Mapping[str, Any]] | None) -> dict[ModelId, dict[str, Any]]:
    """BERG selections keyed by model id; each names a hosted BERG model (else one clear error)."""
    out: dict[ModelId, dict[str, Any]] = {}
    for key, value in (selections or {}).items():
        mid = ModelId.parse(key) if isinstance(key, str) else key
        if mid not in ids:
            raise ValueError(f"a selection is given for {mid}, which this group does not host")
        if not mid.family.has_heads or ned.entry(mid).format != "berg":
            raise SelectionError(f"{mid}: BERG selections apply to BERG's files; NED's models are "
                                 "selected with --channels/--times/--min-ncsnr (ned_ray.selection)")
        if value:
            out[mid] = dict(value)
    return out


class ModelGroup:
    """Models loaded once onto one device; ``encode`` maps uint8 images to float32 responses per model."""

    def __init__(self, ned: NedDir | str, model_ids: Sequence[ModelId | str], device: str | torch.device = "auto",
                 vit_weights: str | None = None, precision: str = "fp32", batch_size: int = 0,
                 memory_share: float = 1.0, projection: str = "auto",
                 selections: Mapping[ModelId | str, Mapping[str, Any]] | None = None,
                 alexnet_weights: str | None = None) -> None:
        """Load ``model_ids`` from ``ned`` onto ``device``.

        ``precision``: fp32 (NED's numbers), tf32 (TF32 matmuls/convolutions on CUDA; fp32 on CPU) or
        bf16 (autocast). ``batch_size``: images per forward pass for every model; 0 chooses one per
        model from the memory this group may use (:meth:`batch_size_for`). ``memory_share``: the
        fraction of a GPU's memory this group may use when it shares the GPU (its Ray GPU share).
        ``projection``: EEG scaler + PCA in ``float64`` (as NED) or folded into one ``float32`` product;
        ``auto``: float64 on CPU, float32 on CUDA (GPUs' float64 rate is a small fraction of their
        float32 rate; parity stays within 1e-4 x std, measured on NED's fixtures: tests/models).
        BERG's heads always run folded in float32. ``selections``: BERG's selection dict per BERG
        model (berg-spec §4-§8: channels, timepoints, roi, vertices, sensors, electrodes...), applied
        to the weights at load, so only the kept outputs are computed. ``vit_weights``,
        ``alexnet_weights``: where the trained backbones' files are (else where each looks by itself).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        if not 0 < memory_share <= 1:
            raise ValueError(f"memory_share must be in (0, 1], got {memory_share}")
        self.precision, self.memory_share = precision, float(memory_share)
        self.ned = ned if isinstance(ned, NedDir) else NedDir(ned)
        ids = sorted({ModelId.parse(m) if isinstance(m, str) else m for m in model_ids})
        if not ids:
            raise ValueError("a ModelGroup needs at least one model id")
        for mid in ids:
            self.ned.entry(mid)  # unknown ids fail here, listing the valid ones
        self.device = resolve_device(device)
        self.projection = projection if projection != "auto" else ("float32" if self.device.type == "cuda" else "float64")
        self.model_ids: list[ModelId] = ids
        self.selections = _selections(self.ned, ids, selections)
        self.fmri: dict[ModelId, FwrfModel] = {}
        for m in ids:
            if m.family.backbone == FWRF:
                with _naming(m, self.ned):
                    self.fmri[m] = load_fwrf(self.ned, m, self.device)
                    _check_voxels(self.ned, m, self.fmri[m].n_voxels)
        shared_ids = [m for m in ids if m.family.has_heads]
        self.shared: SharedModels | None = None
        if shared_ids:
            names = f"{', '.join(map(str, shared_ids[:3]))}{', ...' if len(shared_ids) > 3 else ''}"
            weights = {"vit_b_32": vit_weights, "alexnet": alexnet_weights}
            with _naming(shared_ids[0] if len(shared_ids) == 1 else names, self.ned):
                self.shared = load_shared_models(self.ned, shared_ids, self.device, weights, self.projection,
                                                 self.selections)
            self._shared_shapes = self.shared.shapes()
        self.batch_sizes: dict[str, int] = {kind: batch_size or self.batch_size_for(kind) for kind in self.inputs}

    @property
    def inputs(self) -> tuple[str, ...]:
        """The preprocessed inputs this group consumes."""
        return tuple(k for k in INPUTS if any(m.family.input == k for m in self.model_ids))

    def output_shape(self, model_id: ModelId) -> tuple[int, ...]:
        """Per-image response shape: (V,) for fwrf, (reps, channels, times) for EEG, and BERG's
        shapes after selection: (vertices,), (voxels,), (sensors, times), (electrodes, times)."""
        if model_id in self.fmri:
            return (self.fmri[model_id].n_voxels,)
        return self._shared_shapes[str(model_id)]

    def preprocess(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 square images -> the uint8 tensors this group needs (CPU work)."""
        return {kind: INPUTS[kind](images) for kind in self.inputs}

    def batch_size_for(self, kind: str) -> int:
        """Images per forward pass for the models of one input kind, from the device's free memory.

        The per-image working memory is measured with a 4-image probe on CUDA and estimated from the
        architecture on CPU; the largest model of the kind decides. Capped by ``MAX_BATCH``.
        """
        models = list(self.fmri.values()) if kind == "fwrf" else [self.shared]
        if self.device.type == "cuda":
            per_image = max(self._probe_bytes(model, kind) for model in models)
        else:
            per_image = max(model.bytes_per_image() for model in models)
        fits = int(MEMORY_FRACTION * self.available_memory() // max(1, per_image))
        size = max(1, min(MAX_BATCH[self.device.type], fits))
        return size - size % 8 if size > 8 else size

    def available_memory(self) -> int:
        """Bytes this group may still use: on a GPU, its share of the device minus what it holds
        (never more than what is free); on the CPU, the host's available memory."""
        if self.device.type != "cuda":
            return free_memory(self.device)
        total = torch.cuda.get_device_properties(self.device).total_memory
        own = torch.cuda.memory_reserved(self.device)
        return max(0, min(free_memory(self.device), int(self.memory_share * total) - own))

    def _probe_bytes(self, model: torch.nn.Module, kind: str) -> int:
        side = BY_INPUT[kind].side
        probe = torch.zeros(4, 3, side, side, dtype=torch.uint8, device=self.device)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        with self._precision(self.precision):
            model(probe)
        torch.cuda.synchronize(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - before) // 4

    @contextmanager
    def _precision(self, precision: str) -> Iterator[None]:
        if precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                yield
        else:  # fp32 is exact float32 on CUDA too (PyTorch lets cuDNN use TF32 by default)
            saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
            try:
                yield
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    def _batched(self, model: torch.nn.Module, x: torch.Tensor, batch_size: int, precision: str) -> torch.Tensor:
        """``model`` over ``x`` (uint8, on the device) in batches; float32 on the device."""
        with self._precision(precision):
            return torch.cat([model(x[s:s + batch_size]).float() for s in range(0, x.shape[0], batch_size)])

    def run(self, inputs: Mapping[str, torch.Tensor], precision: str | None = None) -> dict[ModelId, np.ndarray]:
        """Forward preprocessed uint8 inputs through every model, each in its own batch size.

        uint8 goes to the device (normalisation happens there); each model's outputs come back in one
        copy. ``precision`` overrides the group's (used to measure reduced precision against fp32).
        """
        return self.run_stored(inputs, "responses", precision)[0]

    def run_stored(self, inputs: Mapping[str, torch.Tensor], store: str = "responses", precision: str | None = None
                   ) -> tuple[dict[ModelId, np.ndarray], dict[ModelId, np.ndarray]]:
        """(responses, codes) of every model, as ``store`` asks (responses, codes or both): the ViT
        models' codes (:meth:`code_heads` maps them to responses) and, with ``codes``, their
        responses not computed at all; fwrf models have no small code and give responses always."""
        precision = precision or self.precision
        out: dict[ModelId, np.ndarray] = {}
        coded: dict[ModelId, np.ndarray] = {}
        if self.fmri:
            x = inputs["fwrf"].to(self.device, non_blocking=True)
            for mid, model in self.fmri.items():
                out[mid] = self._batched(model, x, self.batch_sizes["fwrf"], precision).cpu().numpy()
        if self.shared is not None:
            x = inputs["vit"].to(self.device, non_blocking=True)
            size = self.batch_sizes["vit"]
            with self._precision(precision):
                pieces = [self.shared.stored(x[s:s + size], store != "codes", store != "responses")
                          for s in range(0, x.shape[0], size)]
            for kind, found in ((0, out), (1, coded)):
                for name in pieces[0][kind] if pieces else ():
                    y = torch.cat([p[kind][name] for p in pieces]) if len(pieces) > 1 else pieces[0][kind][name]
                    found[ModelId.parse(name)] = y.float().cpu().numpy()
        return out, coded

    def code_heads(self) -> dict[ModelId, Any]:
        """Each shared-backbone model's :class:`~ned_ray.output.codes.CodeHead`: its code -> its responses."""
        return {ModelId.parse(name): head for name, head in self.shared.code_heads().items()} if self.shared is not None else {}

    def deviation(self, inputs: Mapping[str, torch.Tensor], outputs: Mapping[ModelId, np.ndarray], store: str = "responses",
                  images: int = 1) -> dict[ModelId, tuple[float, float]]:
        """(max |outputs - fp32|, std of the fp32 values) per model, on the first ``images`` inputs: the
        values stored (``store``: a coded model's codes, the others' responses)."""
        first = {k: v[:images] for k, v in inputs.items()}
        responses, codes = self.run_stored(first, store, precision="fp32")
        reference = {**responses, **codes}
        return {m: (float(np.abs(outputs[m][:images] - ref).max()), float(ref.std())) for m, ref in reference.items()}

    def encode(self, images: np.ndarray, batch_size: int = 100, square: bool = True) -> dict[ModelId, np.ndarray]:
        """Responses of every model to ``images`` (uint8, N x 3 x H x W; square unless ``square=False``,
        for groups of ViT models only: BERG's transform crops the centre), in batches."""
        if not square and self.fmri:
            raise ValueError("non-square images are defined for the ViT-B/32 models only (fwrf resizes to 227x227)")
        images = check_images(images, square=square)
        n = images.shape[0]
        results = {m: np.empty((n, *self.output_shape(m)), dtype=np.float32) for m in self.model_ids}
        for start in range(0, n, batch_size):  # NED's batches of images; each model splits them further if needed
            batch = self.run(self.preprocess(images[start:start + batch_size]))
            for mid, values in batch.items():
                results[mid][start:start + len(values)] = values
        return results
