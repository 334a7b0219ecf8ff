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
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import SelectionError
from ..families import BY_KEY
from ..families.rules import lookup
from ..output.codes import CodeHead
from ..output.codes import Readout as CodeReadout
from ..selection.berg import resolve_selection

__all__ = ["Head", "Readout", "HeadStack", "read_head", "SelectionError", "exact_float32", "project"]


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




def _pca(params: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    components = np.asarray(lookup(params, "components_", where))
    mean = np.asarray(lookup(params, "mean_", where))
    if components.ndim != 2 or mean.shape != (components.shape[1],):
        raise ValueError(f"{where}: PCA components_ {components.shape} and mean_ {mean.shape} do not fit")
    return components, mean


def _regression(params: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    coef, intercept = np.asarray(lookup(params, "coef_", where)), np.asarray(lookup(params, "intercept_", where))
    if coef.ndim != 2 or intercept.shape != (coef.shape[0],):
        raise ValueError(f"{where}: coef_ {coef.shape} and intercept_ {intercept.shape} do not fit")
    return coef, intercept


def read_head(family: str, weights: Any, metadata: Any, selection: Mapping[str, Any] | None = None,
              where: str = "<weights>") -> Head:
    """A :class:`Head` from a BERG weight dict and its metadata dict, rows selected as BERG does."""
    rows = resolve_selection(family, metadata, selection, where)
    if not hasattr(weights, "keys"):
        raise ValueError(f"{where}: expected a dict of scaler_param, pca_param and regression(s), got "
                         f"{type(weights).__name__}")
    scaler = lookup(weights, "scaler_param", where)
    mean, scale = np.asarray(lookup(scaler, "mean_", where)), np.asarray(lookup(scaler, "scale_", where))
    pca_param = lookup(weights, "pca_param", where)
    if BY_KEY[family].repetitions:  # a regression per repetition (BERG's EEG)
        reg_param = lookup(weights, "reg_param", where)
        reps = sorted(reg_param.keys(), key=lambda k: int(str(k).split("-")[-1]))
        regressions = [(_regression(reg_param[r], f"{where} [reg {r}]"), "") for r in reps]
        if "rep-1" in pca_param.keys():  # BERG's current format: one PCA per repetition
            pcas = [_pca(lookup(pca_param, r, where), f"{where} [pca {r}]") for r in reps]
        else:  # BERG 2.0.0: one PCA for every repetition, of which the regressions use the first components
            components, pca_mean = _pca(pca_param, where)
            pcas = [(components[:regressions[0][0][0].shape[1]], pca_mean)]
        shapes = {"": (len(reps), *rows.shapes[""])}
    else:
        keys = BY_KEY[family].parts
        regressions = [(_regression(lookup(weights, f"{p}_reg_param" if p else "reg_param", where), f"{where} [{p or 'reg'}]"), p)
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
READOUT_BLOCK = 1 << 23  # float64 weight values cast at a time (64 MB)


def readout64(codes: torch.Tensor, coef: torch.Tensor, bias: torch.Tensor, block: int = READOUT_BLOCK) -> torch.Tensor:
    """``codes @ coef + bias`` accumulated in float64, rounded once to float32: (B, k) float64 codes,
    (k, n) float32 weights cast by blocks of output columns (never a float64 copy of a whole head)."""
    out = torch.empty(codes.shape[0], coef.shape[1], dtype=torch.float32, device=codes.device)
    step = max(1, block // max(1, coef.shape[0]))
    for s in range(0, coef.shape[1], step):
        out[:, s:s + step] = torch.addmm(bias[s:s + step].to(torch.float64), codes, coef[:, s:s + step].to(torch.float64))
    return out

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
        self.columns: dict[str, tuple[int, int]] = {}  # head -> (first code column, code width) of its projection
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
            self.columns[name] = (projections[key], head.k)
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

    def code_head(self, name: str) -> CodeHead:
        """A head's readouts from its own code columns (:meth:`codes` ``[:, start:start + width]``)."""
        start, width = self.columns[name]
        readouts = tuple(CodeReadout(code.start - start, code.stop - start, coef.detach().T.cpu().numpy(),
                                     bias.detach().cpu().numpy())
                         for (head, _, code), coef, bias in zip(self.slots, self.coefs, self.biases) if head == name)
        return CodeHead(width, readouts, self.parts[name][""])

    @torch.inference_mode()
    def codes(self, features: torch.Tensor) -> torch.Tensor:
        """(B, width) float32: every distinct projection's code (the PCA outputs, offsets removed)."""
        with exact_float32(features.device):
            x = features.to(torch.float32)
            codes = torch.cat([project(x, w) for w in self.blocks], dim=1) if len(self.blocks) > 1 else project(x, self.blocks[0])
            return codes.sub_(self.offset)

    @torch.inference_mode()
    def forward(self, features: torch.Tensor, codes: torch.Tensor | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """Every head's outputs; ``codes``: :meth:`codes` of these features, when already computed.
        Each readout accumulates in float64 and rounds once to float32 (as NED's EEG regressions and
        :func:`~ned_ray.output.codes.rebuild` do: an output stored as codes rebuilds to the same values)."""
        codes = self.codes(features) if codes is None else codes
        wide = codes.to(torch.float64)
        pieces: dict[tuple[str, str], list[torch.Tensor]] = {}
        for (name, part, code), coef, bias in zip(self.slots, self.coefs, self.biases):
            pieces.setdefault((name, part), []).append(readout64(wide[:, code], coef, bias))
        out: dict[str, dict[str, torch.Tensor]] = {}
        for (name, part), values in pieces.items():
            flat = torch.cat(values, dim=1) if len(values) > 1 else values[0]
            out.setdefault(name, {})[part] = flat.view(features.shape[0], *self.parts[name][part])
        return out
