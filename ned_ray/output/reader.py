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

from ..errors import IncompleteOutputError, MissingDependencyError, ModelNotInOutputError, OutputError
from ..ids import ModelId
from ..storage import filesystem
from . import layout

__all__ = ["open_output", "Output", "IncompleteOutputError"]


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
            raise OutputError(f"{self.uri}: model {key} was written without Parquet parts (--format npy); use responses()")
        tables = [pq.read_table(io.BytesIO(data)) for data in fs.cat(paths).values()]
        return pa.concat_tables(tables).sort_by("image_index")

    def shape(self, model_id: str | ModelId) -> tuple[int, ...]:
        """Per-image response shape, from the model's metadata."""
        return self._shape(self._key(model_id), self.metadata(model_id))

    @staticmethod
    def _shape(key: str, meta: dict[str, Any]) -> tuple[int, ...]:
        if "response_shape" in meta["json"]:  # after any selection
            return tuple(meta["json"]["response_shape"])
        if ModelId.parse(key).family.key == "fwrf":  # outputs written before response_shape was recorded
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
            values = flat.values.to_numpy(zero_copy_only=False).reshape(len(table), flat.type.list_size)
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
        document = json.loads(fs.cat_file(posixpath.join(root, layout.metadata_files(key)[0])))
        with np.load(io.BytesIO(fs.cat_file(posixpath.join(root, layout.metadata_files(key)[1])))) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return {"json": document, "npz": arrays}

    def coords(self, model_id: str | ModelId) -> dict[str, np.ndarray]:
        """The response axes' labels after any selection: ``voxel`` (indexes into NED's voxel order)
        for fwrf and THINGS-fMRI; ``repetition`` (1-based), ``channel`` (names) and ``time`` (seconds)
        for EEG; ``vertex`` (fsaverage indexes of the hemisphere); ``sensor`` (names) and ``time``
        for MEG; ``electrode`` (indexes) and ``time`` for the TVSD Utah arrays."""
        key = self._key(model_id)
        meta = self.metadata(key)
        shape = self._shape(key, meta)
        npz, ned = meta["npz"], meta["json"]["ned_metadata"]
        dims = meta["json"].get("dims")
        if dims and all(f"coords/{d}" in npz for d in dims):
            return {d: npz[f"coords/{d}"] for d in dims}
        # outputs written before ned-ray recorded dims and coords (NED's models only)
        if ModelId.parse(key).family.key == "fwrf":
            return {"voxel": npz.get("selection/voxels", np.arange(shape[0]))}
        names = np.asarray(ned["eeg"]["ch_names"])
        times = npz["eeg/times"] if "eeg/times" in npz else np.asarray(ned["eeg"]["times"], dtype=np.float64)
        return {"repetition": np.arange(1, shape[0] + 1),
                "channel": names[npz["selection/channels"]] if "selection/channels" in npz else names,
                "time": times[npz["selection/times"]] if "selection/times" in npz else times}

    def to_xarray(self, model_id: str | ModelId):
        """One model's responses as an ``xarray.DataArray`` with named dimensions and coordinates:
        (image, voxel) or (image, repetition, channel, time); ``image`` is labelled by image_id, with
        image_index as a second coordinate. Needs xarray (``pip install 'ned-ray[analysis]'``)."""
        try:
            import xarray as xr
        except ImportError:
            raise MissingDependencyError("Output.to_xarray needs xarray: pip install 'ned-ray[analysis]'") from None
        key = self._key(model_id)
        index, values = self.responses(key)
        ids = self.images().column("image_id").to_numpy(zero_copy_only=False)
        coords = self.coords(key)
        family = ModelId.parse(key).family
        data = xr.DataArray(values, dims=("image", *coords), name=key,
                            coords={"image": ids[index], "image_index": ("image", index), **coords},
                            attrs={"model_id": key, "family": family.key,
                                   "units": f"{family.title} responses (as the model was trained: z-scored)"})
        return data

    def to_nifti(self, model_id: str | ModelId, path: str, images: slice | list[int] | None = None,
                 fill: float = 0.0) -> str:
        """Write fMRI responses as a 4-D NIfTI volume (x, y, z, image) in the subject's native space:
        voxel v goes to the v-th True entry (C order) of NED's ``roi_mask_volume``, with NED's
        ``fmri_affine``; everything else is ``fill``. ``images``: which rows (default all). Needs nibabel."""
        try:
            import nibabel as nib
        except ImportError:
            raise MissingDependencyError("Output.to_nifti needs nibabel: pip install 'ned-ray[analysis]'") from None
        key = self._key(model_id)
        meta = self.metadata(key)
        if "fmri/roi_mask_volume" not in meta["npz"]:
            raise OutputError(f"{key} is not an NSD fwrf model; only their responses map to NED's brain volume")
        mask, affine = meta["npz"]["fmri/roi_mask_volume"].astype(bool), meta["npz"]["fmri/fmri_affine"]
        _, values = self.responses(key)
        values = values if images is None else values[images]
        full = np.full((len(values), int(mask.sum())), fill, dtype=np.float32)
        full[:, self.coords(key)["voxel"]] = values
        volume = np.full((*mask.shape, len(values)), fill, dtype=np.float32)
        volume[mask] = full.T  # boolean indexing walks the mask in C order, as NED's vol[mask] = response
        nib.save(nib.Nifti1Image(volume, np.asarray(affine, dtype=np.float64)), path)
        return path

    def _key(self, model_id: str | ModelId) -> str:
        key = str(model_id)
        if key not in self.manifest["models"]:
            raise ModelNotInOutputError(f"{self.uri} has no model '{key}'; it has: {', '.join(self.models)}")
        return key


def open_output(uri: str, storage_options: dict[str, Any] | None = None) -> Output:
    """Open a finished output folder (local or fsspec URL)."""
    fs, root = filesystem(uri, storage_options)
    path = posixpath.join(root, layout.MANIFEST)
    if not fs.exists(path):
        raise IncompleteOutputError(f"'{uri}' is not a finished ned-ray output (no _manifest.json): the job did not "
                                    "complete; rerun the same command to resume it")
    return Output(uri, json.loads(fs.cat_file(path)), storage_options or {})
