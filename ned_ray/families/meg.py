"""THINGS-MEG (berg-spec §7): subjects 1-4, CTF 271 sensors x 281 times, five train splits (one
weight file each, one metadata file per subject), on ViT-B/32 features."""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from .base import VIT_B_32, BergFiles, Family, Plot
from .rules import Rows, binary, check_keys, lookup, names, unit_time_rows

__all__ = ["FAMILY", "MEG_REGIONS", "MEG_PREFIXES", "MEG_SPLITS"]

MEG_SPLITS = ("full", "split1", "split2", "split3", "split4")
MEG_REGIONS = ("Central", "Frontal", "Occipital", "Parietal", "Temporal")
MEG_PREFIXES = tuple("MLC MLF MLO MLP MLT MRC MRF MRO MRP MRT MZC MZF MZO MZP".split())


def select_rows(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§7: sensors = sorted union of region, prefix and mask (none = all); rows sensor*T + t."""
    check_keys(selection, ("region", "sensors", "sensor_index", "timepoints"))
    sensors_meta = lookup(meta, "sensors", where)
    n_t = len(lookup(lookup(meta, "meg", where), "times", where))
    regions = np.asarray(sensors_meta["sensor_regions"]).astype(str)
    prefixes = np.asarray(sensors_meta["sensor_prefixes"]).astype(str)
    chosen = np.zeros(len(regions), bool)
    if "region" in selection:
        chosen |= np.isin(regions, names(selection["region"], "region", MEG_REGIONS))
    if "sensors" in selection:
        chosen |= np.isin(prefixes, names(selection["sensors"], "sensor prefix", MEG_PREFIXES))
    if "sensor_index" in selection:
        chosen[binary(selection["sensor_index"], "sensor_index", len(regions))] = True
    sensors = np.flatnonzero(chosen) if chosen.any() else np.arange(len(regions))
    t = binary(selection["timepoints"], "timepoints", n_t) if "timepoints" in selection else np.arange(n_t)
    return Rows({"": unit_time_rows(sensors, t, n_t)}, {"": (len(sensors), len(t))}, {"": len(regions) * n_t},
                {"sensors": sensors, "timepoints": t})



def labels(metadata: Any, shape: tuple[int, ...], resolved: Any, kept: dict) -> dict[str, np.ndarray]:
    """Sensor names and times (seconds) that the selection kept."""
    names = np.asarray(metadata["sensors"]["sensor_names"]).astype(str)
    times = np.asarray(metadata["meg"]["times"], float)
    return {"sensor": names[kept["sensors"]], "time": times[kept["timepoints"]]}


def unit_groups(coords: dict, metadata: dict) -> list[str]:
    """Each sensor's region, from its CTF name (M, then L/R/Z, then the region's letter)."""
    regions = {r[0]: r.lower() for r in MEG_REGIONS}
    return [regions.get(str(n)[2:3], "other") for n in coords["sensor"]]


FAMILY = Family(
    "meg", "meg", "things_meg_1", "vit_b_32", (1, 2, 3, 4), "split", MEG_SPLITS, ("sensor", "time"), "MEG",
    backbone=VIT_B_32,
    response_layout="(sensor, time) row-major: 271 x 281 before selection",
    berg_outputs="(N, sensors <= 271, times <= 281) float32",
    selection_keys=("region", "sensors", "sensor_index", "timepoints"), select_rows=select_rows,
    metadata_section="sensors", variant_argument="train_split", variant_default="full",
    accuracy=(("encoding_model", "correlation_results"), "mean r"),
    berg_files=BergFiles(re.compile(r"^weights_P(\d+)_(full|split[1-4])\.npy$"), "weights_P{s}_{v}.npy",
                         re.compile(r"^metadata_P(\d+)\.npy$"), "metadata_P{s}.npy"),
    labels=labels, plot=Plot("timecourses", "meg_timecourses", "MEG", unit_groups))
