"""NED's and BERG's on-disk layouts (ned-spec §1, berg-spec §1): where each file lives, what a
directory holds, and safe reads.

A :class:`NedDir` is a NED ``neural_encoding_dataset`` folder or a BERG
``brain-encoding-response-generator`` folder (both keep their models under ``encoding_models/``)
on any fsspec filesystem (a local path, ``s3://bucket/ned``, ``gs://...``). Its catalogue holds
every complete model it finds: NED's fwrf and EEG models (which BERG keeps in the same places) and
BERG's ViT-B/32 families. All file access goes through it, and all pickled files go through
:mod:`ned_ray.safeload`.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import fsspec

from . import safeload
from .errors import MissingFileError, ModelFileError
from .ids import FAMILIES, ROIS, SPLIT_ROIS, Family, ModelId, UnknownModelError, select
from .storage import cached_copy, file_identity, is_local, local_file_record, options_for

__all__ = ["NedDir", "open_ned", "ModelEntry", "DamagedModel", "MissingFileError", "FMRI_ROOT", "EEG_ROOT", "VIT_IN_NED_DIR"]

FMRI_ROOT = "encoding_models/modality-fmri/train_dataset-nsd/model-fwrf"
EEG_ROOT = "encoding_models/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32"
# ned-ray's own, optional place for the ViT-B/32 backbone inside a NED directory (so a cluster can
# keep it in the same bucket). NED itself never reads it.
VIT_IN_NED_DIR = f"{EEG_ROOT}/backbone/vit_b_32.pth"

_FWRF_WEIGHTS = re.compile(r"^weights_sub-(\d{2})_roi-([A-Za-z0-9.\-]+?)(?:_split-([12]))?\.pt$")
_FWRF_METADATA = re.compile(r"^metadata_sub-(\d{2})_roi-([A-Za-z0-9.\-]+)\.npy$")
_EEG_REGRESSION = re.compile(r"^LinearRegression_param_sub-(\d{2})\.npy$")
_EEG_METADATA = re.compile(r"^metadata_sub-(\d{2})\.npy$")



def family_root(family: Family) -> str:
    """The folder of a family's files, relative to the directory."""
    return f"encoding_models/modality-{family.modality}/train_dataset-{family.train_dataset}/model-{family.model}"


def berg_files(mid: ModelId) -> tuple[str, str]:
    """(weights, metadata) of a BERG ViT-B/32 model, relative to the directory (berg-spec §1)."""
    family = mid.family
    root, files = family_root(family), family.berg_files
    weights = files.weights_name.format(s=mid.subject, v=mid.variant)
    meta = files.metadata_name.format(s=mid.subject)  # MEG's does not depend on the train split
    return f"{root}/encoding_models_weights/{weights}", f"{root}/metadata/{meta}"


def _published(mid: ModelId) -> bool:
    """Whether NED's or BERG's release has this model (ned-spec §4, berg-spec)."""
    family = mid.family
    return mid.subject in family.subjects and (family.variant is None or mid.variant in family.variants)


@dataclass(frozen=True)
class ModelEntry:
    """One model of the catalogue: its id, its on-disk format and the files it is read from."""

    id: ModelId
    format: str  # "ned" (NED 0.2 files) or "berg" (BERG's per-subject ViT-B/32 files)
    weights: tuple[str, ...]  # paths relative to the NED directory
    metadata: str


@dataclass(frozen=True)
class DamagedModel:
    """A model of which some files are in the directory and one (at least) is missing."""

    entry: ModelEntry  # what the model would be read from
    missing: str  # the first file missing, relative to the directory


@dataclass
class NedDir:
    """A NED directory on any fsspec filesystem."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None  # keep remote model files on this local disk after the first read

    def __post_init__(self) -> None:
        self.url = str(self.url)
        self.fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = root.rstrip("/") or "/"
        self._listings: dict[str, dict[str, dict]] = {}
        if not self.fs.isdir(self.root):
            raise MissingFileError(
                f"NED directory not found: '{self.url}'. Point it at the 'neural_encoding_dataset' folder "
                "(the one that contains 'encoding_models/'), or create demo models with "
                "`ned-ray make-demo-models DIR`."
            )

    # -- paths -------------------------------------------------------------------------------
    def path(self, relative: str) -> str:
        """Filesystem path of a file given relative to the NED directory."""
        return posixpath.join(self.root, relative)

    def uri(self, relative: str) -> str:
        """A URI of a file (for messages and provenance)."""
        return self.fs.unstrip_protocol(self.path(relative)) if self.fs.protocol not in ("file", ("file", "local")) else self.path(relative)

    @staticmethod
    def fwrf_weights(subject: int, roi: str) -> tuple[str, ...]:
        stem = f"{FMRI_ROOT}/encoding_models_weights/weights_sub-{subject:02d}_roi-{roi}"
        if roi in SPLIT_ROIS:
            return (f"{stem}_split-1.pt", f"{stem}_split-2.pt")
        return (f"{stem}.pt",)

    @staticmethod
    def fwrf_metadata(subject: int, roi: str) -> str:
        return f"{FMRI_ROOT}/metadata/metadata_sub-{subject:02d}_roi-{roi}.npy"

    EEG_SCALER = f"{EEG_ROOT}/encoding_models_weights/StandardScaler_param.npy"
    EEG_PCA = f"{EEG_ROOT}/encoding_models_weights/pca_param.npy"

    @staticmethod
    def eeg_regression(subject: int) -> str:
        return f"{EEG_ROOT}/encoding_models_weights/LinearRegression_param_sub-{subject:02d}.npy"

    @staticmethod
    def eeg_metadata(subject: int) -> str:
        return f"{EEG_ROOT}/metadata/metadata_sub-{subject:02d}.npy"

    @staticmethod
    def pregenerated(modality: str, imageset: str, subject: int, roi: str | None) -> tuple[str, str]:
        """(responses .h5, metadata .npy) of NED's pre-generated responses."""
        ds, model = ("nsd", "fwrf") if modality == "fmri" else ("things_eeg_2", "vit_b_32")
        folder = (
            f"pregenerated_insilico_neural_responses/modality-{modality}/train_dataset-{ds}/"
            f"model-{model}/imageset-{imageset}"
        )
        tag = f"sub-{subject:02d}" + (f"_roi-{roi}" if modality == "fmri" else "")
        return (
            f"{folder}/synthetic_neural_responses_{tag}.h5",
            f"{folder}/synthetic_neural_responses_metadata_{tag}.npy",
        )

    # -- reading -----------------------------------------------------------------------------
    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def require(self, relative: str) -> str:
        """The filesystem path of a required file, or a :class:`MissingFileError` naming it."""
        path = self.path(relative)
        if not self.fs.exists(path):
            raise MissingFileError(
                f"missing NED file: expected '{self.uri(relative)}'. Download it from the NED release "
                "into that place, or check that --ned-dir points at the 'neural_encoding_dataset' folder."
            )
        return path

    @property
    def is_local(self) -> bool:
        return is_local(self.fs)

    def open(self, relative: str):
        """Open a file for reading: remote files through this node's cache when one is set (fetched
        once per node, never read half-written: :func:`~ned_ray.storage.cached_copy`)."""
        path = self.require(relative)
        if self.cache_dir and not self.is_local:
            return open(cached_copy(self.fs, path, self.cache_dir), "rb")
        return self.fs.open(path, "rb")

    def info(self, relative: str) -> dict:
        """The store's listing entry of a file (size, ETag/mtime), from one listing per folder."""
        folder, name = posixpath.split(self.path(relative))
        if folder not in self._listings:
            entries = self.fs.ls(folder, detail=True) if self.fs.isdir(folder) else []
            self._listings[folder] = {posixpath.basename(e["name"].rstrip("/")): e for e in entries}
        entry = self._listings[folder].get(name)
        if entry is None:
            self.require(relative)  # the missing-file message
            entry = self.fs.info(self.path(relative))
        return entry

    def size(self, relative: str) -> int:
        return int(self.info(relative).get("size") or 0)

    def file_record(self, relative: str, known: list[dict] | None = None) -> dict:
        """Provenance of a file without downloading it: sha256 of local files (hashed once per file
        version, see :func:`~ned_ray.storage.local_file_record`); the store's identity (size +
        ETag/generation/mtime) of remote ones, which the actors' caches are keyed by too."""
        if self.is_local:
            return local_file_record(self.require(relative), known)
        return {"file": self.uri(relative), **file_identity(self.info(relative))}

    def load_npy(self, relative: str) -> Any:
        """A NED ``.npy`` dict, through the restricted unpickler."""
        with self.open(relative) as fh:
            return safeload.load_npy_dict(fh, source=self.uri(relative))

    def load_checkpoint(self, relative: str) -> Any:
        """A NED ``.pt`` checkpoint, with ``weights_only=True`` and NED's numpy allow-list."""
        with self.open(relative) as fh:
            return safeload.load_torch_checkpoint(fh, source=self.uri(relative))

    def _listdir(self, relative: str) -> list[str]:
        path = self.path(relative)
        if not self.fs.isdir(path):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False))

    # -- catalogue ---------------------------------------------------------------------------
    @cached_property
    def _scan(self) -> tuple[dict[ModelId, ModelEntry], dict[ModelId, "DamagedModel"]]:
        """(complete models, damaged models -> the first file missing), from one listing per folder."""
        found: list[tuple[ModelId, list[ModelEntry]]] = []  # each model: its possible entries, preferred first
        present: set[str] = set()  # relative paths of the files listed

        def listed(folder: str) -> list[str]:
            names = self._listdir(folder)
            present.update(f"{folder}/{n}" for n in names)
            return names

        weights_dir, meta_dir = f"{FMRI_ROOT}/encoding_models_weights", f"{FMRI_ROOT}/metadata"
        rois: set[tuple[int, str]] = set()
        for name in listed(weights_dir):
            m = _FWRF_WEIGHTS.match(name)
            if m and (m.group(3) is not None) == (m.group(2) in SPLIT_ROIS):
                rois.add((int(m.group(1)), m.group(2)))
        for name in listed(meta_dir):
            m = _FWRF_METADATA.match(name)
            if m and m.group(2) in ROIS:
                rois.add((int(m.group(1)), m.group(2)))
        for subject, roi in sorted(rois):
            mid = ModelId("fmri", "nsd", "fwrf", subject, roi)
            found.append((mid, [ModelEntry(mid, "ned", self.fwrf_weights(subject, roi), self.fwrf_metadata(subject, roi))]))

        subjects = {int(m.group(1)) for name in listed(f"{EEG_ROOT}/encoding_models_weights") + listed(f"{EEG_ROOT}/metadata")
                    for m in (_EEG_REGRESSION.match(name) or _EEG_METADATA.match(name),) if m}
        for subject in sorted(subjects):  # NED's EEG files; BERG's, in the same folders, come below
            mid = ModelId("eeg", "things_eeg_2", "vit_b_32", subject)
            found.append((mid, [ModelEntry(mid, "ned", (self.EEG_SCALER, self.EEG_PCA, self.eeg_regression(subject)),
                                           self.eeg_metadata(subject))]))

        for family in (f for f in FAMILIES.values() if f.berg_files is not None):
            root, files = family_root(family), family.berg_files
            per_file = family.variant == "split"  # a weight file per variant (MEG), else one per subject
            models: dict[tuple, None] = {}
            for name in listed(f"{root}/encoding_models_weights"):
                m = files.weights.match(name)
                if m:
                    subject = int(m.group(1)) if m.group(1).isdigit() else m.group(1)
                    variants = (m.group(2),) if per_file else family.variants or (None,)
                    models.update({(subject, v): None for v in variants})
            for name in listed(f"{root}/metadata"):
                m = files.metadata.match(name)
                if m:
                    subject = int(m.group(1)) if m.group(1).isdigit() else m.group(1)
                    variants = family.variants[:1] if per_file else family.variants or (None,)
                    if not per_file or not any(s == subject for s, _ in models):  # MEG: splits come from weights
                        models.update({(subject, v): None for v in variants})
            for subject, variant in models:
                mid = ModelId(family.modality, family.train_dataset, family.model, subject, variant)
                weights, meta = berg_files(mid)
                found.append((mid, [ModelEntry(mid, "berg", (weights,), meta)]))

        choices: dict[ModelId, list[ModelEntry]] = {}  # NED's files first: they win when both formats are whole
        for mid, options in found:
            choices.setdefault(mid, []).extend(options)
        entries: dict[ModelId, ModelEntry] = {}
        damaged: dict[ModelId, DamagedModel] = {}
        for mid, options in choices.items():
            whole = next((e for e in options if all(f in present for f in (*e.weights, e.metadata))), None)
            if whole is not None:
                entries[mid] = whole
            else:
                first = options[0]
                damaged[mid] = DamagedModel(first, next(f for f in (*first.weights, first.metadata) if f not in present))
        return dict(sorted(entries.items())), dict(sorted(damaged.items()))

    @property
    def catalogue(self) -> dict[ModelId, ModelEntry]:
        """Every complete model the directory holds (weights and metadata present)."""
        return self._scan[0]

    @property
    def damaged(self) -> dict[ModelId, "DamagedModel"]:
        """Models of which some files are here but not all: the file missing, per model."""
        return self._scan[1]

    def damaged_message(self, mid: ModelId) -> str:
        """One line: which file of a damaged model is missing, where, and what to do."""
        damage = self.damaged[mid]
        folder, name = posixpath.split(damage.missing)
        release = "NED" if damage.entry.format == "ned" else "BERG"
        return (f"model '{mid}' is damaged: {name} is missing from '{self.uri(folder)}'; download it from the "
                f"{release} release into that folder, or leave the model out of --models")

    def select(self, spec: str) -> list[ModelId]:
        """The models ``spec`` names (ids, globs, BERG ids or ``all``: :func:`~ned_ray.ids.select`),
        refusing in one line a damaged one (naming its missing file)."""
        chosen = select([*self.catalogue, *self.damaged], spec)
        for mid in chosen:
            if mid in self.damaged:
                raise MissingFileError(self.damaged_message(mid))
        return chosen

    def entry(self, model_id: ModelId | str) -> ModelEntry:
        """The catalogue entry of one model; an unknown id lists the valid ones."""
        mid = ModelId.parse(model_id) if isinstance(model_id, str) else model_id
        if mid in self.catalogue:
            return self.catalogue[mid]
        if mid in self.damaged:
            raise MissingFileError(self.damaged_message(mid))
        listing = "\n  ".join(map(str, self.catalogue)) or "(none)"
        if _published(mid):  # a real NED/BERG model whose files are not (all) here
            key = mid.family.key
            expected = (self.fwrf_weights(mid.subject, mid.roi) if key == "fwrf" else
                        (self.eeg_regression(mid.subject),) if key == "eeg" else berg_files(mid))
            missing = [self.uri(rel) for rel in expected if not self.exists(rel)] or [self.uri(expected[0])]
            raise MissingFileError(
                f"model '{mid}' is not in the directory '{self.url}': expected '{missing[0]}' (and its "
                f"metadata). Models this directory holds:\n  {listing}"
            )
        raise UnknownModelError(f"model '{mid}' is not a NED or BERG model. Valid model ids in '{self.url}':\n  {listing}")

    def metadata(self, model_id: ModelId | str) -> dict:
        """The metadata dict of a model (ned-spec §1, berg-spec §4-§8), checked for the fields ned-ray uses."""
        mid = ModelId.parse(model_id) if isinstance(model_id, str) else model_id
        entry = self.entry(mid)
        try:
            meta = self.load_npy(entry.metadata)
        except ValueError as exc:
            raise ModelFileError(str(exc).splitlines()[0]) from None
        problem = _metadata_problem(mid, meta, entry.format)
        relative = entry.metadata
        if problem:
            raise ModelFileError(f"{self.uri(relative)}: not NED metadata for {mid}: {problem}")
        return meta


def _metadata_problem(mid: ModelId, meta: Any, format: str = "ned") -> str:
    """What is wrong with a metadata object, or ''."""
    import numpy as np

    if not isinstance(meta, dict):
        shape = getattr(meta, "shape", None)
        return f"expected a dict, got {type(meta).__name__}" + (f" of shape {shape}" if shape is not None else "")
    if format == "berg":  # the fields each family reads are checked when its head is read
        section = mid.family.metadata_section
        return "" if isinstance(meta.get(section), dict) else f"no '{section}' dict"
    section = meta.get(mid.modality)
    if not isinstance(section, dict):
        return f"no '{mid.modality}' dict"
    if mid.modality == "fmri":
        ncsnr = section.get("ncsnr")
        if ncsnr is None or np.ndim(ncsnr) != 1 or len(ncsnr) == 0:
            return "'fmri/ncsnr' must be a non-empty 1-D array (one value per voxel)"
    else:
        for key in ("ch_names", "times"):
            if key not in section or len(section[key]) == 0:
                return f"'eeg/{key}' is missing or empty"
    accuracy = meta.get("encoding_models", {}).get("encoding_accuracy") if isinstance(meta.get("encoding_models"), dict) \
        else None
    if not isinstance(accuracy, dict):
        return "no 'encoding_models/encoding_accuracy' dict"
    return ""


def open_ned(uri: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None) -> NedDir:
    """A NED (or BERG) directory with a job's storage options (those of its protocol) and, for the
    encoders, the per-node model cache; the driver reads listings and metadata directly."""
    return NedDir(uri, options_for(uri, storage_options), cache_dir)
