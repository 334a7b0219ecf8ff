"""Reading a model directory's files on any fsspec filesystem: paths and URIs, existence with
messages that name the file, one listing per folder, the per-node cache of remote files, provenance
records, and safe loads (every pickled file through :mod:`ned_ray.safeload`)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec

from .. import safeload
from ..errors import MissingFileError
from ..storage import cached_copy, file_identity, is_local, local_file_record

__all__ = ["ModelFiles"]


@dataclass
class ModelFiles:
    """The files of a directory at ``url`` (a local path, ``s3://bucket/ned``, ``gs://...``), named
    relative to it."""

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

    def path(self, relative: str) -> str:
        """Filesystem path of a file given relative to the directory."""
        return posixpath.join(self.root, relative)

    def uri(self, relative: str) -> str:
        """A URI of a file (for messages and provenance)."""
        return self.fs.unstrip_protocol(self.path(relative)) if not self.is_local else self.path(relative)

    @property
    def is_local(self) -> bool:
        return is_local(self.fs)

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

    def open(self, relative: str):
        """Open a file for reading: remote files through this node's cache when one is set (fetched
        once per node, never read half-written: :func:`~ned_ray.storage.cached_copy`)."""
        path = self.require(relative)
        if self.cache_dir and not self.is_local:
            return open(cached_copy(self.fs, path, self.cache_dir), "rb")
        return self.fs.open(path, "rb")

    def listdir(self, relative: str) -> list[str]:
        """The names in a folder, sorted ([] when it does not exist)."""
        path = self.path(relative)
        if not self.fs.isdir(path):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False))

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
