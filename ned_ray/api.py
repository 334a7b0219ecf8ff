"""The NED-compatible API: ``NED(ned_dir).get_encoding_model(...)`` and ``.encode(...)``.

Same method names, argument names, defaults and error messages as NED 0.2.3 (ned-spec §4, §5), and
the same numbers, computed by the same model code as the Ray job. Where NED fails silently, this API
raises instead: non-uint8 or list images, empty batches, values outside 0-255, non-square images,
``True`` as a subject. Differences from NED are listed in docs/for-ned-users.md.
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from .ids import MODALITIES, MODELS, ROIS, SUBJECTS, TRAIN_DATASETS, ModelId
from .modeldir import NedDir
from .models.group import ModelGroup, resolve_device

__all__ = ["NED", "IMAGESETS"]

IMAGESETS = ("nsd", "imagenet_val", "things")


def _check_str(name: str, value: Any, allowed: list | tuple | None = None) -> None:
    if not isinstance(value, str):
        raise TypeError(f"'{name}' must be of type str!")
    if allowed is not None and value not in allowed:
        raise ValueError(f"'{name}' value must be one of the following: {list(allowed)}!")


def _check_subject(value: Any, allowed: tuple[int, ...]) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError("'subject' must be of type int!")
    if int(value) not in allowed:
        raise ValueError(f"'subject' value must be one of the following: {list(allowed)}!")
    return int(value)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"'{name}' must be of type bool!")


class DirectoryFacade:
    """What NED's and BERG's facades share: a model directory opened on first use (their constructors
    only store the path), its storage options, and the ViT-B/32 weight file the user names."""

    def __init__(self, path: str | os.PathLike, vit_weights: str | None = None,
                 storage_options: dict | None = None) -> None:
        self._path = str(path)
        self.vit_weights = vit_weights
        self._storage_options = storage_options or {}
        self._dir: NedDir | None = None

    @property
    def directory(self) -> NedDir:
        """The :class:`NedDir`, opened on first use."""
        if self._dir is None:
            self._dir = NedDir(self._path, self._storage_options)
        return self._dir


class NED(DirectoryFacade):
    """A NED directory (local path or fsspec URL such as ``s3://bucket/neural_encoding_dataset``).

    ``vit_weights`` optionally names the ViT-B/32 weight file for the EEG models (otherwise see
    :func:`ned_ray.models.vit_eeg.find_vit_weights`); ned-ray never downloads it by itself.
    """

    def __init__(self, ned_dir: str | os.PathLike, vit_weights: str | None = None,
                 storage_options: dict | None = None) -> None:
        super().__init__(ned_dir, vit_weights, storage_options)
        self.ned_dir = self._path

    # -- browsing (NED's published catalogue) --------------------------------------------------
    def which_modalities(self) -> list[str]:
        return list(MODALITIES)

    def which_train_datasets(self, modality: str) -> list[str]:
        _check_str("modality", modality, MODALITIES)
        return list(TRAIN_DATASETS[modality])

    def _check_dataset(self, modality: str, train_dataset: str) -> None:
        _check_str("modality", modality, MODALITIES)
        if not isinstance(train_dataset, str):
            raise TypeError("'train_dataset' must be of type str!")
        if train_dataset not in TRAIN_DATASETS[modality]:
            raise ValueError(f"For '{modality}' modality 'train_dataset' must be one of the following: "
                             f"{list(TRAIN_DATASETS[modality])}")

    def which_models(self, modality: str, train_dataset: str) -> list[str]:
        self._check_dataset(modality, train_dataset)
        return list(MODELS[modality])

    def which_subjects(self, modality: str, train_dataset: str) -> list[int]:
        self._check_dataset(modality, train_dataset)
        return list(SUBJECTS[modality])

    def which_rois(self, train_dataset: str) -> list[str]:
        self._check_dataset("fmri", train_dataset)
        return list(ROIS)

    def models(self) -> list[str]:
        """ned-ray addition: the model ids this directory actually holds."""
        return [str(m) for m in self.directory.catalogue]

    # -- models --------------------------------------------------------------------------------
    def _model_id(self, modality: Any, train_dataset: Any, model: Any, subject: Any, roi: Any) -> ModelId:
        _check_str("modality", modality, MODALITIES)
        _check_str("train_dataset", train_dataset, TRAIN_DATASETS[modality])
        _check_str("model", model, MODELS[modality])
        subject = _check_subject(subject, SUBJECTS[modality])
        if modality == "fmri":
            _check_str("roi", roi, ROIS)
            return ModelId(modality, train_dataset, model, subject, roi)
        return ModelId(modality, train_dataset, model, subject)

    def get_encoding_model(self, modality: str, train_dataset: str, model: str, subject: int,
                           roi: str | None = None, device: str = "auto") -> dict:
        """Load one encoding model. Returns a dict with ``args`` (as NED) and the loaded ``model``."""
        mid = self._model_id(modality, train_dataset, model, subject, roi)
        _check_str("device", device, ["cpu", "cuda", "auto"])
        group = ModelGroup(self.directory, [mid], resolve_device(device), self.vit_weights)
        result: dict[str, Any] = {
            "args": {"modality": modality, "train_dataset": train_dataset, "model": model,
                     "subject": int(subject), "roi": roi},
            "model_id": mid,
            "model": group,
            "device": str(group.device),
        }
        if modality == "fmri":
            result.update(nnv={mid.subject: group.fmri[mid].n_voxels}, resize_px=227)
        else:
            eeg = self.directory.load_npy(self.directory.entry(mid).metadata)["eeg"]
            result.update(ch_names=[str(c) for c in eeg["ch_names"]], times=np.asarray(eeg["times"]))
        return result

    def encode(self, encoding_model: dict, images: np.ndarray, return_metadata: bool = True,
               device: str = "auto") -> np.ndarray | tuple[np.ndarray, dict]:
        """float32 responses (N, V) for fMRI or (N, 4, 63, 140) for EEG, plus metadata if asked."""
        if not isinstance(encoding_model, dict) or "args" not in encoding_model or "model" not in encoding_model:
            raise TypeError("'encoding_model' must be the dict returned by get_encoding_model()")
        args = encoding_model["args"]
        mid = self._model_id(args["modality"], args["train_dataset"], args["model"], args["subject"], args["roi"])
        _check_bool("return_metadata", return_metadata)
        _check_str("device", device, ["cpu", "cuda", "auto"])
        group: ModelGroup = encoding_model["model"]
        if device != "auto" and resolve_device(device).type != group.device.type:
            raise ValueError(f"encode(device='{device}') but the model was loaded on '{group.device}'; load it "
                             f"with get_encoding_model(..., device='{device}') or pass device='auto'")
        responses = group.encode(images)[mid]
        if return_metadata:
            return responses, self.get_metadata(*[args[k] for k in ("modality", "train_dataset", "model", "subject", "roi")])
        return responses

    # -- metadata and pre-generated responses --------------------------------------------------
    def get_metadata(self, modality: str, train_dataset: str, model: str, subject: int, roi: str | None = None) -> dict:
        """NED's metadata dict of one model (ned-spec §1)."""
        mid = self._model_id(modality, train_dataset, model, subject, roi)
        return self.directory.metadata(mid)

    def load_insilico_neural_responses(self, modality: str, train_dataset: str, model: str, imageset: str,
                                       subject: int, roi: str | None = None, return_metadata: bool = True):
        """NED's pre-generated responses: an open, lazy ``h5py.Dataset`` (plus metadata if asked)."""
        mid = self._model_id(modality, train_dataset, model, subject, roi)
        _check_str("imageset", imageset, IMAGESETS)
        _check_bool("return_metadata", return_metadata)
        h5_rel, meta_rel = self.directory.pregenerated(modality, imageset, mid.subject, mid.roi)
        handle = self.directory.open(h5_rel)
        dataset = h5py.File(handle, "r")["synthetic_neural_responses"]
        if return_metadata:
            return dataset, self.directory.load_npy(meta_rel)
        return dataset
