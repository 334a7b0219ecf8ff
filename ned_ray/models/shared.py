"""Every model on a shared backbone, one backbone pass per image for all the models on it.

BERG's design (a backbone's features -> scaler -> PCA -> linear heads) serves every family but fwrf:
ViT-B/32 (NED's EEG, BERG's EEG, fsaverage, THINGS-fMRI, MEG, TVSD) and BERG's AlexNets, trained and
untrained. :class:`SharedModels` runs each backbone it hosts once per batch and hands its features
to the heads on it: NED's EEG models (:class:`~ned_ray.models.vit_eeg.EegHeads`: one shared PCA
code, every subject's regressions in one product) and BERG's heads (one
:class:`~ned_ray.models.vit_heads.HeadStack` per backbone: one stacked projection).
:func:`load_shared_models` reads any mix of these models from a directory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..families import VIT_B_32, Backbone
from ..ids import ModelId
from ..modeldir import NedDir
from ..output.codes import CodeHead
from ..preprocess import vit_normalise
from .alexnet import N_FEATURES as ALEXNET_FEATURES
from .alexnet import UNTRAINED_DIGEST, UNTRAINED_SEED, AlexNetFeatures, find_alexnet_weights, load_alexnet, untrained_alexnet
from .vit_eeg import EegHeads, find_vit_weights, load_eeg, load_vit, vit_features
from .vit_heads import Head, HeadStack, Readout, read_head

__all__ = ["SharedModels", "VitFeatures", "load_shared_models", "load_heads", "berg_models", "load_network",
           "backbone_file", "backbone_record",
           "ACTIVATIONS"]

# float32 values alive per image in one backbone pass besides its features (measured order of size)
ACTIVATIONS = {"vit_b_32": 1_000_000, "alexnet": 600_000, "alexnet_untrained": 600_000}


class VitFeatures(nn.Module):
    """A ViT as a feature extractor: normalised images -> every encoder block's output (460,800)."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vit_features(self.vit, x)


def backbone_file(backbone: Backbone, ned: NedDir, weights: Mapping[str, str | None] | None = None) -> str | None:
    """Where a shared backbone's weights are read from (``weights``: backbone name -> a path or URL
    given by the user), or None for a network built without a file (BERG's untrained AlexNet)."""
    given = (weights or {}).get(backbone.name)
    if backbone == VIT_B_32:
        return find_vit_weights(given, ned)
    if backbone.name == "alexnet":
        return find_alexnet_weights(given)
    return None


def backbone_record(backbone: Backbone) -> dict[str, Any]:
    """How a backbone without a weight file is built, as outputs record it (with the torch that built it)."""
    import torchvision

    return {"file": f"<{backbone.name}: torch.manual_seed({UNTRAINED_SEED}); torchvision.models.alexnet(weights=None)>",
            "state_sha256": UNTRAINED_DIGEST, "torch": torch.__version__, "torchvision": torchvision.__version__}


def load_network(backbone: Backbone, ned: NedDir, weights: str | None = None) -> nn.Module:
    """The feature extractor of a shared backbone: normalised (B,3,224,224) images -> (B, F) float32.
    ``weights``: a path or URL for the trained networks' file (else where each looks by itself)."""
    if backbone == VIT_B_32:
        return VitFeatures(load_vit(find_vit_weights(weights, ned), ned))
    if backbone.name == "alexnet":
        return AlexNetFeatures(load_alexnet(find_alexnet_weights(weights), ned))
    if backbone.name == "alexnet_untrained":
        return AlexNetFeatures(untrained_alexnet())
    raise ValueError(f"no network is known for the backbone '{backbone.name}'")


class SharedModels(nn.Module):
    """The backbones, NED's EEG heads and BERG's head stacks: uint8 (B,3,224,224) in; out, per model
    id (as a string), its float32 responses ``(B, *shape)``."""

    def __init__(self, networks: Mapping[str, nn.Module], stacks: Mapping[str, HeadStack],
                 eeg: EegHeads | None = None, eeg_ids: Sequence[ModelId] = ()) -> None:
        super().__init__()
        self.networks = nn.ModuleDict(dict(networks))  # backbone name -> feature extractor
        self.stacks = nn.ModuleDict(dict(stacks))  # backbone name -> BERG's heads on its features
        self.eeg = eeg  # NED's EEG subjects, on ViT-B/32
        self.eeg_ids = [str(m) for m in eeg_ids]  # in EegHeads' subject order

    @property
    def stack(self) -> HeadStack | None:
        """The head stack on ViT-B/32, if any."""
        return self.stacks["vit_b_32"] if "vit_b_32" in self.stacks else None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-image response shape of every hosted model."""
        shapes: dict[str, tuple[int, ...]] = {}
        if self.eeg is not None:
            lay = self.eeg.layout
            shapes.update({m: (lay.repetitions, len(lay.ch_names), len(lay.times)) for m in self.eeg_ids})
        for stack in self.stacks.values():
            shapes.update({name: parts[""] for name, parts in stack.parts.items()})
        return shapes

    def bytes_per_image(self) -> int:
        """Working memory of one image: the largest backbone pass (activations and features, one
        backbone at a time), then every head's own."""
        widths = {"vit_b_32": 460_800, "alexnet": ALEXNET_FEATURES, "alexnet_untrained": ALEXNET_FEATURES}
        backbone = max(4 * (ACTIVATIONS.get(n, 1_000_000) + widths.get(n, 460_800)) for n in self.networks)
        heads = (self.eeg.bytes_per_image() if self.eeg is not None else 0) + \
            sum(stack.bytes_per_image() for stack in self.stacks.values())
        return backbone + heads

    def code_heads(self) -> dict[str, CodeHead]:
        """Every hosted model's readouts from its code (:meth:`stored`'s codes)."""
        heads = {m: self.eeg.code_head(i) for i, m in enumerate(self.eeg_ids)} if self.eeg is not None else {}
        for stack in self.stacks.values():
            heads.update({name: stack.code_head(name) for name in stack.parts})
        return heads

    @torch.inference_mode()
    def stored(self, u8: torch.Tensor, responses: bool = True, codes: bool = False
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(responses, codes) per model id, as asked: the codes are each model's columns of its
        projection (NED's EEG subjects share theirs); readouts run only for responses. Each backbone
        runs once; its features are dropped before the next runs."""
        x = vit_normalise(u8)  # every shared backbone reads the same crop and normalisation
        out: dict[str, torch.Tensor] = {}
        coded: dict[str, torch.Tensor] = {}
        for name, network in self.networks.items():
            features = network(x)
            if name == "vit_b_32" and self.eeg is not None:
                code = self.eeg.codes(features)
                if responses:
                    y = self.eeg(features, code)
                    out.update({m: y[:, i] for i, m in enumerate(self.eeg_ids)})
                if codes:
                    coded.update({m: code for m in self.eeg_ids})
            if name in self.stacks:
                stack = self.stacks[name]
                code = stack.codes(features.float())
                if responses:
                    out.update({model: parts[""] for model, parts in stack(features, code).items()})
                if codes:
                    coded.update({model: code[:, start:start + width] for model, (start, width) in stack.columns.items()})
            del features
        return out, coded

    @torch.inference_mode()
    def forward(self, u8: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.stored(u8)[0]


def berg_models(ned: NedDir, model_ids: Sequence[ModelId]) -> list[ModelId]:
    """The ids among ``model_ids`` that are BERG heads (every ViT-B/32 family but NED's EEG files)."""
    return [m for m in model_ids if m.family.has_heads and ned.entry(m).format == "berg"]


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


def load_shared_models(ned: NedDir, model_ids: Sequence[ModelId], device: str | torch.device = "cpu",
                       weights: Mapping[str, str | None] | None = None, projection: str = "float64",
                       selections: Mapping[ModelId, Mapping[str, Any]] | None = None) -> SharedModels:
    """One network per backbone the models in ``model_ids`` read: NED's EEG subjects as
    :class:`EegHeads` (``projection`` float64 as NED, or float32), BERG's models as one
    :class:`HeadStack` per backbone (folded, float32), each BERG model with its ``selections`` entry.
    ``weights``: backbone name -> where its trained network's file is (else where each looks)."""
    berg = berg_models(ned, model_ids)
    ned_eeg = [m for m in model_ids if m.family.has_heads and m not in berg]  # NED's own ViT files: its EEG
    eeg = load_eeg(ned, [m.subject for m in ned_eeg], projection=projection) if ned_eeg else None
    backbones = list(dict.fromkeys(m.family.backbone for m in sorted(model_ids, key=lambda m: m.family.backbone.name)))
    stacks = {}
    for backbone in backbones:
        on = [m for m in berg if m.family.backbone == backbone]
        if on:
            stacks[backbone.name] = HeadStack(load_heads(ned, on, selections))
    networks = {b.name: load_network(b, ned, (weights or {}).get(b.name)) for b in backbones}
    return SharedModels(networks, stacks, eeg, sorted(ned_eeg)).to(device).eval()
