"""Finishing an output (invariants 3-5 of :mod:`.transaction`): every image committed exactly once,
leftovers removed, ``images.parquet``, then ``_manifest.json`` last."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...errors import OutputDamagedError
from ...ids import ModelId
from ...output import layout
from ...output.layout import COMMITS, FORMAT_VERSION, IMAGE_PARTS, IMAGES, IMAGES_WRITER, LEASE, MANIFEST, TMP_PREFIX
from ...storage import fresh_exists, fresh_ls, parquet_bytes, write_bytes
from .ledger import Ledger
from .owned import remove

__all__ = ["finalize", "device_summary"]


def _check_complete(ledger: Ledger, output: str, models: Sequence[ModelId], n_images: int, fs=None,
                    root: str = "") -> None:
    for label, markers in [("images", ledger.images())] + [(str(m), ledger.model_markers(m)) for m in models]:
        seen = ledger.coverage(markers, n_images)
        if (seen != 1).any():
            missing, doubled = np.flatnonzero(seen == 0), np.flatnonzero(seen > 1)
            raise OutputDamagedError(f"output {output} is inconsistent for {label}: {len(missing)} images missing, "
                               f"{len(doubled)} written twice (first: {missing[:5].tolist() or doubled[:5].tolist()}); "
                               "rerun the same command to finish it")
    damaged = ledger.damaged(fs, root) if fs is not None else []
    if damaged:
        raise OutputDamagedError(f"output {output} has {len(damaged)} damaged commit(s) ({damaged[0][2]}); rerun the same "
                           "command to encode them again")


def _remove_orphans(fs, root: str, models: Sequence[ModelId], ledger: Ledger) -> None:
    """Delete files a crashed run left behind (uncommitted pieces, temporary files in any of the
    output's folders): readers never see them. Only ned-ray's own names are removed (:mod:`.owned`)."""
    folders: dict[str, set[str] | None] = {IMAGE_PARTS: {m["piece"] for m in ledger.images()}}
    for mid in models:
        folders[str(mid)] = {m["piece"] for m in ledger.model_markers(mid)}
    commits = posixpath.join(root, COMMITS)
    for folder in [""] + ([posixpath.relpath(f, root.rstrip("/")) for f in fresh_ls(fs, commits, detail=False)]
                          if fresh_exists(fs, commits) else []):
        folders.setdefault(folder, None)  # only temporary files are removed here
    leftovers = []
    for folder, committed in folders.items():
        path = posixpath.join(root, folder) if folder else root
        if not fresh_exists(fs, path):
            continue
        for found in fresh_ls(fs, path, detail=False):
            name = posixpath.basename(found.rstrip("/"))
            if name.endswith(f"-{LEASE}"):
                continue  # the lease's own temporary files are the lease's to remove (Lease.release)
            if name.startswith(TMP_PREFIX) or (committed is not None and name.startswith("part-")
                                               and layout.piece_of(name) not in committed):
                leftovers.append(posixpath.join(folder, name) if folder else name)
    remove(fs, root, leftovers)


def _precision_summary(precision: str, ledger: Ledger, models: Sequence[ModelId]) -> dict[str, Any]:
    """The largest deviation from fp32 seen on the checked images, per model (and relative to the
    fp32 responses' standard deviation)."""
    summary: dict[str, Any] = {"mode": precision, "reference": "fp32 on the first image of every block", "models": {}}
    for mid in models:
        checks = [m["precision_check"][str(mid)] for m in ledger.model_markers(mid)
                  if str(mid) in m.get("precision_check", {})]
        checked = sum(n for _, _, n in checks)
        deviation = max((d for d, _, n in checks if n), default=0.0)
        std = max((s for _, s, n in checks if n), default=0.0)
        summary["models"][str(mid)] = {"max_abs_deviation": deviation, "fp32_std": std, "checked_images": checked,
                                       "max_deviation_over_std": deviation / std if std > 0 else None}
    return summary


def device_summary(ledger: Ledger) -> list[dict[str, Any]]:
    """Per model group (writer): the device it was planned on, and where its images were computed."""
    groups = []
    for key, found in sorted(ledger.markers.items()):
        if key == IMAGES_WRITER or not found:
            continue
        ran: dict[str, int] = {}
        nodes: set[str] = set()
        for marker in found:
            ran[marker["device"]] = ran.get(marker["device"], 0) + len(marker["image_index"])
            nodes.add(marker.get("node", ""))
        groups.append({"pool": found[0].get("pool", ""), "writer": key, "models": found[0]["models"],
                       "planned": found[0].get("planned", ""),
                       "ran_on": ran, "nodes": sorted(n for n in nodes if n)})
    return sorted(groups, key=lambda g: (g["pool"], g["writer"]))


def stored(model: ModelId, store: str) -> str:
    """What an output keeps of ``model`` under ``--store``: fwrf models have no small code (responses)."""
    return store if model.family.has_heads else "responses"


def _model_entry(fs, root: str, output: str, mid: ModelId, formats: Sequence[str], store: str,
                 markers: list[dict[str, Any]]) -> dict[str, Any]:
    """A model's manifest entry: its rows, parts per kind (responses in each format, codes), the part
    ranges, metadata, and for coded models the head with its sha256."""
    kept = stored(mid, store)
    parts = {fmt: [layout.part(mid, m["piece"], fmt) for m in markers] for fmt in formats} if kept != "codes" else {}
    entry: dict[str, Any] = {"rows": sum(m["rows"] for m in markers), "store": kept}
    if kept != "responses":
        parts["codes"] = [layout.code_part(mid, m["piece"]) for m in markers]
        path = posixpath.join(root, layout.head_file(mid))
        if not fresh_exists(fs, path):
            raise OutputDamagedError(f"output {output}: the head of {mid} ({layout.head_file(mid)}) is missing; rerun the "
                                     "same command to write it")
        entry["head"] = {"file": layout.head_file(mid), "sha256": hashlib.sha256(fs.cat_file(path)).hexdigest()}
    entry.update({"parts": parts, "index_ranges": [[min(m["image_index"]), max(m["image_index"])] for m in markers],
                  "metadata": list(layout.metadata_files(mid))})
    return entry


def finalize(fs, root: str, output: str, models: Sequence[ModelId], formats: Sequence[str], n_images: int,
             job: dict[str, Any], ledger: Ledger | None = None, store: str = "responses") -> dict[str, Any]:
    """Check the commits cover every image exactly once, write images.parquet, then the manifest."""
    ledger = ledger or Ledger.read(fs, root)
    _check_complete(ledger, output, models, n_images, fs, root)
    _remove_orphans(fs, root, models, ledger)
    pieces = [m["piece"] for m in ledger.images()]
    paths = [posixpath.join(root, layout.image_part(p)) for p in pieces]
    tables = [pq.read_table(io.BytesIO(data)) for data in fs.cat(paths).values()] if paths else []
    images = pa.concat_tables(tables).sort_by("image_index") if tables else None
    if images is not None:
        write_bytes(fs, posixpath.join(root, IMAGES), parquet_bytes(images))
    n_ok = sum(m["ok"] for m in ledger.images())
    n_skipped = sum(m.get("skipped", 0) for m in ledger.images())
    manifest = {
        "format_version": FORMAT_VERSION,
        "complete": True,
        "images": {"total": n_images, "ok": n_ok, "error": n_images - n_ok - n_skipped, "skipped": n_skipped,
                   "file": IMAGES},
        "models": {str(mid): _model_entry(fs, root, output, mid, formats, store, ledger.model_markers(mid))
                   for mid in models},
        "chunks": len(pieces),
        "devices": device_summary(ledger),
        "job": job,
    }
    precision = job.get("options", {}).get("precision", "fp32")
    if precision != "fp32":
        manifest["precision"] = _precision_summary(precision, ledger, models)
    write_bytes(fs, posixpath.join(root, MANIFEST), json.dumps(manifest, indent=2).encode())
    return manifest
