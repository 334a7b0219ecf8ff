"""Every ViT-B/32 model of a group on one backbone pass.

NED's EEG models (:class:`~ned_ray.models.vit_eeg.EegHeads`: one shared PCA code, every subject's
regressions in one product) and BERG's heads (:class:`~ned_ray.models.vit_heads.HeadStack`: EEG in
BERG's per-subject format, fsaverage, THINGS-fMRI, THINGS-MEG, TVSD; one stacked projection) read
the same 460,800 block features. :class:`VitModels` computes them once per image and hands them to
both. :func:`load_vit_models` reads the files of any mix of these models from a directory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from ..ids import ModelId
from ..modeldir import NedDir
from ..output.codes import CodeHead
from ..preprocess import vit_normalise
from .vit_eeg import EegHeads, find_vit_weights, load_eeg, load_vit, vit_features
from .vit_heads import Head, HeadStack, Readout, read_head

__all__ = ["VitModels", "load_vit_models", "load_heads", "berg_models"]


class VitModels(nn.Module):
    """The backbone, NED's EEG heads and BERG's head stack: uint8 (B,3,224,224) in; out, per model
    id (as a string), its float32 responses ``(B, *shape)``."""

    def __init__(self, vit: VisionTransformer, eeg: EegHeads | None, eeg_ids: Sequence[ModelId],
                 stack: HeadStack | None) -> None:
        super().__init__()
        self.vit, self.eeg, self.stack = vit, eeg, stack
        self.eeg_ids = [str(m) for m in eeg_ids]  # in EegHeads' subject order

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-image response shape of every hosted model."""
        shapes: dict[str, tuple[int, ...]] = {}
        if self.eeg is not None:
            lay = self.eeg.layout
            shapes.update({m: (lay.repetitions, len(lay.ch_names), len(lay.times)) for m in self.eeg_ids})
        if self.stack is not None:
            shapes.update({name: parts[""] for name, parts in self.stack.parts.items()})
        return shapes

    def bytes_per_image(self) -> int:
        """Working memory of one image: ViT activations and features, then the heads' own."""
        heads = (self.eeg.bytes_per_image() if self.eeg is not None else 0) + \
            (self.stack.bytes_per_image() if self.stack is not None else 0)
        return 4 * 1_000_000 + 4 * 460_800 + heads

    def code_heads(self) -> dict[str, CodeHead]:
        """Every hosted model's readouts from its code (:meth:`stored`'s codes)."""
        heads = {m: self.eeg.code_head(i) for i, m in enumerate(self.eeg_ids)} if self.eeg is not None else {}
        if self.stack is not None:
            heads.update({name: self.stack.code_head(name) for name in self.stack.parts})
        return heads

    @torch.inference_mode()
    def stored(self, u8: torch.Tensor, responses: bool = True, codes: bool = False
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(responses, codes) per model id, as asked: the codes are each model's columns of its
        projection (NED's EEG subjects share theirs); readouts run only for responses."""
        features = vit_features(self.vit, vit_normalise(u8))
        out: dict[str, torch.Tensor] = {}
        coded: dict[str, torch.Tensor] = {}
        if self.eeg is not None:
            code = self.eeg.codes(features)
            if responses:
                y = self.eeg(features, code)
                out.update({m: y[:, i] for i, m in enumerate(self.eeg_ids)})
            if codes:
                coded.update({m: code for m in self.eeg_ids})
        if self.stack is not None:
            code = self.stack.codes(features.float())
            if responses:
                out.update({name: parts[""] for name, parts in self.stack(features, code).items()})
            if codes:
                coded.update({name: code[:, start:start + width] for name, (start, width) in self.stack.columns.items()})
        return out, coded

    @torch.inference_mode()
    def forward(self, u8: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.stored(u8)[0]


def berg_models(ned: NedDir, model_ids: Sequence[ModelId]) -> list[ModelId]:
    """The ids among ``model_ids`` that are BERG heads (every ViT-B/32 family but NED's EEG files)."""
    return [m for m in model_ids if m.family.uses_vit and ned.entry(m).format == "berg"]


def _only(head: Head, part: str) -> Head:
    """The head restricted to one output part (an fsaverage hemisphere), as its single output."""
    readouts = [Readout(r.pca, r.coef, r.intercept, "") for r in head.readouts if r.part == part]
    return dataclasses.replace(head, readouts=readouts, parts={"": head.parts[part]},
                               selection={"vertices": head.selection["vertices"][part]})


def load_heads(ned: NedDir, model_ids: Sequence[ModelId],
               selections: Mapping[ModelId, Mapping[str, Any]] | None = None) -> Iterator[tuple[str, Head]]:
    """(model id, head) of every BERG model in ``model_ids``, rows selected as BERG does
    (berg-spec §4-§8), reading one weight file at a time (the models of one file, such as the two
    fsaverage hemispheres of a subject, come together and share its projection)."""
    selections = selections or {}
    current: tuple[str, Any, Any] | None = None
    for mid in sorted(model_ids, key=lambda m: (m.source, str(m))):
        entry = ned.entry(mid)
        where = ned.uri(entry.weights[0])
        if current is None or current[0] != where:
            current = None  # free the previous file before reading the next
            current = (where, ned.load_npy(entry.weights[0]), ned.load_npy(entry.metadata))
        head = read_head(mid.family.key, current[1], current[2], selections.get(mid), where)
        head.source = where
        yield str(mid), (_only(head, mid.variant) if mid.family.variant_is_part else head)


def load_vit_models(ned: NedDir, model_ids: Sequence[ModelId], device: str | torch.device = "cpu",
                    vit_weights: str | None = None, projection: str = "float64",
                    selections: Mapping[ModelId, Mapping[str, Any]] | None = None) -> VitModels:
    """One backbone for every ViT-B/32 model in ``model_ids``: NED's EEG subjects as
    :class:`EegHeads` (``projection`` float64 as NED, or float32), BERG's models as one
    :class:`HeadStack` (folded, float32), each BERG model with its ``selections`` entry."""
    berg = berg_models(ned, model_ids)
    ned_eeg = [m for m in model_ids if m.family.uses_vit and m not in berg]  # NED's own ViT files: its EEG
    eeg = load_eeg(ned, [m.subject for m in ned_eeg], projection=projection) if ned_eeg else None
    stack = HeadStack(load_heads(ned, berg, selections)) if berg else None
    vit = load_vit(find_vit_weights(vit_weights, ned), ned)
    return VitModels(vit, eeg, sorted(ned_eeg), stack).to(device).eval()
