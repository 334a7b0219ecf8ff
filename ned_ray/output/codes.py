"""Compact outputs (``--store codes``): a linear model's response is a small code times a head.

Every ViT-B/32 family (BERG's five, NED's EEG) maps an image to ``codes`` (its PCA projection: a few
hundred float32 values) and then to responses by linear readouts: ``response = code[a:b] @ coef.T +
intercept`` per readout, the readouts' outputs concatenated and reshaped to the per-image shape. An
output stored as codes keeps the code of every image (``OUT/<model>/part-N.codes.parquet``) and the
head once (``OUT/<model>/head.npz``, its sha256 in the manifest): self-contained, readable without
the model directory, and a small fraction of the responses' bytes. :func:`rebuild` gives the
responses back in float32, accumulated in float64 (no torch needed; a GPU through torch if asked).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

__all__ = ["CodeHead", "Readout", "rebuild"]


@dataclass(frozen=True)
class Readout:
    """One linear map from the code columns [start, stop) to ``len(intercept)`` outputs."""

    start: int
    stop: int
    coef: np.ndarray  # (n, stop - start): float32 (BERG's heads) or float64 (NED's EEG regressions, as NED)
    intercept: np.ndarray  # (n,)


@dataclass(frozen=True)
class CodeHead:
    """A model's readouts from its code to its per-image ``shape`` (the outputs in readout order)."""

    width: int  # code values per image
    readouts: tuple[Readout, ...]
    shape: tuple[int, ...]

    def select(self, rows: np.ndarray, shape: tuple[int, ...]) -> "CodeHead":
        """The head of the flat outputs ``rows`` only (in that order: a selection), per-image ``shape``."""
        owner = np.concatenate([np.full(len(r.intercept), i) for i, r in enumerate(self.readouts)])
        within = np.concatenate([np.arange(len(r.intercept)) for r in self.readouts])
        rows = np.asarray(rows, np.int64)
        cuts = [0, *(np.flatnonzero(np.diff(owner[rows]) != 0) + 1).tolist(), len(rows)]
        readouts = []
        for a, b in zip(cuts[:-1], cuts[1:]):  # runs of rows of one readout (a few per model)
            if b > a:
                r, take = self.readouts[int(owner[rows[a]])], within[rows[a:b]]
                readouts.append(Readout(r.start, r.stop, r.coef[take], r.intercept[take]))
        return CodeHead(self.width, tuple(readouts), tuple(shape))

    @property
    def outputs(self) -> int:
        return int(sum(len(r.intercept) for r in self.readouts))

    def to_bytes(self) -> bytes:
        """The head as an ``.npz`` (numbers only: read back without pickle)."""
        arrays = {"width": np.asarray(self.width), "shape": np.asarray(self.shape, np.int64)}
        for i, r in enumerate(self.readouts):
            arrays[f"readout_{i}_code"] = np.asarray([r.start, r.stop], np.int64)
            arrays[f"readout_{i}_coef"] = r.coef
            arrays[f"readout_{i}_intercept"] = r.intercept
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "CodeHead":
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            n = sum(1 for k in npz.files if k.endswith("_code"))
            readouts = tuple(Readout(*(int(v) for v in npz[f"readout_{i}_code"]), npz[f"readout_{i}_coef"],
                                     npz[f"readout_{i}_intercept"]) for i in range(n))
            return cls(int(npz["width"]), readouts, tuple(int(v) for v in npz["shape"]))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rebuild(codes: np.ndarray, head: CodeHead, device: str = "cpu") -> np.ndarray:
    """Responses (n, *shape) float32 from codes (n, width) float32: each readout accumulated in
    float64. ``device``: "cpu" (numpy) or a torch device ("cuda") for large rebuilds."""
    if codes.shape[1:] != (head.width,):
        raise ValueError(f"codes of shape {codes.shape} do not fit a head of {head.width} code values")
    if device != "cpu":
        import torch

        x = torch.as_tensor(codes, device=device).to(torch.float64)
        parts = [torch.addmm(torch.as_tensor(r.intercept, device=device, dtype=torch.float64), x[:, r.start:r.stop],
                             torch.as_tensor(r.coef, device=device, dtype=torch.float64).T) for r in head.readouts]
        out = torch.cat(parts, dim=1).to(torch.float32).cpu().numpy()
    else:
        x = codes.astype(np.float64)
        out = np.concatenate([(x[:, r.start:r.stop] @ r.coef.T.astype(np.float64, copy=False)
                               + r.intercept.astype(np.float64, copy=False)) for r in head.readouts], axis=1)
        out = out.astype(np.float32)
    return out.reshape(len(codes), *head.shape)
