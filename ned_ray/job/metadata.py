"""Per-model ``metadata.json`` + ``metadata.npz``: NED's metadata dict plus provenance.

NED's nested metadata dict is stored with its arrays in ``metadata.npz`` (keys are the dict paths,
e.g. ``fmri/ncsnr``) and everything else in ``metadata.json``, where each array appears as
``{"npz": "fmri/ncsnr", "shape": [...], "dtype": "float64"}``. Both read without ned-ray.
"""

from __future__ import annotations

import io
import json
import posixpath
from typing import Any

import numpy as np

from .. import __version__
from ..ids import ModelId
from ..models.vit_eeg import vit_filesystem
from ..models.vit_eeg import find_vit_weights
from ..nedfmt import NedDir
from ..selection import Resolved
from ..storage import file_identity, is_local, local_file_record
from .config import EncodeConfig
from .commit import write_bytes

__all__ = ["write_model_metadata", "split_arrays", "ned_shape", "PREPROCESSING"]

PREPROCESSING = {
    "fmri": "RGB uint8, center-crop to square; torchvision Resize((227,227)) bilinear antialias, rounded to uint8; /255; "
            "minus the checkpoint's stim_mean (split ROIs: the second checkpoint's, as NED)",
    "eeg": "RGB uint8, center-crop to square; torchvision resize shorter side 256 bilinear antialias, rounded to uint8; "
           "center-crop 224; /255; ImageNet mean/std normalisation (ViT_B_32_Weights.IMAGENET1K_V1.transforms())",
}
RESPONSE_LAYOUT = {"fmri": "(voxel,) in NED's voxel order (the roi_mask_volume's True entries, C order)",
                   "eeg": "(repetition, channel, time) row-major: 4 x 63 x 140, flattened as rep*8820 + ch*140 + t"}


def split_arrays(tree: Any, prefix: str = "") -> tuple[Any, dict[str, np.ndarray]]:
    """(JSON-able tree, {path: array}) for a nested metadata dict."""
    arrays: dict[str, np.ndarray] = {}
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out[str(key)], sub = split_arrays(value, f"{prefix}{key}/")
            arrays.update(sub)
        return out, arrays
    if isinstance(tree, np.ndarray):
        if tree.dtype.hasobject:
            return tree.tolist(), arrays
        key = prefix.rstrip("/")
        arrays[key] = tree
        return {"npz": key, "shape": list(tree.shape), "dtype": str(tree.dtype)}, arrays
    if isinstance(tree, (list, tuple)):
        return [split_arrays(v, prefix)[0] for v in tree], arrays
    if isinstance(tree, np.generic):
        return tree.item(), arrays
    return tree, arrays


def _vit_record(location: str, ned: NedDir, known: list[dict[str, Any]] | None) -> dict[str, Any]:
    fs, path = vit_filesystem(location, ned)
    if is_local(fs):
        return {**local_file_record(path, [{**k, "file": path} for k in known or [] if k.get("file") == location]),
                "file": location}
    return {"file": location, **file_identity(fs.info(path))}


def model_files(ned: NedDir, mid: ModelId, config: EncodeConfig, cache: dict[str, dict[str, Any]] | None = None,
                known: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every file a model is computed from (the ViT backbone too, for EEG), identified without
    downloading anything: sha256 of local files (hashed once per file version: ``known`` records of
    an output, or the per-user hash cache), the store's size + ETag/generation of remote ones.

    ``cache`` (file -> record) lets models that share files (EEG's scaler, PCA, ViT) record them once.
    """
    cache = {} if cache is None else cache
    entry = ned.entry(mid)
    for rel in (*entry.weights, entry.metadata):
        if ned.uri(rel) not in cache:
            cache[ned.uri(rel)] = ned.file_record(rel, known)
    files = [cache[ned.uri(rel)] for rel in (*entry.weights, entry.metadata)]
    if mid.modality == "eeg":
        vit = find_vit_weights(config.vit_weights, ned)
        if vit not in cache:
            cache[vit] = _vit_record(vit, ned, known)
        files.append(cache[vit])
    return files


def recorded_files(fs, root: str, mid: ModelId) -> list[dict[str, Any]] | None:
    """The files an existing output recorded for a model, or None."""
    path = posixpath.join(root, str(mid), "metadata.json")
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))["provenance"]["files"]


def ned_shape(mid: ModelId, metadata: dict) -> tuple[int, ...]:
    """A model's full per-image response shape, from its NED metadata: (V,) or (reps, channels, times)."""
    if mid.modality == "fmri":
        return (len(metadata["fmri"]["ncsnr"]),)
    return tuple(np.shape(metadata["encoding_models"]["encoding_accuracy"]["correlation_single_repetitions"]))


def selection_record(mid: ModelId, metadata: dict, resolved: Resolved, asked: dict[str, Any]) -> tuple[dict, dict]:
    """(JSON part, npz arrays) describing what a selection kept, in NED's terms."""
    record: dict[str, Any] = {"asked": asked}
    arrays = {f"selection/{k}": v for k, v in resolved.to_arrays().items()}
    if mid.modality == "fmri":
        record["voxels"] = None if resolved.voxels is None else {"npz": "selection/voxels", "count": len(resolved.voxels)}
    else:
        names, times = list(metadata["eeg"]["ch_names"]), np.asarray(metadata["eeg"]["times"])
        record["channels"] = [str(names[i]) for i in resolved.channels] if resolved.channels is not None else None
        record["times"] = times[resolved.times].tolist() if resolved.times is not None else None
    return record, arrays


def write_model_metadata(fs, root: str, mid: ModelId, metadata: dict, config: EncodeConfig,
                         files: list[dict[str, Any]], resolved: Resolved, format_name: str) -> None:
    """Write ``OUT/<model_id>/metadata.json`` and ``metadata.npz`` (same content on a rerun)."""
    tree, arrays = split_arrays(metadata)
    selection, selected = selection_record(mid, metadata, resolved, config.selection().to_json())
    arrays.update(selected)
    document = {
        "model_id": str(mid),
        "response_shape": list(resolved.shape(ned_shape(mid, metadata))),
        "selection": selection,
        "ned_metadata": tree,
        "provenance": {
            "ned_ray_version": __version__,
            "format": format_name,
            "files": files,
            "preprocessing": PREPROCESSING[mid.modality],
            "response_layout": RESPONSE_LAYOUT[mid.modality],
            "response_dtype": "float32",
            "job_options": config.to_json(),
        },
    }
    folder = posixpath.join(root, str(mid))
    write_bytes(fs, posixpath.join(folder, "metadata.json"), json.dumps(document, indent=2).encode())
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(fs, posixpath.join(folder, "metadata.npz"), buffer.getvalue())
