"""TVSD macaque Utah arrays (berg-spec §8): monkeys N and F, 1,024 electrodes x 300 times, on ViT-B/32
features."""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from .base import VIT_B_32, BergFiles, Family, Plot
from .rules import Rows, binary, check_keys, lookup, names, unit_time_rows

__all__ = ["FAMILY"]


def select_rows(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§8: electrodes = sorted union of ROIs and mask (an empty ROI gives none); rows electrode*T + t."""
    check_keys(selection, ("roi", "electrodes", "timepoints"))
    roi_meta = lookup(meta, "roi", where)
    assignments = np.asarray(roi_meta["roi_assignments"])
    labels = [str(x) for x in roi_meta["roi_labels"]]
    n_t = len(lookup(lookup(meta, "utah-array", where), "times", where))
    if "roi" in selection or "electrodes" in selection:
        chosen = np.zeros(len(assignments), bool)
        if "roi" in selection:
            codes = [labels.index(r) for r in names(selection["roi"], "ROI", labels)]
            chosen |= np.isin(assignments, codes)
        if "electrodes" in selection:
            chosen[binary(selection["electrodes"], "electrodes", len(assignments))] = True
        electrodes = np.flatnonzero(chosen)
    else:
        electrodes = np.arange(len(assignments))
    t = binary(selection["timepoints"], "timepoints", n_t) if "timepoints" in selection else np.arange(n_t)
    return Rows({"": unit_time_rows(electrodes, t, n_t)}, {"": (len(electrodes), len(t))},
                {"": len(assignments) * n_t}, {"electrodes": electrodes, "timepoints": t})



def labels(metadata: Any, shape: tuple[int, ...], resolved: Any, kept: dict) -> dict[str, np.ndarray]:
    """Electrode indexes and times (seconds: TVSD's metadata gives milliseconds) that the selection kept."""
    times = np.asarray(metadata["utah-array"]["times"], float) / 1000
    return {"electrode": kept["electrodes"], "time": times[kept["timepoints"]]}


def unit_groups(coords: dict, metadata: dict) -> list[str]:
    """Each electrode's ROI (V1, V4, IT) from its metadata's assignments ("all" without them)."""
    assignments = metadata["npz"].get("roi/roi_assignments")
    names = metadata["json"]["ned_metadata"].get("roi", {}).get("roi_labels") or ["V1", "V4", "IT"]
    if assignments is None:
        return ["all"] * len(coords["electrode"])
    return [str(names[int(a)]) for a in assignments[coords["electrode"]]]


FAMILY = Family(
    "tvsd", "utah_array", "tvsd", "vit_b_32", ("N", "F"), None, (), ("electrode", "time"), "TVSD", backbone=VIT_B_32,
    response_layout="(electrode, time) row-major: 1024 x 300 before selection",
    berg_outputs="(N, electrodes <= 1024, times <= 300) float32",
    selection_keys=("roi", "electrodes", "timepoints"), select_rows=select_rows, metadata_section="utah-array",
    accuracy=(("encoding_model", "oracle"), "mean oracle r"),
    berg_files=BergFiles(re.compile(r"^weights_monkey([A-Z])\.npy$"), "weights_monkey{s}.npy",
                         re.compile(r"^metadata_monkey([A-Z])\.npy$"), "metadata_monkey{s}.npy"),
    labels=labels, plot=Plot("timecourses", "tvsd_timecourses", "TVSD Utah arrays", unit_groups))
