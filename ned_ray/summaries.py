"""What ned-ray reports, as data and as text: the models a directory holds, what an output holds, a
job's plan and its summary. The command line prints these; ``jobs/encode.py`` and the examples use
them too."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc

from .modeldir import NedDir

__all__ = ["model_summary", "output_summary", "format_plan", "plan_json", "format_summary"]


def _berg_accuracy(mid, meta: dict) -> tuple[float | None, str]:
    (section, key), what = mid.family.accuracy  # where BERG's metadata records the test accuracy
    value = meta.get(section, {}).get(key.format(variant=mid.variant))
    return (None, what) if value is None else (float(np.nanmean(np.asarray(value, dtype=np.float64))), what)


def model_summary(ned: NedDir) -> list[dict]:
    """One row per model: family, BERG id, subject, variant, response shape and an accuracy figure.

    NED's models: fwrf: 100 x the mean of NED's ``noise_normalized_encoding`` (r2 / noise ceiling)
    over voxels, in percent of the explainable variance; EEG: 100 x mean correlation (all
    repetitions) / mean upper noise ceiling, over channels and times. BERG's: the mean test
    correlation its metadata records (TVSD: the mean oracle correlation).
    """
    from .job.metadata import ned_shape

    rows = []
    for mid, entry in ned.catalogue.items():
        meta = ned.metadata(mid)
        shape = list(ned_shape(mid, meta))
        if entry.format == "ned":
            score, what = round(mid.family.ned_accuracy(meta), 3), "noise-normalised accuracy (%)"
        else:
            score, what = _berg_accuracy(mid, meta)
            score = None if score is None else round(score, 4)
        rows.append({"id": str(mid), "berg_id": mid.berg[0], "family": mid.family.key, "modality": mid.modality,
                     "subject": mid.subject, "variant": mid.variant, "roi": mid.roi,
                     "voxels": shape[0] if mid.roi else None, "response_shape": shape,
                     "accuracy": score, "accuracy_is": what, "format": entry.format, "files": list(entry.weights),
                     "status": "ok", "missing": None})
    for mid, damage in ned.damaged.items():  # listed, so that a missing file is found before a job asks for it
        rows.append({"id": str(mid), "berg_id": mid.berg[0], "family": mid.family.key, "modality": mid.modality,
                     "subject": mid.subject, "variant": mid.variant, "roi": mid.roi, "voxels": None,
                     "response_shape": None, "accuracy": None, "accuracy_is": None, "format": damage.entry.format,
                     "files": list(damage.entry.weights), "status": "damaged", "missing": damage.missing})
    return sorted(rows, key=lambda r: r["id"])


def output_summary(out) -> dict:
    """What an output holds: models with rows and shapes, images and errors, options, precision."""
    images = out.images()
    errors = images.filter(pc.equal(images.column("status"), "error")).select(["image_id", "error"]).to_pylist()
    job = out.manifest["job"]
    models = []
    for mid in out.models:
        meta = out.metadata(mid)["json"]
        models.append({"id": mid, "rows": out.manifest["models"][mid]["rows"], "response_shape": list(out.shape(mid)),
                       "selection": meta.get("selection", {}).get("asked")})
    return {"output": out.uri, "complete": out.manifest["complete"], "images": out.manifest["images"],
            "errors": errors, "models": models, "options": job["options"], "ned_ray_version": job["ned_ray_version"],
            "precision": out.manifest.get("precision", {"mode": job["options"].get("precision", "fp32")}),
            "devices": out.manifest.get("devices", [])}


def format_plan(info: dict) -> str:
    """What ``--dry-run`` prints: the work, then the plan."""
    head = (f"{len(info['models'])} models x {info['n_images']} images in {info['shards']} shard(s): "
            f"{info['to_encode']} to encode, {info['already_committed']} already committed")
    done = len(info["models"]) - len(info.get("computing", info["models"]))
    if info.get("computing") and done:
        head += f"; {len(info['computing'])} model(s) to compute, {done} complete (not loaded)"
    return head + f"\nexecutor: {info['executor']} ({info['executor_reason']})\n" + info["plan"].describe()


def plan_json(info: dict) -> str:
    return json.dumps({**info, "plan": info["plan"].to_json()}, indent=2)


def _pace(run: dict) -> str:
    """What the overall rate is made of: the fixed costs before the first committed piece, and the
    steady rate after it (or why there is none)."""
    first, steady = run.get("first_piece_seconds"), run.get("steady_images_per_second")
    if first is None:
        return ""
    fixed = f"{first:.1f}s to the first committed piece (starting, loading models, the first batch)"
    if steady is None:
        return (f" overall, most of it fixed costs: {fixed}; too few images for a steady rate (one piece), "
                "bench/RESULTS.md has measured ones")
    return f" overall: {fixed}, then {steady:.2f} images/s"


def format_summary(summary: dict, output: str) -> str:
    """A few lines a person reads after a job."""
    run, images = summary["run"], summary["images"]
    not_read = f", {images['skipped']} skipped: not read, see images.parquet" if images.get("skipped") else ""
    lines = [f"wrote {output}: {images['total']} images ({images['ok']} ok, {images['error']} errors{not_read}) x "
             f"{len(summary['models'])} models",
             f"this run encoded {run['encoded_images']} images ({run['skipped_images']} were already committed) in "
             f"{run['seconds']:.1f}s = {run['images_per_second']:.2f} images/s{_pace(run)}"]
    if run.get("executor") == "local":
        lines.append(f"ran in this process, without Ray: {run['executor_reason']}")
    if images["error"]:
        lines.append(f"errors are listed in {output}/images.parquet (status='error')")
    return "\n".join(lines)
