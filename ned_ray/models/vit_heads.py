"""BERG's ViT-B/32 image models as heads on one feature vector (berg-spec §2-§8, §13).

Every family (EEG in BERG's per-subject format, fsaverage fMRI, THINGS-fMRI, THINGS-MEG, TVSD Utah
arrays) maps the same 460,800 ViT block features through its own scaler -> PCA(s) -> linear
regression(s); only the files differ. Here a model is a :class:`Head`: its scaler and PCAs, and its
regressions with the output rows its selection keeps (gathered at load, in BERG's order and with
BERG's duplicate rules). A :class:`HeadStack` hosts any number of heads: it folds each scaler into
its PCA (``W = C / scale``, ``b = (mean / scale) C^T + pca_mean C^T``, in float64, kept in float32),
concatenates the folded components of every head, and so costs **one matrix product on the
features for all heads**, then one product per regression on its slice of the codes.

BERG computes the PCA in float32 and the regression in the file's dtype, casting to float32; the
fold differs from that by float32 rounding only (checked against BERG's outputs in the tests).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import SelectionError

__all__ = ["FAMILIES", "Head", "Readout", "HeadStack", "read_head", "SelectionError", "exact_float32", "project"]


@dataclass(frozen=True)
class Readout:
    """One regression: ``code[pca] @ coef.T + intercept``, its rows already selected; its outputs go
    to ``part`` (concatenated with the other readouts of that part, in order)."""

    pca: int
    coef: np.ndarray  # (n, k)
    intercept: np.ndarray  # (n,)
    part: str = ""


@dataclass
class Head:
    """One model's weights: scaler, PCAs, readouts, and the per-image shape of each output part."""

    name: str
    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    pcas: list[tuple[np.ndarray, np.ndarray]]  # (components (k, F), mean (F,)) each
    readouts: list[Readout]
    parts: dict[str, tuple[int, ...]]  # "" for a single output; "lh"/"rh" for fsaverage
    selection: dict[str, Any] = field(default_factory=dict)  # what was kept, for metadata
    source: str = ""  # the weight file it was read from: heads of one file share their projection

    @property
    def k(self) -> int:
        return sum(c.shape[0] for c, _ in self.pcas)


# -- reading BERG's files --------------------------------------------------------------------------
def _get(mapping: Any, key: str, where: str) -> Any:
    """``mapping[key]`` for dicts and for pickled sklearn objects (attributes), or one clear error."""
    if hasattr(mapping, "keys") and key in mapping.keys():
        return mapping[key]
    found = sorted(map(str, mapping.keys())) if hasattr(mapping, "keys") else type(mapping).__name__
    raise ValueError(f"{where}: '{key}' missing (found {found})")


def _pca(params: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    components = np.asarray(_get(params, "components_", where))
    mean = np.asarray(_get(params, "mean_", where))
    if components.ndim != 2 or mean.shape != (components.shape[1],):
        raise ValueError(f"{where}: PCA components_ {components.shape} and mean_ {mean.shape} do not fit")
    return components, mean


def _regression(params: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    coef, intercept = np.asarray(_get(params, "coef_", where)), np.asarray(_get(params, "intercept_", where))
    if coef.ndim != 2 or intercept.shape != (coef.shape[0],):
        raise ValueError(f"{where}: coef_ {coef.shape} and intercept_ {intercept.shape} do not fit")
    return coef, intercept


def _binary(value: Any, name: str, length: int) -> np.ndarray:
    """A 0/1 mask of ``length`` (BERG's checks, with its messages), as sorted indexes."""
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise SelectionError(f"{name} must be a list or numpy array, got {type(value).__name__}")
    mask = np.asarray(value)
    if mask.shape != (length,):
        raise SelectionError(f"{name} must have exactly {length} elements, got {mask.size}")
    if not np.isin(mask, [0, 1]).all():
        raise SelectionError(f"{name} must be binary (contain only 0s and 1s)")
    if not mask.any():
        raise SelectionError(f"At least one element in {name} must be selected (contain at least one 1)")
    return np.flatnonzero(mask)


def _names(value: Any, what: str, valid: Sequence[str]) -> list[str]:
    """A list of names, each valid (BERG: 'must be provided as a list', 'Invalid ...')."""
    if not isinstance(value, (list, tuple)):
        raise SelectionError(f"{what} must be provided as a list, got {type(value).__name__}")
    bad = [v for v in value if v not in valid]
    if bad:
        raise SelectionError(f"Invalid {what}(s): {bad}. Valid {what}s are: {list(valid)}")
    return list(value)


def _check_keys(selection: Mapping[str, Any], valid: Sequence[str]) -> None:
    for key in selection:
        if key not in valid:
            raise SelectionError(f"Invalid selection key: '{key}'. Valid keys are: {sorted(valid)}")


def _unit_time_rows(units: np.ndarray, times: np.ndarray, n_times: int) -> np.ndarray:
    """Rows ``unit * n_times + t`` for every unit, then every time (row-major (unit, time))."""
    return (units[:, None] * n_times + times[None, :]).ravel()


@dataclass(frozen=True)
class Rows:
    """What a selection keeps of a model's outputs, resolved from its metadata alone (no weights):
    per output part ("" or "lh"/"rh"), the regression rows in output order, the per-image shape
    (EEG: without its repetition axis, which only the weight file says), and the rows the file must
    hold; ``kept`` names what was kept (channel names, indexes) for the output's metadata."""

    rows: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    total: dict[str, int]
    kept: dict[str, Any]


def _eeg(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§4: channels in the user's order (duplicates kept), then the times of a mask; rows ch*T + t."""
    ch_names = [str(c) for c in _get(_get(meta, "eeg", where), "ch_names", where)]
    n_t = len(_get(_get(meta, "eeg", where), "times", where))
    _check_keys(selection, ("channels", "timepoints"))
    channels = selection.get("channels")
    if channels is None:
        ch = np.arange(len(ch_names))
    else:
        if not isinstance(channels, (list, tuple)):
            raise SelectionError(f"channels parameter must be a list, got {type(channels).__name__}")
        bad = [c for c in channels if c not in ch_names]
        if bad:
            raise SelectionError(f"Invalid channel(s): {bad}. Valid channels are: {ch_names}")
        ch = np.array([ch_names.index(c) for c in channels], np.int64)  # the user's order, duplicates kept
    t = _binary(selection["timepoints"], "timepoints", n_t) if "timepoints" in selection else np.arange(n_t)
    return Rows({"": _unit_time_rows(ch, t, n_t)}, {"": (len(ch), len(t))}, {"": len(ch_names) * n_t},
                {"channels": ch, "timepoints": t})


FSAVERAGE_ROIS = ("V1d V1v V2d V2v V3d V3v hV4 OFA FFA-1 FFA-2 mTL-faces aTL-faces OVWFA VWFA-1 VWFA-2 mfs-words "
                  "mTL-words OPA PPA RSC EBA FBA-1 FBA-2 mTL-bodies early midventral midlateral midparietal "
                  "parietal lateral ventral").split()


def _fsaverage(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§5: two parts (lh, rh). ``roi`` (a str) wins over ``lh_vertices``/``rh_vertices``."""
    _check_keys(selection, ("roi", "lh_vertices", "rh_vertices"))
    fmri = _get(meta, "fmri", where)
    total = {h: len(_get(fmri, f"{h}_ncsnr", where)) for h in ("lh", "rh")}
    rows: dict[str, np.ndarray] = {}
    if "roi" in selection:
        roi = selection["roi"]
        if not isinstance(roi, str):
            raise SelectionError(f"ROI parameter must be a string, got {type(roi).__name__}")
        if roi not in FSAVERAGE_ROIS:
            raise SelectionError(f"Invalid ROI: '{roi}'. Valid ROIs are: {FSAVERAGE_ROIS}")
        for h in ("lh", "rh"):
            rows[h] = np.asarray(_get(fmri, f"{h}_fsaverage_rois", where)[roi], np.int64)
    else:
        for h in ("lh", "rh"):
            key = f"{h}_vertices"
            rows[h] = _binary(selection[key], key, total[h]) if key in selection else np.arange(total[h])
    return Rows(rows, {h: (len(rows[h]),) for h in rows}, total, {"vertices": rows})


def _things_fmri(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§6: ROI voxels concatenated in the order given (duplicates kept), then the mask's; none = all."""
    _check_keys(selection, ("roi", "voxel_index"))
    n = int(_get(_get(meta, "fmri", where), "n_voxels", where))
    rois = _get(meta, "roi", where)
    parts = []
    if "roi" in selection:
        parts += [np.asarray(rois[r], np.int64) for r in _names(selection["roi"], "ROI", list(rois.keys()))]
    if "voxel_index" in selection:
        parts.append(_binary(selection["voxel_index"], "voxel_index", n))
    rows = np.concatenate(parts) if parts else np.empty(0, np.int64)
    if len(rows) == 0:
        rows = np.arange(n)  # BERG: an empty selection means every voxel
    return Rows({"": rows}, {"": (len(rows),)}, {"": n}, {"voxels": rows})


MEG_REGIONS = ("Central", "Frontal", "Occipital", "Parietal", "Temporal")
MEG_PREFIXES = tuple("MLC MLF MLO MLP MLT MRC MRF MRO MRP MRT MZC MZF MZO MZP".split())


def _meg(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§7: sensors = sorted union of region, prefix and mask (none = all); rows sensor*T + t."""
    _check_keys(selection, ("region", "sensors", "sensor_index", "timepoints"))
    sensors_meta = _get(meta, "sensors", where)
    n_t = len(_get(_get(meta, "meg", where), "times", where))
    regions = np.asarray(sensors_meta["sensor_regions"]).astype(str)
    prefixes = np.asarray(sensors_meta["sensor_prefixes"]).astype(str)
    chosen = np.zeros(len(regions), bool)
    if "region" in selection:
        chosen |= np.isin(regions, _names(selection["region"], "region", MEG_REGIONS))
    if "sensors" in selection:
        chosen |= np.isin(prefixes, _names(selection["sensors"], "sensor prefix", MEG_PREFIXES))
    if "sensor_index" in selection:
        chosen[_binary(selection["sensor_index"], "sensor_index", len(regions))] = True
    sensors = np.flatnonzero(chosen) if chosen.any() else np.arange(len(regions))
    t = _binary(selection["timepoints"], "timepoints", n_t) if "timepoints" in selection else np.arange(n_t)
    return Rows({"": _unit_time_rows(sensors, t, n_t)}, {"": (len(sensors), len(t))}, {"": len(regions) * n_t},
                {"sensors": sensors, "timepoints": t})


def _tvsd(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§8: electrodes = sorted union of ROIs and mask (an empty ROI gives none); rows electrode*T + t."""
    _check_keys(selection, ("roi", "electrodes", "timepoints"))
    roi_meta = _get(meta, "roi", where)
    assignments = np.asarray(roi_meta["roi_assignments"])
    labels = [str(x) for x in roi_meta["roi_labels"]]
    n_t = len(_get(_get(meta, "utah-array", where), "times", where))
    if "roi" in selection or "electrodes" in selection:
        chosen = np.zeros(len(assignments), bool)
        if "roi" in selection:
            codes = [labels.index(r) for r in _names(selection["roi"], "ROI", labels)]
            chosen |= np.isin(assignments, codes)
        if "electrodes" in selection:
            chosen[_binary(selection["electrodes"], "electrodes", len(assignments))] = True
        electrodes = np.flatnonzero(chosen)
    else:
        electrodes = np.arange(len(assignments))
    t = _binary(selection["timepoints"], "timepoints", n_t) if "timepoints" in selection else np.arange(n_t)
    return Rows({"": _unit_time_rows(electrodes, t, n_t)}, {"": (len(electrodes), len(t))},
                {"": len(assignments) * n_t}, {"electrodes": electrodes, "timepoints": t})


FAMILIES = {"eeg": _eeg, "fsaverage": _fsaverage, "things_fmri": _things_fmri, "meg": _meg, "tvsd": _tvsd}
SELECTION_KEYS = {"eeg": ("channels", "timepoints"), "fsaverage": ("roi", "lh_vertices", "rh_vertices"),
                  "things_fmri": ("roi", "voxel_index"), "meg": ("region", "sensors", "sensor_index", "timepoints"),
                  "tvsd": ("roi", "electrodes", "timepoints")}


def resolve_selection(family: str, metadata: Any, selection: Mapping[str, Any] | None = None,
                      where: str = "<metadata>") -> Rows:
    """The rows a BERG selection keeps, from the model's metadata alone (BERG's rules and messages)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown BERG model family '{family}'; valid: {', '.join(FAMILIES)}")
    if selection is not None and not isinstance(selection, Mapping):
        raise SelectionError(f"a selection must be a dict of {list(SELECTION_KEYS[family])}, got {type(selection).__name__}")
    return FAMILIES[family](metadata, dict(selection or {}), where)


def read_head(family: str, weights: Any, metadata: Any, selection: Mapping[str, Any] | None = None,
              where: str = "<weights>") -> Head:
    """A :class:`Head` from a BERG weight dict and its metadata dict, rows selected as BERG does."""
    rows = resolve_selection(family, metadata, selection, where)
    if not hasattr(weights, "keys"):
        raise ValueError(f"{where}: expected a dict of scaler_param, pca_param and regression(s), got "
                         f"{type(weights).__name__}")
    scaler = _get(weights, "scaler_param", where)
    mean, scale = np.asarray(_get(scaler, "mean_", where)), np.asarray(_get(scaler, "scale_", where))
    pca_param = _get(weights, "pca_param", where)
    if family == "eeg":
        reg_param = _get(weights, "reg_param", where)
        reps = sorted(reg_param.keys(), key=lambda k: int(str(k).split("-")[-1]))
        regressions = [(_regression(reg_param[r], f"{where} [reg {r}]"), "") for r in reps]
        if "rep-1" in pca_param.keys():  # BERG's current format: one PCA per repetition
            pcas = [_pca(_get(pca_param, r, where), f"{where} [pca {r}]") for r in reps]
        else:  # BERG 2.0.0: one PCA for every repetition, of which the regressions use the first components
            components, pca_mean = _pca(pca_param, where)
            pcas = [(components[:regressions[0][0][0].shape[1]], pca_mean)]
        shapes = {"": (len(reps), *rows.shapes[""])}
    else:
        keys = {"fsaverage": ("lh", "rh")}.get(family, ("",))
        regressions = [(_regression(_get(weights, f"{p}_reg_param" if p else "reg_param", where), f"{where} [{p or 'reg'}]"), p)
                       for p in keys]
        pcas = [_pca(pca_param, where)]
        shapes = dict(rows.shapes)
    readouts = []
    for i, ((coef, intercept), part) in enumerate(regressions):
        if coef.shape[0] != rows.total[part]:
            raise ValueError(f"{where}: {part + ' ' if part else ''}coef_ has {coef.shape[0]} rows but the metadata "
                             f"describes {rows.total[part]} outputs: the weights and metadata are not one model's")
        readouts.append(Readout(i if len(pcas) > 1 else 0, coef[rows.rows[part]], intercept[rows.rows[part]], part))
    head = Head(family, mean, scale, pcas, readouts, shapes, rows.kept)
    for components, _ in head.pcas:
        if components.shape[1] != len(mean) or len(scale) != len(mean):
            raise ValueError(f"{where}: scaler ({len(mean)} features) and PCA components_ {components.shape} disagree")
    for readout in head.readouts:
        if readout.coef.shape[1] != head.pcas[readout.pca][0].shape[0]:
            raise ValueError(f"{where}: coef_ has {readout.coef.shape[1]} columns for a PCA of "
                             f"{head.pcas[readout.pca][0].shape[0]} components")
    return head


# -- computing them together -----------------------------------------------------------------------
@contextmanager
def exact_float32(device: torch.device):
    """Full float32 products, even under autocast or with TF32 allowed (the projections are where
    reduced precision costs most: 460,800 terms per code)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _fold(head: Head, rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, F) float32 folded components and (k,) float32 offset of a head, folded in float64 by
    blocks of ``rows`` components (never a float64 copy of a whole PCA)."""
    mean = torch.as_tensor(head.mean, dtype=torch.float64)
    scale = torch.as_tensor(head.scale, dtype=torch.float64)
    weight = torch.empty(head.k, len(mean), dtype=torch.float32)
    offset = torch.empty(head.k, dtype=torch.float64)
    start = 0
    for components, pca_mean in head.pcas:
        shift = mean / scale + torch.as_tensor(pca_mean, dtype=torch.float64)
        for r in range(0, components.shape[0], rows):
            block = torch.as_tensor(np.asarray(components[r:r + rows]), dtype=torch.float64)
            weight[start + r:start + r + len(block)] = block / scale
            offset[start + r:start + r + len(block)] = block @ shift
        start += components.shape[0]
    return weight, offset.to(torch.float32)


FEATURE_CHUNK = 14_400  # 460,800 / 32


def project(x: torch.Tensor, weight: torch.Tensor, chunk: int = FEATURE_CHUNK) -> torch.Tensor:
    """``x @ weight.T`` for (B, F) features and (K, F) components, summed over chunks of F.

    One float32 dot product over 460,800 features accumulates rounding: on CPU it missed BERG's
    outputs by 2.5e-5 x std for a 7-component head, and by 1e-4 x std's order on NED's EEG. Summing
    32 partial products brings that to 3-4e-6 (the float64 fold's own error is 2e-6), and runs as
    fast or faster (each partial product stays in cache); measured in tests/models/test_vit_heads.py.
    """
    out = None
    for start in range(0, x.shape[1], chunk):
        part = x[:, start:start + chunk] @ weight[:, start:start + chunk].T
        out = part if out is None else out.add_(part)
    return out


class HeadStack(nn.Module):
    """Heads sharing one feature vector: features (B, F) -> {head name: {part: (B, *shape)}}.

    The features go through every head's folded PCA(s) in as few float32 products as memory allows:
    folded components are stacked into blocks of up to ``block_bytes`` (a real BERG EEG subject,
    4 x 250 components, is 1.8 GB: a block of its own; stacking blocks into one matrix would need
    twice their memory at load). Each readout is then one float32 product on its code slice, onto
    only the rows its selection kept.

    ``heads``: (name, head) pairs, or a mapping. Each is folded as it comes, so a generator that
    reads one weight file at a time never holds more than one file besides the folded blocks.
    Heads with the same ``source`` (two selections of one file, two fsaverage hemispheres) share
    one projection.
    """

    def __init__(self, heads: Mapping[str, Head] | Iterable[tuple[str, Head]], block_bytes: int = 2 << 30) -> None:
        super().__init__()
        projections: dict[Any, int] = {}  # the (scaler, PCAs) of a file -> its first code column
        alive = []  # heads without a source are told apart by their arrays' identity: keep them alive
        blocks: list[torch.Tensor] = []
        pending: list[torch.Tensor] = []
        offsets: list[torch.Tensor] = []
        self.parts: dict[str, dict[str, tuple[int, ...]]] = {}
        self.slots: list[tuple[str, str, slice]] = []  # (head, part, code slice) per readout
        coefs, biases = [], []
        width = 0
        for name, head in (heads.items() if isinstance(heads, Mapping) else heads):
            self.parts[name] = dict(head.parts)
            key = head.source or (id(head.mean), id(head.scale), *(id(c) for c, _ in head.pcas))
            if not head.source:
                alive.append(head)
            if key not in projections:
                projections[key] = width
                weight, offset = _fold(head)
                pending.append(weight)
                offsets.append(offset)
                width += head.k
                if sum(w.numel() for w in pending) * 4 >= block_bytes:
                    blocks.append(torch.cat(pending) if len(pending) > 1 else pending[0])
                    pending = []
            pca_starts = projections[key] + np.cumsum([0] + [c.shape[0] for c, _ in head.pcas])
            for readout in head.readouts:
                self.slots.append((name, readout.part, slice(int(pca_starts[readout.pca]), int(pca_starts[readout.pca + 1]))))
                coefs.append(torch.as_tensor(readout.coef.T, dtype=torch.float32).contiguous())  # (k, n)
                biases.append(torch.as_tensor(readout.intercept, dtype=torch.float32))
        if pending:
            blocks.append(torch.cat(pending) if len(pending) > 1 else pending[0])
        if not blocks:
            raise ValueError("a HeadStack needs at least one head")
        self.blocks = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in blocks])  # (K_i, F) each
        self.register_buffer("offset", torch.cat(offsets))
        self.coefs = nn.ParameterList([nn.Parameter(c, requires_grad=False) for c in coefs])
        self.biases = nn.ParameterList([nn.Parameter(b, requires_grad=False) for b in biases])

    @property
    def width(self) -> int:
        """Codes per image: the folded components of every distinct projection."""
        return int(self.offset.shape[0])

    def bytes_per_image(self) -> int:
        """Working memory of one image: its codes and every readout's float32 outputs."""
        return 4 * (self.width + sum(len(b) for b in self.biases))

    @torch.inference_mode()
    def forward(self, features: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        with exact_float32(features.device):
            x = features.to(torch.float32)
            codes = torch.cat([project(x, w) for w in self.blocks], dim=1) if len(self.blocks) > 1 else project(x, self.blocks[0])
            codes -= self.offset
            pieces: dict[tuple[str, str], list[torch.Tensor]] = {}
            for (name, part, code), coef, bias in zip(self.slots, self.coefs, self.biases):
                pieces.setdefault((name, part), []).append(torch.addmm(bias, codes[:, code], coef))
        out: dict[str, dict[str, torch.Tensor]] = {}
        for (name, part), values in pieces.items():
            flat = torch.cat(values, dim=1) if len(values) > 1 else values[0]
            out.setdefault(name, {})[part] = flat.view(features.shape[0], *self.parts[name][part])
        return out
