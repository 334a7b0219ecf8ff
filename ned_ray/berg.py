"""The BERG-compatible API: ``BERG(berg_dir).get_encoding_model(model_id, subject=...)`` and ``.encode(...)``.

Same method and argument names as BERG 2.x (berg-spec §10), the same outputs (float32 arrays;
fsaverage as the ``(lh, rh)`` tuple) and BERG's numbers (checked against BERG's own outputs), from
the same model code as the Ray job: every ViT-B/32 family is a head on one backbone pass.
Where BERG fails silently (berg-spec §11-§12) this API raises: float or int64 images, values
outside 0-255, empty batches, one-channel images, ``True``/``1.0`` as a subject, and metadata that
cannot be read (BERG then returns the responses alone). Non-square images are accepted, as BERG's
transform defines them (shorter side to 256, centre crop 224).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import errors
from .api import DirectoryFacade
from .errors import SelectionError
from .families import BERG_IDS
from .families.rules import check_keys
from .ids import Family, ModelId
from .modeldir import MissingFileError
from .models.group import ModelGroup, resolve_device
from .preprocess import check_images
from .safeload import UnsafePickleError

__all__ = ["BERG", "BergModel", "BERGError", "ModelNotFoundError", "ModelLoadError", "InvalidParameterError",
           "StimulusError", "UNSERVED"]

_VIDEO, _TEXT, _MULTI = "a video model", "a language (text) model", "a video, audio and text model"
_IMAGE = "an image model of another design (a network trained end to end, not linear heads on a shared backbone)"
_CLIP = "an image model on CLIP ViT-B/32 features, whose backbone ned-ray does not host"
_GATEWAY = "a gateway to Brain-Score's models"
# BERG's model ids (its model cards, gifale95/BERG berg/models/model_cards/) that ned-ray does not serve
UNSERVED: dict[str, str] = {
    "calcium_2p-natural_videos-3DCNN": _VIDEO, "2p_ca-natural_videos-3DCNN": _VIDEO, "calcium_2p-wang_2025-3DCNN": _VIDEO,
    "fmri-bmd-s3d": _VIDEO, "ecog-podcast_ecog-gpt2_xl": _TEXT, "ecog-zada2025-gpt2_xl": _TEXT,
    "fmri-cneuromod-text2fmri": _TEXT, "fmri-cneuromod_algo2025-text2fmri": _TEXT, "text2fmri": _TEXT,
    "fmri-eng1000-ridge": _TEXT, "fmri-lebel-eng1000": _TEXT, "fmri-lebel2023-opt_1_3b": _TEXT,
    "fmri-tuckute_2024-GPT2_XL": _TEXT, "fmri-cneuromod_algo2025-vibe": _MULTI, "fmri-cneuromods-vibe": _MULTI,
    "fmri-dascoli_2026-tribe_v2": _MULTI, "fmri-multi_study-tribe_v2": _MULTI,
    "fmri-mosaic-CNN8_multihead_subAll_verticesVisual": _IMAGE, "fmri-mosaic-CNN8_multihead_subNSD_verticesAll": _IMAGE,
    "fmri-mosaic-cnn8_visual": _IMAGE, "fmri-mosaic_nsd-cnn8_nsd_all": _IMAGE, "fmri-nsd_fsaverage-huze": _IMAGE,
    "fmri-nsd-mem": _IMAGE, "meg-things_meg1-clip_vit_b_32": _CLIP, "utah_array-tvsd-clip_vit_b_32": _CLIP,
    "brainscore": _GATEWAY, "brainscore_vision": _GATEWAY, "brainscore_language": _GATEWAY,
}


class BERGError(errors.NedRayError):
    """Base of the BERG API's errors (BERG's names, in ned-ray's hierarchy)."""


class ModelNotFoundError(BERGError, errors.UnknownModelError):
    """An unknown model id (the message lists the valid ones)."""


class ModelLoadError(BERGError, errors.ModelLoadError):
    """A model's files are missing or cannot be read."""


class InvalidParameterError(BERGError, SelectionError):
    """A bad subject, train split or selection (the message lists the valid values)."""


class StimulusError(BERGError, errors.InputError):
    """Images that are not a uint8 (N, 3, H, W) array of 0-255 pixels."""




@dataclass
class BergModel:
    """A loaded BERG model: its id and arguments, and the ned-ray models computing it."""

    model_id: str
    subject: int | str
    selection: dict[str, Any] | None
    ids: list[ModelId]  # one model; fsaverage: (lh, rh)
    group: ModelGroup
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return str(self.group.device)

    @property
    def family(self) -> Family:
        return self.ids[0].family


class BERG(DirectoryFacade):
    """A BERG directory (``brain-encoding-response-generator``; local path or fsspec URL such as
    ``s3://bucket/brain-encoding-response-generator``).

    ``vit_weights`` optionally names the ViT-B/32 weight file (see
    :func:`ned_ray.models.vit_eeg.find_vit_weights`); ned-ray never downloads it by itself.
    """

    def __init__(self, berg_dir: str | os.PathLike, vit_weights: str | None = None,
                 storage_options: dict | None = None) -> None:
        super().__init__(berg_dir, vit_weights, storage_options)
        self.berg_dir = self._path

    # -- the catalogue (BERG's registry: the models ned-ray serves) --------------------------------
    def list_models(self, expand_brainscore_vision: bool = False, expand_brainscore_language: bool = False) -> list[str]:
        """BERG's ``list_models``: the sorted ids of every model ned-ray serves (BERG lists its
        registry; :meth:`models_here` lists what this directory holds). ned-ray serves no Brain-Score
        gateway, so asking to expand one prints a line saying so and changes nothing."""
        if expand_brainscore_vision or expand_brainscore_language:
            print("ned-ray serves no Brain-Score models: nothing to expand (BERG's models ned-ray does not serve: "
                  "ned_ray.berg.UNSERVED)")
        return sorted(BERG_IDS)

    def get_model_catalog(self, print_format: bool = False) -> dict[str, list[str]]:
        """BERG's ``get_model_catalog``: modality -> sorted training datasets of the served models;
        ``print_format`` also prints BERG's hierarchical listing."""
        catalog: dict[str, set[str]] = {}
        for family in BERG_IDS.values():
            catalog.setdefault(family.modality, set()).add(family.train_dataset)
        formatted = {modality: sorted(datasets) for modality, datasets in catalog.items()}
        if print_format:
            print("Available Modalities and Datasets:")
            print("=================================")
            for modality, datasets in sorted(formatted.items()):
                print(f"• {modality.upper()}")
                for dataset in datasets:
                    print(f"  └─ {dataset}")
                print()
        return formatted

    def get_model_variants(self, model_id: str) -> list[str]:
        """BERG's ``get_model_variants``: the pretrained variants of a model (Hugging Face repositories
        for BERG's text and video models); every model ned-ray serves has none: ``[]``."""
        self._family(model_id)
        return []

    def models_here(self) -> dict[str, dict[str, Any]]:
        """Per BERG id this directory holds: modality, dataset, subjects (and splits) present, output,
        selection keys (ned-ray's addition; ``ned-ray models DIR`` prints the same)."""
        catalog: dict[str, dict[str, Any]] = {}
        for mid in self.directory.catalogue:
            family = mid.family
            entry = catalog.setdefault(family.berg_id, {
                "modality": family.modality, "train_dataset": family.train_dataset, "model": family.model,
                "subjects": [], "output": family.berg_outputs, "selection_keys": list(family.selection_keys)})
            if mid.subject not in entry["subjects"]:
                entry["subjects"].append(mid.subject)
            if family.variant_argument:  # "train_splits" (MEG), "rois" (fwrf)
                entry.setdefault(f"{family.variant_argument}s", []).append(mid.variant)
        return catalog

    def describe(self, model_id: str) -> None:
        """BERG's ``describe``: print a model's card (subjects, arguments, output, selection keys)."""
        family = self._family(model_id)
        info = self.models_here().get(model_id, {"subjects": []})
        lines = [f"{model_id}  (ned-ray ids: {family.path}/sub-XX{'/' + family.variant if family.variant else ''})",
                 f"  modality {family.modality}, trained on {family.train_dataset}, model {family.model} "
                 f"(backbone {family.backbone.name})",
                 f"  subjects published: {list(family.subjects)}; in this directory: {info['subjects']}",
                 f"  output: {family.berg_outputs}"]
        argument, default = family.variant_argument, family.variant_default
        if argument:
            lines.append(f"  {argument}: one of {list(family.variants)}" + (
                f" (default '{default}'); here: {info.get(argument + 's', [])}" if default else ""))
        if family.selection_keys:
            lines.append(f"  selection keys: {list(family.selection_keys)}")
        print("\n".join(lines))

    def _family(self, model_id: Any) -> Family:
        if isinstance(model_id, str) and model_id in UNSERVED:
            raise ModelNotFoundError(f"Model '{model_id}' is one of BERG's models that ned-ray does not serve "
                                     f"({UNSERVED[model_id]}). Models ned-ray serves: {sorted(BERG_IDS)}")
        if not isinstance(model_id, str) or model_id not in BERG_IDS:
            raise ModelNotFoundError(f"Model '{model_id}' not found in registry. Available models: {sorted(BERG_IDS)}")
        return BERG_IDS[model_id]

    def _model_ids(self, model_id: str, subject: Any, kwargs: dict[str, Any]) -> list[ModelId]:
        family = self._family(model_id)
        if isinstance(subject, (bool, np.bool_)) or not isinstance(subject, (int, np.integer, str)) or \
                subject not in family.subjects:
            raise InvalidParameterError(f"Subject must be one of {list(family.subjects)}, got {subject!r}")
        subject = int(subject) if isinstance(subject, (int, np.integer)) else subject
        argument = family.variant_argument
        allowed = {argument} if argument else set()
        unknown = set(kwargs) - allowed
        if unknown:
            raise InvalidParameterError(f"{model_id} takes no argument {sorted(unknown)}; its arguments: "
                                        f"subject{''.join(', ' + a for a in sorted(allowed))}, selection, device")
        if argument:  # one variant, chosen by its keyword (MEG's train_split, fwrf's roi)
            chosen = kwargs.get(argument, family.variant_default)
            if chosen not in family.variants:
                raise InvalidParameterError(f"{argument} must be one of {list(family.variants)}, got {chosen!r}")
            variants = [chosen]
        else:
            variants = list(family.variants) or [None]
        return [ModelId(family.modality, family.train_dataset, family.model, subject, v) for v in variants]

    # -- models --------------------------------------------------------------------------------
    def get_encoding_model(self, model_id: str, device: str = "auto", selection: dict | None = None,
                           **kwargs: Any) -> BergModel:
        """Load one model: ``subject=`` (and ``train_split=`` for MEG), BERG's ``selection`` dict.

        Unknown ids raise :class:`ModelNotFoundError` listing the valid ones; a bad subject, split
        or selection :class:`InvalidParameterError` listing the valid values; missing or unreadable
        files :class:`ModelLoadError` naming the file.
        """
        subject = kwargs.pop("subject", None)
        family = self._family(model_id)
        if family.select_rows is None and family.variant_argument and isinstance(selection, dict):
            try:  # NED's fwrf: BERG picks the ROI with selection={"roi": "V1"} (roi="V1" works too)
                check_keys(selection, (family.variant_argument,))
            except SelectionError as exc:
                raise InvalidParameterError(str(exc)) from None
            kwargs = {**kwargs, **selection}
            selection = None
        ids = self._model_ids(model_id, subject, kwargs)
        if device not in ("auto", "cpu", "cuda"):
            raise InvalidParameterError(f"device must be one of ['auto', 'cpu', 'cuda'], got {device!r}")
        if selection is not None and not isinstance(selection, dict):
            raise InvalidParameterError(f"selection must be a dict, got {type(selection).__name__}")
        selections = {m: selection for m in ids} if selection else None
        try:
            group = ModelGroup(self.directory, ids, resolve_device(device), self.vit_weights, selections=selections)
        except SelectionError as exc:
            raise InvalidParameterError(str(exc)) from None
        except (MissingFileError, UnsafePickleError) as exc:
            raise ModelLoadError(f"Failed to load model: {exc}") from exc
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"Failed to load model: {str(exc).splitlines()[0]}") from exc
        return BergModel(model_id, ids[0].subject, selection, ids, group, kwargs)

    def encode(self, model: BergModel, stimulus: np.ndarray, return_metadata: bool = False,
               show_progress: bool = True, batch_size: int = 100) -> Any:
        """BERG's ``encode``: float32 responses (fsaverage: ``(lh, rh)``), with the metadata dict
        when ``return_metadata`` (errors reading it are raised, never swallowed). ``show_progress``
        is accepted for compatibility; ned-ray draws no progress bar here."""
        if not isinstance(model, BergModel):
            raise TypeError("'model' must be what get_encoding_model() returned")
        if not isinstance(stimulus, np.ndarray) or stimulus.ndim != 4:
            raise StimulusError("Stimulus must be a 4D numpy array (batch, channels, height, width)")
        try:
            images = check_images(stimulus, square=bool(model.group.fmri))
        except (TypeError, ValueError) as exc:
            raise StimulusError(str(exc)) from None
        out = model.group.encode(images, batch_size=batch_size, square=bool(model.group.fmri))
        responses = tuple(out[m] for m in model.ids) if model.family.variant_is_part else out[model.ids[0]]
        if return_metadata:
            return responses, self.get_model_metadata(model.model_id, subject=model.subject, **model.kwargs)
        return responses

    def get_model_metadata(self, model_id: str, subject: Any = None, **kwargs: Any) -> dict:
        """The model's metadata dict, as BERG returns it (the whole file)."""
        ids = self._model_ids(model_id, subject, kwargs)
        try:
            return self.directory.metadata(ids[0])
        except (MissingFileError, ValueError) as exc:
            raise ModelLoadError(f"Failed to load metadata: {exc}") from exc
