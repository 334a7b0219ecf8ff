"""What a model family states about itself (:class:`Family`); each family module defines one."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Family", "Backbone", "BergFiles", "Plot", "VIT_B_32", "FWRF", "ALEXNET", "ALEXNET_UNTRAINED", "BACKBONES",
           "BY_INPUT", "BY_NAME"]


@dataclass(frozen=True)
class Backbone:
    """The image network a family's heads read: the preprocessed uint8 image column it takes
    (``input``, a key of ``ned_ray.models.group.INPUTS``, ``side`` x ``side`` pixels; backbones with
    the same transform share the column), whether one pass feeds every model on it (``shared``: BERG's
    design, linear heads on its features) or each model runs its own, its compute per image relative
    to ViT-B/32 (``cost``, for the planner), and its preprocessing as outputs record it."""

    name: str
    input: str
    shared: bool
    side: int
    cost: float
    preprocessing: str
    whole_image: bool  # under --non-square shorter-side it reads the whole image (else the centre square)


VIT_B_32 = Backbone(  # every BERG image family and NED's EEG: one pass feeds all
    "vit_b_32", "vit", shared=True, side=224, cost=1.0, whole_image=True,
    preprocessing="RGB uint8, center-crop to square (--non-square shorter-side: the whole image); torchvision resize "
                  "shorter side 256 bilinear antialias, rounded to uint8; center-crop 224; /255; ImageNet mean/std "
                  "normalisation (ViT_B_32_Weights.IMAGENET1K_V1.transforms()); the 12 encoder blocks' outputs, "
                  "token-major (460,800 features)")
FWRF = Backbone(  # NED trained one per subject and ROI
    "fwrf", "fwrf", shared=False, side=227, cost=0.4, whole_image=False,
    preprocessing="RGB uint8, center-crop to square; torchvision Resize((227,227)) bilinear antialias, rounded to uint8; "
                  "/255; minus the checkpoint's stim_mean (split ROIs: the second checkpoint's, as NED)")
_ALEXNET_FEATURES = ("; torchvision AlexNet's nodes features.2, 5, 7, 9, 12 and classifier.2, 5, 6, each flattened "
                     "(C,H,W) and concatenated (205,672 features)")
_CROP_224 = VIT_B_32.preprocessing.split("; the 12 encoder blocks")[0]  # AlexNet_Weights.IMAGENET1K_V1's is the same
ALEXNET = Backbone(  # BERG's AlexNet models, on the same 224-px crop as ViT-B/32 (berg-spec §9)
    "alexnet", "vit", shared=True, side=224, cost=0.16, whole_image=True,
    preprocessing=_CROP_224 + _ALEXNET_FEATURES + " of the ImageNet network (alexnet-owt-7be5be79.pth)")
ALEXNET_UNTRAINED = Backbone(
    "alexnet_untrained", "vit", shared=True, side=224, cost=0.16, whole_image=True,
    preprocessing=_CROP_224 + _ALEXNET_FEATURES + " of the untrained network BERG builds (torch.manual_seed(20200220), "
                  "torchvision's initialisation)")
BACKBONES = (FWRF, VIT_B_32, ALEXNET, ALEXNET_UNTRAINED)  # the first of each input orders the decoded columns
BY_INPUT: dict[str, Backbone] = {}  # an input's side and crop: those of its first backbone
for _backbone in BACKBONES:
    BY_INPUT.setdefault(_backbone.input, _backbone)
BY_NAME = {b.name: b for b in BACKBONES}


@dataclass(frozen=True)
class Plot:
    """How ``ned-ray plot`` draws a family: ``timecourses`` (mean time course per group of units,
    groups from ``unit_groups``), ``distributions`` (response distribution per model), ``surface``
    (mean response on the inflated cortical surface) or ``topomaps`` (scalp or sensor topographies at
    chosen times)."""

    kind: str  # "timecourses", "distributions", "surface" or "topomaps"
    file: str  # the figure's file name, without .png
    caption: str
    unit_groups: Callable[[dict, dict], list[str]] | None = None  # (coords, output metadata) -> a group per unit


@dataclass(frozen=True)
class BergFiles:
    """A BERG family's files under its folder: weights (pattern -> subject[, variant]; name) and the
    metadata of a subject (pattern; name). ``{s}``: the subject, ``{v}``: the variant."""

    weights: re.Pattern
    weights_name: str
    metadata: re.Pattern
    metadata_name: str


@dataclass(frozen=True)
class Family:
    """One kind of model: where its ids live, its subjects and variants, its response axes, its
    files, its selections and the backbone it shares."""

    key: str  # short name: fwrf, eeg, fsaverage, things_fmri, meg, tvsd
    modality: str
    train_dataset: str
    model: str
    subjects: tuple[int | str, ...]
    variant: str | None  # what the id's 5th part is: "roi", "hemisphere", "split" (None: no 5th part)
    variants: tuple[str, ...]
    dims: tuple[str, ...]  # per-image response axes (xarray dims)
    title: str  # for figures and listings
    backbone: Backbone  # a shared one (VIT_B_32, ALEXNET, ...: one pass feeds every model on it) or FWRF (one per model)
    response_layout: str  # the per-image response, as recorded in each output's metadata
    berg_outputs: str  # what BERG's encode returns for one of its models
    selection_keys: tuple[str, ...] = ()  # BERG's selection keys (berg-spec §4-§8)
    select_rows: Callable[[Any, dict, str], Any] | None = None  # BERG's rule: (metadata, selection, where) -> Rows
    metadata_section: str | None = None  # the section every BERG metadata file of the family holds
    accuracy: tuple[tuple[str, str], str] | None = None  # BERG metadata (section, key) of the test accuracy, what it is
    berg_files: BergFiles | None = None  # BERG's names of its files (ned_ray.modeldir.paths)
    variant_argument: str | None = None  # the keyword of BERG's get_encoding_model that picks the variant
    variant_default: str | None = None  # its value when not given (None: required)
    variant_is_part: bool = False  # the variants are parts of one model file (fsaverage's hemispheres)
    full_shape: Callable[[Any, str | None], tuple[int, ...]] | None = None  # (metadata, variant) -> shape; None:
    # BERG's rule with nothing selected (:meth:`response_shape`)
    labels: Callable[..., dict] | None = None  # (metadata, shape, resolved, kept) -> labels of each response axis
    plot: Plot | None = None
    maps: Plot | None = None  # a second figure: topographies (EEG, MEG)
    pool: str | None = None  # the name of an actor pool that hosts only this family's models (else the input's)
    repetitions: bool = False  # responses have a leading repetition axis that BERG's selections leave whole
    ned_options: tuple[str, ...] = ()  # ned-ray's options selecting NED's models that apply (ned_ray.selection.ned)
    ned_accuracy: Callable[[Any], float] | None = None  # NED's metadata -> accuracy in % (NED's own files only)

    @property
    def path(self) -> str:
        return f"{self.modality}/{self.train_dataset}/{self.model}"

    @property
    def berg_id(self) -> str:
        """BERG's model id (``modality-train_dataset-model``)."""
        return f"{self.modality}-{self.train_dataset}-{self.model}"

    @property
    def has_heads(self) -> bool:
        """Whether its models are linear heads on a shared backbone's features (BERG's design: every
        family but fwrf), hosted together per backbone and storable as codes."""
        return self.backbone.shared

    @property
    def input(self) -> str:
        """The preprocessed image column its backbone reads."""
        return self.backbone.input

    @property
    def parts(self) -> tuple[str, ...]:
        """The output parts of one model file: its variants where they are parts of it (fsaverage's
        hemispheres), else one unnamed part."""
        return self.variants if self.variant_is_part else ("",)

    def response_shape(self, metadata: Any, variant: str | None) -> tuple[int, ...]:
        """A model's per-image response shape before any selection, from its metadata."""
        if self.full_shape is not None:
            return self.full_shape(metadata, variant)
        return self.select_rows(metadata, {}, "<metadata>").shapes[self.part(variant)]

    def part(self, variant: str | None) -> str:
        """The output part a model of this family is ("" unless its variants are parts of one file)."""
        return variant if self.variant_is_part and variant else ""

    def example(self) -> str:
        """An id of this family, for messages."""
        subject = self.subjects[0]
        tag = f"sub-{subject:02d}" if isinstance(subject, int) else f"sub-{subject}"
        return f"{self.path}/{tag}" + (f"/{self.variants[0]}" if self.variant else "")
