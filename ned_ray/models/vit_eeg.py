"""NED's EEG model ``vit_b_32`` (ned-spec §3, §10), for one or many subjects at once.

features = the outputs of all 12 ViT-B/32 encoder blocks (before the final LayerNorm), flattened
token-major and concatenated: 12 x 50 x 768 = 460800 values per image. Then
code = ((features - scaler.mean_) / scaler.scale_ - pca.mean_) @ pca.components_[:250].T
and, per subject and repetition, response = code @ coef_.T + intercept_, reshaped (63 channels, 140 times).

NED's subjects share the scaler and the PCA, so :class:`EegHeads` hosting many subjects computes the
250-d code once per image and applies every subject's heads in one matrix product. BERG's
per-subject files (``weights_subject-SS.npy``) carry their own scaler and a PCA per repetition:
they are heads of :mod:`ned_ray.models.vit_heads`. Both run on one backbone pass
(:mod:`ned_ray.models.shared`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import fsspec
import numpy as np
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from ..ids import ModelId
from ..modeldir import VIT_IN_NED_DIR, MissingFileError, NedDir
from ..output.codes import CodeHead
from ..output.codes import Readout as CodeReadout
from ..safeload import load_torch_checkpoint
from ..storage import cached_copy, is_local
from .vit_heads import exact_float32, project

__all__ = ["VIT_FILENAME", "find_vit_weights", "load_vit", "vit_features", "EegHeads", "load_eeg", "N_COMPONENTS"]

VIT_FILENAME = "vit_b_32-d86f8d99.pth"  # torchvision's IMAGENET1K_V1 file, as cached by torch.hub
VIT_ENV = "NED_RAY_VIT_WEIGHTS"
N_COMPONENTS = 250  # NED keeps the first 250 principal components


# -- the backbone -----------------------------------------------------------------------------
def find_vit_weights(explicit: str | os.PathLike | None = None, ned: NedDir | None = None) -> str:
    """Where the ViT-B/32 weights are, without downloading anything.

    Looked for, in order: ``explicit`` (a path or fsspec URL), ``$NED_RAY_VIT_WEIGHTS``, the NED
    directory's ``.../model-vit_b_32/backbone/vit_b_32.pth``, and torch hub's cache
    ``$TORCH_HOME/hub/checkpoints/vit_b_32-d86f8d99.pth`` (where torchvision keeps its download).
    """
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / VIT_FILENAME
    if explicit is not None:
        candidates = [str(explicit)]
    else:
        candidates = [os.environ[VIT_ENV]] if os.environ.get(VIT_ENV) else []
        if ned is not None and ned.exists(VIT_IN_NED_DIR):
            candidates.append(ned.uri(VIT_IN_NED_DIR))
        candidates.append(str(hub_file))
    found = first_existing(candidates, ned)
    if found is not None:
        return found
    raise MissingFileError(
        f"ViT-B/32 weights not found (looked at: {', '.join(candidates)}). NED's EEG models need "
        f"torchvision's ImageNet ViT-B/32 file '{VIT_FILENAME}'. Copy it to '{hub_file}' (set TORCH_HOME "
        f"to move that folder), or pass its path with --vit-weights / vit_weights=..., or set ${VIT_ENV}. "
        "On a machine with internet, `python -c \"import torchvision; torchvision.models.vit_b_32(weights='DEFAULT')\"` "
        "downloads it to that cache."
    )


def vit_filesystem(location: str, ned: NedDir | None):
    """fsspec filesystem for ``location``, with the NED directory's options when it is on the same store."""
    protocol = location.split("://", 1)[0] if "://" in location else "file"
    same = ned is not None and protocol == (ned.url.split("://", 1)[0] if "://" in ned.url else "file")
    return fsspec.core.url_to_fs(location, **(ned.storage_options if same else {}))


def first_existing(candidates: list[str], ned: NedDir | None) -> str | None:
    """The first of ``candidates`` (paths or fsspec URLs) that exists, or None."""
    for candidate in candidates:
        fs, path = vit_filesystem(candidate, ned)
        if fs.exists(path):
            return candidate
    return None


def read_checkpoint(location: str, ned: NedDir | None = None) -> Any:
    """A backbone's torch file at ``location`` (``weights_only=True``), copied once per node into
    the NED directory's cache when it is remote and a cache is set, like NED's own files."""
    fs, path = vit_filesystem(location, ned)
    if ned is not None and ned.cache_dir and not is_local(fs):
        reader = open(cached_copy(fs, path, ned.cache_dir), "rb")
    else:
        reader = fs.open(path, "rb")
    with reader as fh:
        return load_torch_checkpoint(fh, source=location)


def load_vit(location: str, ned: NedDir | None = None) -> VisionTransformer:
    """A torchvision VisionTransformer with weights from ``location`` (``weights_only=True``).

    The architecture is read off the state dict: ViT-B/32 for NED's real weights, or the small ViT
    that ``make-demo-models`` writes (same structure, fewer layers and channels).
    """
    state = read_checkpoint(location, ned)
    if not isinstance(state, dict) or "conv_proj.weight" not in state:
        raise ValueError(f"{location}: not a torchvision ViT state dict (no 'conv_proj.weight')")
    hidden, _, patch, _ = state["conv_proj.weight"].shape
    layers = sum(1 for k in state if k.startswith("encoder.layers.") and k.endswith(".ln_1.weight"))
    mlp = state["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0]
    tokens = state["encoder.pos_embedding"].shape[1]
    image = patch * int(round((tokens - 1) ** 0.5))
    heads = 12 if hidden == 768 else max(1, hidden // 64)  # torchvision ViTs use 64-d heads
    with torch.device("meta"):  # no random initialisation (1 s for ViT-B/32): the weights replace it
        vit = VisionTransformer(image_size=image, patch_size=patch, num_layers=layers, num_heads=heads,
                                hidden_dim=hidden, mlp_dim=mlp)
    try:
        vit.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{location}: weights do not fit a ViT: {str(exc).splitlines()[0]}") from None
    return vit.eval()


def vit_features(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """(B, layers*tokens*hidden): every encoder block's output (``add_1``), token-major, in layer order."""
    tokens = vit._process_input(x)
    tokens = torch.cat([vit.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    tokens = vit.encoder.dropout(tokens + vit.encoder.pos_embedding)
    outputs = []
    for block in vit.encoder.layers:
        tokens = block(tokens)
        outputs.append(tokens.flatten(1))
    return torch.cat(outputs, dim=1)


# -- the heads --------------------------------------------------------------------------------
class _Projection(nn.Module):
    """One scaler and one or more stacked PCAs: features (B,F) -> codes (B,K).

    ``float64`` (default; NED runs them in numpy float64): scale, then project. ``float32``: the
    scaler folded into the components, one float32 matrix product,
    code = features @ (components / scale).T - ((mean / scale) @ components.T + pca_offset),
    with the fold computed in float64 (half the memory, and a GPU's float32 rate instead of float64).
    """

    def __init__(self, mean: Any, scale: Any, components: Sequence[Any], pca_means: Sequence[Any],
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        comps = [torch.as_tensor(c[:N_COMPONENTS], dtype=torch.float64) for c in components]
        stacked = torch.cat(comps)
        offsets = torch.cat([torch.as_tensor(m, dtype=torch.float64) @ c.T for m, c in zip(pca_means, comps)])
        mean = torch.as_tensor(mean, dtype=torch.float64)
        scale = torch.as_tensor(scale, dtype=torch.float64)
        self.sizes = [c.shape[0] for c in comps]
        self.dtype = dtype
        if dtype == torch.float64:
            self.register_buffer("mean", mean)
            self.register_buffer("scale", scale)
            self.register_buffer("components", stacked)
            self.register_buffer("offset", offsets)
        else:
            folded = stacked / scale  # (K, F), in float64 before the cast
            self.register_buffer("components", folded.to(dtype))  # (K, F)
            self.register_buffer("offset", ((mean / scale) @ stacked.T + offsets).to(dtype))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.dtype != torch.float64:  # one product, in full float32 even under autocast or TF32
            with exact_float32(features.device):
                return (project(features.to(self.dtype), self.components) - self.offset).to(torch.float32)
        z = (features.to(torch.float64) - self.mean) / self.scale
        # NED casts the PCA code to float32 before the regressions.
        return (z @ self.components.T - self.offset).to(torch.float32)


class _Readout(nn.Module):
    """Regressions sharing one code slice, concatenated: code (B,k) -> (B, len(targets), C*T)."""

    def __init__(self, projection: int, code: slice, weights: Sequence[Any], biases: Sequence[Any], targets: list[int]) -> None:
        super().__init__()
        self.projection, self.code, self.targets = projection, code, targets
        k = weights[0].shape[1]
        weight = torch.empty(k, sum(w.shape[0] for w in weights), dtype=torch.float64)  # (k, n*C*T), filled in place
        bias = torch.empty(weight.shape[1], dtype=torch.float64)
        start = 0
        for w, b in zip(weights, biases):
            weight[:, start:start + w.shape[0]] = torch.as_tensor(w).T
            bias[start:start + w.shape[0]] = torch.as_tensor(b)
            start += w.shape[0]
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        y = torch.addmm(self.bias, code[:, self.code].to(torch.float64), self.weight)
        return y.to(torch.float32).view(code.shape[0], len(self.targets), -1)


@dataclass(frozen=True)
class EegLayout:
    subjects: tuple[int, ...]
    repetitions: int
    ch_names: tuple[str, ...]
    times: tuple[float, ...]


class EegHeads(nn.Module):
    """NED's EEG heads of every hosted subject on the ViT features: (B, F) -> (B, S, R, C, T)."""

    def __init__(self, projections: list[_Projection], readouts: list[_Readout], layout: EegLayout) -> None:
        super().__init__()
        self.projections = nn.ModuleList(projections)
        self.readouts = nn.ModuleList(readouts)
        self.layout = layout

    def bytes_per_image(self) -> int:
        """Working memory of one image after the features: the features in float64 twice (scaler,
        PCA), and every subject's float64 regression output with its float32 copy."""
        lay = self.layout
        outputs = len(lay.subjects) * lay.repetitions * len(lay.ch_names) * len(lay.times)
        return 16 * 460_800 + 12 * outputs

    @torch.inference_mode()
    def codes(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K) float32: the shared PCA code every subject's regressions read (NED casts it to float32)."""
        if len(self.projections) != 1:
            raise ValueError("codes are defined for one shared projection (NED's EEG files)")
        return self.projections[0](features)

    def code_head(self, subject_index: int) -> CodeHead:
        """One subject's regressions from :meth:`codes`: a readout per repetition (float64, as NED)."""
        lay = self.layout
        n_ct = len(lay.ch_names) * len(lay.times)
        readouts = []
        for target in range(subject_index * lay.repetitions, (subject_index + 1) * lay.repetitions):
            readout = next(r for r in self.readouts if target in r.targets)
            cols = slice(readout.targets.index(target) * n_ct, (readout.targets.index(target) + 1) * n_ct)
            readouts.append(CodeReadout(readout.code.start, readout.code.stop, readout.weight[:, cols].T.cpu().numpy(),
                                        readout.bias[cols].cpu().numpy()))
        return CodeHead(int(self.projections[0].offset.shape[0]), tuple(readouts),
                        (lay.repetitions, len(lay.ch_names), len(lay.times)))

    @torch.inference_mode()
    def forward(self, features: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        lay = self.layout
        codes = [p(features) for p in self.projections] if codes is None else [codes]
        n_ct = len(lay.ch_names) * len(lay.times)
        out = features.new_empty(features.shape[0], len(lay.subjects) * lay.repetitions, n_ct, dtype=torch.float32)
        for readout in self.readouts:
            out[:, readout.targets] = readout(codes[readout.projection])
        return out.view(-1, len(lay.subjects), lay.repetitions, len(lay.ch_names), len(lay.times))


def _arrays(params: Any, where: str, **ndims: int) -> list[np.ndarray]:
    """params[key] for each key, as a numeric array with ndims[key] dimensions, or one ValueError
    naming the file and what is wrong (NED's files are dicts of scikit-learn attributes)."""
    if not hasattr(params, "keys"):
        raise ValueError(f"{where}: expected a dict with {', '.join(ndims)}, got {type(params).__name__}"
                         f"{' of shape ' + str(params.shape) if hasattr(params, 'shape') else ''}")
    arrays = []
    for key, ndim in ndims.items():
        value = np.asarray(params[key]) if key in params else None
        if value is None or value.ndim != ndim or value.dtype.kind not in "fiu":
            got = "missing" if value is None else f"{value.dtype} of shape {value.shape}"
            raise ValueError(f"{where}: '{key}' must be a {ndim}-d numeric array, got {got}")
        arrays.append(value)
    return arrays


def _check_projection(scaler: Any, pcas: Sequence[Any], where: str) -> None:
    """Scaler and PCA(s) agree on the feature count; the PCA keeps at least N_COMPONENTS codes."""
    mean, scale = _arrays(scaler, where, mean_=1, scale_=1)
    for pca in pcas:
        components, pca_mean = _arrays(pca, where, components_=2, mean_=1)
        if not (len(mean) == len(scale) == components.shape[1] == len(pca_mean)):
            raise ValueError(f"{where}: scaler ({len(mean)}/{len(scale)} features) and PCA components_ "
                             f"{components.shape} / mean_ ({len(pca_mean)}) disagree on the feature count")


def _rep_keys(params: Any, where: str, what: str) -> list[Any]:
    """'rep-1'..'rep-N' in numeric order, or one ValueError naming the file."""
    if not hasattr(params, "keys"):
        raise ValueError(f"{where}: expected a dict of 'rep-1'..'rep-N' {what}, got {type(params).__name__}"
                         f"{' of shape ' + str(params.shape) if hasattr(params, 'shape') else ''}")
    keys = sorted(params.keys(), key=lambda k: int(str(k).split("-")[-1]) if str(k).startswith("rep-") else -1)
    if not keys or not all(str(k).startswith("rep-") for k in keys):
        raise ValueError(f"{where}: expected only 'rep-1'..'rep-N' keys, got {sorted(map(str, params.keys()))}")
    return keys


def _repetitions(params: Any, where: str) -> list[Any]:
    """The per-repetition linear regressions, each checked (2-d coef_, matching 1-d intercept_)."""
    keys = _rep_keys(params, where, "regressions")
    for k in keys:
        coef, intercept = _arrays(params[k], f"{where} [{k}]", coef_=2, intercept_=1)
        if coef.shape[0] != intercept.shape[0]:
            raise ValueError(f"{where} [{k}]: coef_ {coef.shape} and intercept_ {intercept.shape} disagree")
    return [params[k] for k in keys]


PROJECTIONS = {"float64": torch.float64, "float32": torch.float32}


def load_eeg(ned: NedDir, subjects: Sequence[int], device: str | torch.device = "cpu",
             projection: str = "float64") -> EegHeads:
    """The EEG heads of ``subjects`` (NED's files: one scaler and PCA shared by all, a regression per
    subject) as one :class:`EegHeads`: one projection, then every subject's regressions in one product.

    ``projection``: the scaler + PCA in ``float64`` (as NED) or folded into one ``float32`` product.
    BERG's per-subject EEG files are heads of :mod:`ned_ray.models.vit_heads` instead.
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, got '{projection}'")
    subjects = tuple(sorted(set(int(s) for s in subjects)))
    if not subjects:
        raise ValueError("load_eeg needs at least one subject")
    entries = [ned.entry(ModelId("eeg", "things_eeg_2", "vit_b_32", s)) for s in subjects]
    if any(e.format != "ned" for e in entries):
        raise ValueError("load_eeg reads NED's EEG files; BERG's per-subject files are read by vit_heads")
    metas = [ned.load_npy(e.metadata)["eeg"] for e in entries]
    ch_names, times = tuple(metas[0]["ch_names"]), tuple(float(t) for t in metas[0]["times"])
    for s, meta in zip(subjects, metas):
        if tuple(meta["ch_names"]) != ch_names or len(meta["times"]) != len(times):
            raise ValueError(f"EEG subject {s}: channels/times differ from subject {subjects[0]}; load it separately")

    regressions = []
    for s, entry in zip(subjects, entries):
        where = ned.uri(entry.weights[2])
        reps = _repetitions(ned.load_npy(entry.weights[2]), where)
        if regressions and len(reps) != len(regressions[0]):
            raise ValueError(f"EEG subject {s}: {len(reps)} repetitions, others have {len(regressions[0])}")
        for rep in reps:
            if rep["coef_"].shape[0] != len(ch_names) * len(times):
                raise ValueError(f"{where}: coef_ has {rep['coef_'].shape[0]} outputs, expected "
                                 f"{len(ch_names)} channels x {len(times)} times")
        regressions.append(reps)
    scaler, pca = ned.load_npy(ned.EEG_SCALER), ned.load_npy(ned.EEG_PCA)
    _arrays(scaler, ned.uri(ned.EEG_SCALER), mean_=1, scale_=1)
    _check_projection(scaler, [pca], f"{ned.uri(ned.EEG_PCA)} (with {ned.uri(ned.EEG_SCALER)})")
    shared = _Projection(scaler["mean_"], scaler["scale_"], [pca["components_"]], [pca["mean_"]], PROJECTIONS[projection])
    k = shared.sizes[0]
    for s, reps in zip(subjects, regressions):
        if min(r["coef_"].shape[1] for r in reps) < k:
            raise ValueError(f"{ned.uri(entries[subjects.index(s)].weights[2])}: coef_ has fewer columns than "
                             f"the {k} PCA components of {ned.uri(ned.EEG_PCA)}")
    n_reps = len(regressions[0])
    readout = _Readout(0, slice(0, k), [r["coef_"][:, :k] for reps in regressions for r in reps],
                       [r["intercept_"] for reps in regressions for r in reps], list(range(len(subjects) * n_reps)))
    layout = EegLayout(subjects, n_reps, ch_names, times)
    return EegHeads([shared], [readout], layout).to(device).eval()
