"""Reading a finished output: ``open_output(OUT)`` -> responses per model, in ``image_index`` order.

Only parts listed in ``_manifest.json`` are read, so a half-written output is never mistaken for a
complete one (opening it raises :class:`IncompleteOutputError`).
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .ids import ModelId
from .storage import filesystem

__all__ = ["open_output", "Output", "IncompleteOutputError"]


class IncompleteOutputError(FileNotFoundError):
    """The folder has no ``_manifest.json``: the job has not finished (rerun it to resume)."""


@dataclass
class Output:
    """A finished ned-ray output folder."""

    uri: str
    manifest: dict[str, Any]
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(self.manifest["models"])

    def _fs(self):
        return filesystem(self.uri, self.storage_options)

    def table(self, model_id: str | ModelId) -> pa.Table:
        """Arrow table (image_index, image_id, response) of one model, sorted by image_index."""
        key = self._key(model_id)
        fs, root = self._fs()
        paths = [posixpath.join(root, p) for p in self.manifest["models"][key]["parts"].get("parquet", [])]
        if not paths:
            raise ValueError(f"{self.uri}: model {key} was written without Parquet parts (--format npy); use responses()")
        tables = [pq.read_table(io.BytesIO(data)) for data in fs.cat(paths).values()]
        return pa.concat_tables(tables).sort_by("image_index")

    def shape(self, model_id: str | ModelId) -> tuple[int, ...]:
        """Per-image response shape, from the model's metadata."""
        meta = self.metadata(model_id)
        if ModelId.parse(self._key(model_id)).modality == "fmri":
            return (int(meta["npz"]["fmri/ncsnr"].shape[0]),)
        enc = meta["json"]["ned_metadata"]["encoding_models"]["encoding_accuracy"]["correlation_single_repetitions"]
        return tuple(enc["shape"])

    def responses(self, model_id: str | ModelId) -> tuple[np.ndarray, np.ndarray]:
        """(image_index (n,), float32 responses (n, V) or (n, 4, 63, 140)), sorted by image_index."""
        key = self._key(model_id)
        parts = self.manifest["models"][key]["parts"]
        fs, root = self._fs()
        if "npy" in parts and "parquet" not in parts:
            data = fs.cat([posixpath.join(root, p) for p in parts["npy"]])
            idx = fs.cat([posixpath.join(root, p[:-4] + ".image_index.npy") for p in parts["npy"]])
            values = np.concatenate([np.load(io.BytesIO(data[k])) for k in sorted(data)])
            index = np.concatenate([np.load(io.BytesIO(idx[k])) for k in sorted(idx)])
        else:
            table = self.table(key)
            index = table.column("image_index").to_numpy()
            flat = table.column("response").combine_chunks()
            values = flat.values.to_numpy(zero_copy_only=False).reshape(len(table), -1)
        order = np.argsort(index, kind="stable")
        return index[order], values[order].reshape(len(index), *self.shape(key))

    def images(self) -> pa.Table:
        """Every input image: image_index, image_id, status, error, width, height."""
        fs, root = self._fs()
        return pq.read_table(io.BytesIO(fs.cat_file(posixpath.join(root, self.manifest["images"]["file"]))))

    def metadata(self, model_id: str | ModelId) -> dict[str, Any]:
        """{'json': metadata.json as a dict, 'npz': {path: array}} of one model."""
        key = self._key(model_id)
        fs, root = self._fs()
        document = json.loads(fs.cat_file(posixpath.join(root, key, "metadata.json")))
        with np.load(io.BytesIO(fs.cat_file(posixpath.join(root, key, "metadata.npz")))) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return {"json": document, "npz": arrays}

    def _key(self, model_id: str | ModelId) -> str:
        key = str(model_id)
        if key not in self.manifest["models"]:
            raise KeyError(f"{self.uri} has no model '{key}'; it has: {', '.join(self.models)}")
        return key


def open_output(uri: str, storage_options: dict[str, Any] | None = None) -> Output:
    """Open a finished output folder (local or fsspec URL)."""
    fs, root = filesystem(uri, storage_options)
    path = posixpath.join(root, "_manifest.json")
    if not fs.exists(path):
        raise IncompleteOutputError(f"'{uri}' is not a finished ned-ray output (no _manifest.json): the job did not "
                                    "complete; rerun the same command to resume it")
    return Output(uri, json.loads(fs.cat_file(path)), storage_options or {})
