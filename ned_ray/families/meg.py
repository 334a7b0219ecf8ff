"""THINGS-MEG (berg-spec §7): subjects 1-4, CTF 271 sensors x 281 times, five train splits (one
weight file each, one metadata file per subject), on ViT-B/32 features."""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from .base import VIT_B_32, BergFiles, Family, Plot
from .rules import Rows, binary, check_keys, lookup, names, unit_time_rows

__all__ = ["FAMILY", "MEG_REGIONS", "MEG_PREFIXES", "MEG_SPLITS", "CTF_275"]

MEG_SPLITS = ("full", "split1", "split2", "split3", "split4")
MEG_REGIONS = ("Central", "Frontal", "Occipital", "Parietal", "Temporal")
MEG_PREFIXES = tuple("MLC MLF MLO MLP MLT MRC MRF MRO MRP MRT MZC MZF MZO MZP".split())
# The CTF-275 system's sensor names (MNE's CTF-275 layout, in its order): THINGS-MEG's 271 are among
# them (BERG's names add the system's suffix, e.g. MLC11-4408); the demo MEG model uses the first 271.
CTF_275 = tuple("""
MLC11 MLC12 MLC13 MLC14 MLC15 MLC16 MLC17 MLC21 MLC22 MLC23 MLC24 MLC25 MLC31 MLC32 MLC41 MLC42 MLC51 MLC52
MLC53 MLC54 MLC55 MLC61 MLC62 MLC63 MLF11 MLF12 MLF13 MLF14 MLF21 MLF22 MLF23 MLF24 MLF25 MLF31 MLF32 MLF33
MLF34 MLF35 MLF41 MLF42 MLF43 MLF44 MLF45 MLF46 MLF51 MLF52 MLF53 MLF54 MLF55 MLF56 MLF61 MLF62 MLF63 MLF64
MLF65 MLF66 MLF67 MLO11 MLO12 MLO13 MLO14 MLO21 MLO22 MLO23 MLO24 MLO31 MLO32 MLO33 MLO34 MLO41 MLO42 MLO43
MLO44 MLO51 MLO52 MLO53 MLP11 MLP12 MLP21 MLP22 MLP23 MLP31 MLP32 MLP33 MLP34 MLP35 MLP41 MLP42 MLP43 MLP44
MLP45 MLP51 MLP52 MLP53 MLP54 MLP55 MLP56 MLP57 MLT11 MLT12 MLT13 MLT14 MLT15 MLT16 MLT21 MLT22 MLT23 MLT24
MLT25 MLT26 MLT27 MLT31 MLT32 MLT33 MLT34 MLT35 MLT36 MLT37 MLT41 MLT42 MLT43 MLT44 MLT45 MLT46 MLT47 MLT51
MLT52 MLT53 MLT54 MLT55 MLT56 MLT57 MRC11 MRC12 MRC13 MRC14 MRC15 MRC16 MRC17 MRC21 MRC22 MRC23 MRC24 MRC25
MRC31 MRC32 MRC41 MRC42 MRC51 MRC52 MRC53 MRC54 MRC55 MRC61 MRC62 MRC63 MRF11 MRF12 MRF13 MRF14 MRF21 MRF22
MRF23 MRF24 MRF25 MRF31 MRF32 MRF33 MRF34 MRF35 MRF41 MRF42 MRF43 MRF44 MRF45 MRF46 MRF51 MRF52 MRF53 MRF54
MRF55 MRF56 MRF61 MRF62 MRF63 MRF64 MRF65 MRF66 MRF67 MRO11 MRO12 MRO13 MRO14 MRO21 MRO22 MRO23 MRO24 MRO31
MRO32 MRO33 MRO34 MRO41 MRO42 MRO43 MRO44 MRO51 MRO52 MRO53 MRP11 MRP12 MRP21 MRP22 MRP23 MRP31 MRP32 MRP33
MRP34 MRP35 MRP41 MRP42 MRP43 MRP44 MRP45 MRP51 MRP52 MRP53 MRP54 MRP55 MRP56 MRP57 MRT11 MRT12 MRT13 MRT14
MRT15 MRT16 MRT21 MRT22 MRT23 MRT24 MRT25 MRT26 MRT27 MRT31 MRT32 MRT33 MRT34 MRT35 MRT36 MRT37 MRT41 MRT42
MRT43 MRT44 MRT45 MRT46 MRT47 MRT51 MRT52 MRT53 MRT54 MRT55 MRT56 MRT57 MZC01 MZC02 MZC03 MZC04 MZF01 MZF02
MZF03 MZO01 MZO02 MZO03 MZP01
""".split())


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
    labels=labels, plot=Plot("timecourses", "meg_timecourses", "MEG", unit_groups),
    maps=Plot("topomaps", "meg_topomaps", "MEG"))
