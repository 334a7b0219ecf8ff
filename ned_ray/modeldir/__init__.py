"""A model directory: NED's ``neural_encoding_dataset`` folder or BERG's
``brain-encoding-response-generator`` folder (both keep their models under ``encoding_models/``), on
any fsspec filesystem.

* :mod:`.paths`: where each of NED's and BERG's files lives (names only);
* :mod:`.files`: reading files (fsspec, the per-node cache, provenance, safe loads);
* :mod:`.catalogue`: what the directory holds (complete and damaged models), metadata checks;
* :class:`NedDir` (here): the three together, as the rest of ned-ray uses them.
"""

from __future__ import annotations

import posixpath
from functools import cached_property
from typing import Any

from ..errors import MissingFileError, ModelFileError
from ..ids import ModelId, UnknownModelError, select
from ..storage import options_for
from . import paths
from .catalogue import DamagedModel, ModelEntry, metadata_problem, scan
from .files import ModelFiles
from .paths import EEG_ROOT, FMRI_ROOT, VIT_IN_NED_DIR, berg_files, family_root

__all__ = ["NedDir", "open_ned", "ModelEntry", "DamagedModel", "MissingFileError", "FMRI_ROOT", "EEG_ROOT",
           "VIT_IN_NED_DIR", "berg_files", "family_root"]


class NedDir(ModelFiles):
    """A NED or BERG directory: its files, its catalogue of models and their checked metadata."""

    fwrf_weights = staticmethod(paths.fwrf_weights)
    fwrf_metadata = staticmethod(paths.fwrf_metadata)
    eeg_regression = staticmethod(paths.eeg_regression)
    eeg_metadata = staticmethod(paths.eeg_metadata)
    pregenerated = staticmethod(paths.pregenerated)
    EEG_SCALER = paths.EEG_SCALER
    EEG_PCA = paths.EEG_PCA

    @cached_property
    def _scan(self) -> tuple[dict[ModelId, ModelEntry], dict[ModelId, DamagedModel]]:
        return scan(self)

    @property
    def catalogue(self) -> dict[ModelId, ModelEntry]:
        """Every complete model the directory holds (weights and metadata present)."""
        return self._scan[0]

    @property
    def damaged(self) -> dict[ModelId, DamagedModel]:
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
        if paths.published(mid):  # a real NED/BERG model whose files are not (all) here
            expected = paths.expected(mid)
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
        problem = metadata_problem(mid, meta, entry.format)
        if problem:
            raise ModelFileError(f"{self.uri(entry.metadata)}: not NED metadata for {mid}: {problem}")
        return meta


def open_ned(uri: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None) -> NedDir:
    """A NED (or BERG) directory with a job's storage options (those of its protocol) and, for the
    encoders, the per-node model cache; the driver reads listings and metadata directly."""
    return NedDir(uri, options_for(uri, storage_options), cache_dir)
