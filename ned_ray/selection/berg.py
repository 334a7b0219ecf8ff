"""BERG's selections (berg-spec §4-§8): which output rows a selection keeps, from a model's metadata
alone, with BERG's rules, order, duplicates and messages. No torch: the driver checks a selection
before anything is written, and the encoders gather the same rows from the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import SelectionError
from ..ids import select

__all__ = ["Rows", "resolve_selection", "berg_selections", "lookup", "SELECTION_KEYS", "FSAVERAGE_ROIS", "MEG_REGIONS",
           "MEG_PREFIXES"]


def lookup(mapping: Any, key: str, where: str) -> Any:
    """``mapping[key]`` for dicts and for pickled sklearn objects (attributes), or one clear error."""
    if hasattr(mapping, "keys") and key in mapping.keys():
        return mapping[key]
    found = sorted(map(str, mapping.keys())) if hasattr(mapping, "keys") else type(mapping).__name__
    raise ValueError(f"{where}: '{key}' missing (found {found})")


def _binary(value: Any, name: str, length: int) -> np.ndarray:
    """A 0/1 mask of ``length`` (BERG's checks, with its messages), as sorted indexes."""
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise SelectionError(f"{name} must be a list or numpy array, got {type(value).__name__}")
    mask = np.asarray(value)
    if mask.shape != (length,):
        raise SelectionError(f"{name} must have exactly {length} elements, got {mask.size}")
    if not np.isin(mask, [0, 1]).all():
        raise SelectionError(f"{name} must be binary (contain only 0s and 1s)")
    if not mask.any():
        raise SelectionError(f"At least one element in {name} must be selected (contain at least one 1)")
    return np.flatnonzero(mask)


def _names(value: Any, what: str, valid: Sequence[str]) -> list[str]:
    """A list of names, each valid (BERG: 'must be provided as a list', 'Invalid ...')."""
    if not isinstance(value, (list, tuple)):
        raise SelectionError(f"{what} must be provided as a list, got {type(value).__name__}")
    bad = [v for v in value if v not in valid]
    if bad:
        raise SelectionError(f"Invalid {what}(s): {bad}. Valid {what}s are: {list(valid)}")
    return list(value)


def _check_keys(selection: Mapping[str, Any], valid: Sequence[str]) -> None:
    for key in selection:
        if key not in valid:
            raise SelectionError(f"Invalid selection key: '{key}'. Valid keys are: {sorted(valid)}")


def _unit_time_rows(units: np.ndarray, times: np.ndarray, n_times: int) -> np.ndarray:
    """Rows ``unit * n_times + t`` for every unit, then every time (row-major (unit, time))."""
    return (units[:, None] * n_times + times[None, :]).ravel()


@dataclass(frozen=True)
class Rows:
    """What a selection keeps of a model's outputs, resolved from its metadata alone (no weights):
    per output part ("" or "lh"/"rh"), the regression rows in output order, the per-image shape
    (EEG: without its repetition axis, which only the weight file says), and the rows the file must
    hold; ``kept`` names what was kept (channel names, indexes) for the output's metadata."""

    rows: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    total: dict[str, int]
    kept: dict[str, Any]


def _eeg(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§4: channels in the user's order (duplicates kept), then the times of a mask; rows ch*T + t."""
    ch_names = [str(c) for c in lookup(lookup(meta, "eeg", where), "ch_names", where)]
    n_t = len(lookup(lookup(meta, "eeg", where), "times", where))
    _check_keys(selection, ("channels", "timepoints"))
    channels = selection.get("channels")
    if channels is None:
        ch = np.arange(len(ch_names))
    else:
        if not isinstance(channels, (list, tuple)):
            raise SelectionError(f"channels parameter must be a list, got {type(channels).__name__}")
        bad = [c for c in channels if c not in ch_names]
        if bad:
            raise SelectionError(f"Invalid channel(s): {bad}. Valid channels are: {ch_names}")
        ch = np.array([ch_names.index(c) for c in channels], np.int64)  # the user's order, duplicates kept
    t = _binary(selection["timepoints"], "timepoints", n_t) if "timepoints" in selection else np.arange(n_t)
    return Rows({"": _unit_time_rows(ch, t, n_t)}, {"": (len(ch), len(t))}, {"": len(ch_names) * n_t},
                {"channels": ch, "timepoints": t})


FSAVERAGE_ROIS = ("V1d V1v V2d V2v V3d V3v hV4 OFA FFA-1 FFA-2 mTL-faces aTL-faces OVWFA VWFA-1 VWFA-2 mfs-words "
                  "mTL-words OPA PPA RSC EBA FBA-1 FBA-2 mTL-bodies early midventral midlateral midparietal "
                  "parietal lateral ventral").split()


def _fsaverage(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§5: two parts (lh, rh). ``roi`` (a str) wins over ``lh_vertices``/``rh_vertices``."""
    _check_keys(selection, ("roi", "lh_vertices", "rh_vertices"))
    fmri = lookup(meta, "fmri", where)
    total = {h: len(lookup(fmri, f"{h}_ncsnr", where)) for h in ("lh", "rh")}
    rows: dict[str, np.ndarray] = {}
    if "roi" in selection:
        roi = selection["roi"]
        if not isinstance(roi, str):
            raise SelectionError(f"ROI parameter must be a string, got {type(roi).__name__}")
        if roi not in FSAVERAGE_ROIS:
            raise SelectionError(f"Invalid ROI: '{roi}'. Valid ROIs are: {FSAVERAGE_ROIS}")
        for h in ("lh", "rh"):
            rows[h] = np.asarray(lookup(fmri, f"{h}_fsaverage_rois", where)[roi], np.int64)
    else:
        for h in ("lh", "rh"):
            key = f"{h}_vertices"
            rows[h] = _binary(selection[key], key, total[h]) if key in selection else np.arange(total[h])
    return Rows(rows, {h: (len(rows[h]),) for h in rows}, total, {"vertices": rows})


def _things_fmri(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§6: ROI voxels concatenated in the order given (duplicates kept), then the mask's; none = all."""
    _check_keys(selection, ("roi", "voxel_index"))
    n = int(lookup(lookup(meta, "fmri", where), "n_voxels", where))
    rois = lookup(meta, "roi", where)
    parts = []
    if "roi" in selection:
        parts += [np.asarray(rois[r], np.int64) for r in _names(selection["roi"], "ROI", list(rois.keys()))]
    if "voxel_index" in selection:
        parts.append(_binary(selection["voxel_index"], "voxel_index", n))
    rows = np.concatenate(parts) if parts else np.empty(0, np.int64)
    if len(rows) == 0:
        rows = np.arange(n)  # BERG: an empty selection means every voxel
    return Rows({"": rows}, {"": (len(rows),)}, {"": n}, {"voxels": rows})


MEG_REGIONS = ("Central", "Frontal", "Occipital", "Parietal", "Temporal")


MEG_PREFIXES = tuple("MLC MLF MLO MLP MLT MRC MRF MRO MRP MRT MZC MZF MZO MZP".split())


def _meg(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§7: sensors = sorted union of region, prefix and mask (none = all); rows sensor*T + t."""
    _check_keys(selection, ("region", "sensors", "sensor_index", "timepoints"))
    sensors_meta = lookup(meta, "sensors", where)
    n_t = len(lookup(lookup(meta, "meg", where), "times", where))
    regions = np.asarray(sensors_meta["sensor_regions"]).astype(str)
    prefixes = np.asarray(sensors_meta["sensor_prefixes"]).astype(str)
    chosen = np.zeros(len(regions), bool)
    if "region" in selection:
        chosen |= np.isin(regions, _names(selection["region"], "region", MEG_REGIONS))
    if "sensors" in selection:
        chosen |= np.isin(prefixes, _names(selection["sensors"], "sensor prefix", MEG_PREFIXES))
    if "sensor_index" in selection:
        chosen[_binary(selection["sensor_index"], "sensor_index", len(regions))] = True
    sensors = np.flatnonzero(chosen) if chosen.any() else np.arange(len(regions))
    t = _binary(selection["timepoints"], "timepoints", n_t) if "timepoints" in selection else np.arange(n_t)
    return Rows({"": _unit_time_rows(sensors, t, n_t)}, {"": (len(sensors), len(t))}, {"": len(regions) * n_t},
                {"sensors": sensors, "timepoints": t})


def _tvsd(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§8: electrodes = sorted union of ROIs and mask (an empty ROI gives none); rows electrode*T + t."""
    _check_keys(selection, ("roi", "electrodes", "timepoints"))
    roi_meta = lookup(meta, "roi", where)
    assignments = np.asarray(roi_meta["roi_assignments"])
    labels = [str(x) for x in roi_meta["roi_labels"]]
    n_t = len(lookup(lookup(meta, "utah-array", where), "times", where))
    if "roi" in selection or "electrodes" in selection:
        chosen = np.zeros(len(assignments), bool)
        if "roi" in selection:
            codes = [labels.index(r) for r in _names(selection["roi"], "ROI", labels)]
            chosen |= np.isin(assignments, codes)
        if "electrodes" in selection:
            chosen[_binary(selection["electrodes"], "electrodes", len(assignments))] = True
        electrodes = np.flatnonzero(chosen)
    else:
        electrodes = np.arange(len(assignments))
    t = _binary(selection["timepoints"], "timepoints", n_t) if "timepoints" in selection else np.arange(n_t)
    return Rows({"": _unit_time_rows(electrodes, t, n_t)}, {"": (len(electrodes), len(t))},
                {"": len(assignments) * n_t}, {"electrodes": electrodes, "timepoints": t})


RULES = {"eeg": _eeg, "fsaverage": _fsaverage, "things_fmri": _things_fmri, "meg": _meg, "tvsd": _tvsd}


SELECTION_KEYS = {"eeg": ("channels", "timepoints"), "fsaverage": ("roi", "lh_vertices", "rh_vertices"),
                  "things_fmri": ("roi", "voxel_index"), "meg": ("region", "sensors", "sensor_index", "timepoints"),
                  "tvsd": ("roi", "electrodes", "timepoints")}


def resolve_selection(family: str, metadata: Any, selection: Mapping[str, Any] | None = None,
                      where: str = "<metadata>") -> Rows:
    """The rows a BERG selection keeps, from the model's metadata alone (BERG's rules and messages)."""
    if family not in RULES:
        raise ValueError(f"unknown BERG model family '{family}'; valid: {', '.join(RULES)}")
    if selection is not None and not isinstance(selection, Mapping):
        raise SelectionError(f"a selection must be a dict of {list(SELECTION_KEYS[family])}, got {type(selection).__name__}")
    return RULES[family](metadata, dict(selection or {}), where)


def berg_selections(patterns: Mapping[str, Mapping[str, Any]], models: list) -> dict:
    """The BERG selection of each model (``{ModelId: dict}``), from patterns (ids or globs, as
    ``--models``) -> selection dicts: two patterns may not set one key of one model differently."""
    from ..errors import ConfigError

    out: dict = {}
    for pattern, chosen in patterns.items():
        for mid in select(models, pattern):
            merged = out.setdefault(mid, {})
            for key, value in chosen.items():
                if key in merged and merged[key] != value:
                    raise ConfigError(f"--selection sets '{key}' of {mid} twice, differently ('{pattern}' and an "
                                      "earlier pattern); give each model's selection once")
                merged[key] = value
    return out
