"""Per-model ``metadata.json`` + ``metadata.npz``: the model's NED/BERG metadata dict plus provenance.

The nested metadata dict is stored with its arrays in ``metadata.npz`` (keys are the dict paths,
e.g. ``fmri/ncsnr``) and everything else in ``metadata.json``, where each array appears as
``{"npz": "fmri/ncsnr", "shape": [...], "dtype": "float64"}``. The response axes are named in
``dims`` and labelled by ``coords/<dim>`` arrays in the npz (after any selection). Both files read
without ned-ray.
"""

from __future__ import annotations

import io
import json
import posixpath
from typing import Any

import numpy as np

from .. import __version__
from ..ids import ModelId
from ..modeldir import NedDir
from ..models.shared import backbone_file, backbone_record
from ..models.vit_eeg import vit_filesystem
from ..output import layout
from ..selection import Resolved, resolve_selection
from ..storage import file_identity, is_local, local_file_record, write_bytes
from .options import EncodeConfig

__all__ = ["write_model_metadata", "split_arrays", "ned_shape"]



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


def _backbone_record(location: str, ned: NedDir, known: list[dict[str, Any]] | None) -> dict[str, Any]:
    fs, path = vit_filesystem(location, ned)
    if is_local(fs):
        return {**local_file_record(path, [{**k, "file": path} for k in known or [] if k.get("file") == location]),
                "file": location}
    return {"file": location, **file_identity(fs.info(path))}


def model_files(ned: NedDir, mid: ModelId, config: EncodeConfig, cache: dict[str, dict[str, Any]] | None = None,
                known: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every file a model is computed from (its shared backbone's too), identified without
    downloading anything: sha256 of local files (hashed once per file version: ``known`` records of
    an output, or the per-user hash cache), the store's size + ETag/generation of remote ones.

    ``cache`` (file -> record) lets models that share files (EEG's scaler, PCA, ViT) record them once.
    A backbone without a file (BERG's untrained AlexNet) is recorded by how it is built and its digest.
    """
    cache = {} if cache is None else cache
    entry = ned.entry(mid)
    for rel in (*entry.weights, entry.metadata):
        if ned.uri(rel) not in cache:
            cache[ned.uri(rel)] = ned.file_record(rel, known)
    files = [cache[ned.uri(rel)] for rel in (*entry.weights, entry.metadata)]
    if mid.family.has_heads:
        backbone = mid.family.backbone
        location = backbone_file(backbone, ned, {"vit_b_32": config.vit_weights, "alexnet": config.alexnet_weights})
        key = location or backbone.name
        if key not in cache:
            cache[key] = _backbone_record(location, ned, known) if location else backbone_record(backbone)
        files.append(cache[key])
    return files


def recorded_files(fs, root: str, mid: ModelId) -> list[dict[str, Any]] | None:
    """The files an existing output recorded for a model, or None."""
    path = posixpath.join(root, layout.metadata_files(mid)[0])
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))["provenance"]["files"]


def ned_shape(mid: ModelId, metadata: dict) -> tuple[int, ...]:
    """A model's full per-image response shape, from its metadata: (V,) or (reps, channels, times)
    for NED's models, BERG's shapes for BERG's (berg-spec §4-§8); the family says how."""
    return mid.family.response_shape(metadata, mid.variant)


def berg_kept(mid: ModelId, metadata: dict, selection: dict[str, Any]) -> tuple[tuple[int, ...], dict[str, np.ndarray]]:
    """(per-image shape, kept indexes per axis) of a BERG model under a BERG selection."""
    rows = resolve_selection(mid.family.key, metadata, selection)
    part = mid.family.part(mid.variant)
    shape = rows.shapes[part]
    kept = {k: (v[part] if isinstance(v, dict) else v) for k, v in rows.kept.items()}
    if mid.family.repetitions:  # BERG's selections leave the repetitions whole
        shape = (ned_shape(mid, metadata)[0], *shape)
    return shape, kept


def coords(mid: ModelId, metadata: dict, shape: tuple[int, ...], resolved: Resolved,
           kept: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Labels of each response axis (``mid.family.dims``) after the selection: indexes into the
    model's full axis (voxels, vertices, electrodes), names (channels, sensors), seconds (times)."""
    return mid.family.labels(metadata, shape, resolved, kept or {})


def selection_record(mid: ModelId, metadata: dict, resolved: Resolved, asked: dict[str, Any]) -> tuple[dict, dict]:
    """(JSON part, npz arrays) describing what a selection kept, in NED's terms."""
    record: dict[str, Any] = {"asked": asked}
    arrays = {f"selection/{k}": v for k, v in resolved.to_arrays().items()}
    if "min_ncsnr" in mid.family.ned_options:
        record["voxels"] = None if resolved.voxels is None else {"npz": "selection/voxels", "count": len(resolved.voxels)}
    else:
        names, times = list(metadata["eeg"]["ch_names"]), np.asarray(metadata["eeg"]["times"])
        record["channels"] = [str(names[i]) for i in resolved.channels] if resolved.channels is not None else None
        record["times"] = times[resolved.times].tolist() if resolved.times is not None else None
    return record, arrays


def write_model_metadata(fs, root: str, mid: ModelId, metadata: dict, config: EncodeConfig,
                         files: list[dict[str, Any]], resolved: Resolved, format_name: str,
                         berg_selection: dict[str, Any] | None = None) -> None:
    """Write ``OUT/<model_id>/metadata.json`` and ``metadata.npz`` (same content on a rerun)."""
    tree, arrays = split_arrays(metadata)
    if mid.family.ned_options and berg_selection is None:  # NED's models, selected with ned-ray's options
        shape, kept = resolved.shape(ned_shape(mid, metadata)), None
        selection, selected = selection_record(mid, metadata, resolved, config.selection().to_json())
    else:
        shape, kept = berg_kept(mid, metadata, berg_selection or {})
        selection = {"berg": split_arrays(berg_selection)[0] if berg_selection else None,
                     **{k: {"npz": f"selection/{k}", "count": len(v)} for k, v in kept.items()}}
        selected = {f"selection/{k}": np.asarray(v) for k, v in kept.items()}
    arrays.update(selected)
    labels = coords(mid, metadata, shape, resolved, kept)
    arrays.update({f"coords/{dim}": np.asarray(v) for dim, v in labels.items()})
    document = {
        "model_id": str(mid),
        "berg_model": {"id": mid.berg[0], "kwargs": mid.berg[1]} if mid.family.has_heads else None,
        "response_shape": list(shape),
        "dims": list(labels),
        "selection": selection,
        "ned_metadata": tree,
        "provenance": {
            "ned_ray_version": __version__,
            "format": format_name,
            "files": files,
            "preprocessing": mid.family.backbone.preprocessing,
            "response_layout": mid.family.response_layout,
            "response_dtype": "float32",
            "job_options": config.to_json(),
        },
    }
    write_bytes(fs, posixpath.join(root, layout.metadata_files(mid)[0]), json.dumps(document, indent=2).encode())
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(fs, posixpath.join(root, layout.metadata_files(mid)[1]), buffer.getvalue())
