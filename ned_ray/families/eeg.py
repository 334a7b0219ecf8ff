"""THINGS-EEG-2 (ned-spec §3, berg-spec §4): subjects 1-10, 4 repetitions x 63 channels x 140 times,
on ViT-B/32 features; NED's files (one scaler/PCA shared by all subjects) or BERG's (per subject)."""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from ..errors import SelectionError
from .base import VIT_B_32, BergFiles, Family, Plot
from .rules import Rows, binary, check_keys, lookup, unit_time_rows

__all__ = ["FAMILY", "CHANNELS"]

CHANNELS = (
    "Fp1 F3 F7 FT9 FC5 FC1 C3 T7 TP9 CP5 CP1 Pz P3 P7 O1 Oz O2 P4 P8 TP10 CP6 CP2 Cz C4 T8 FT10 FC6 "
    "FC2 F4 F8 Fp2 AF7 AF3 AFz F1 F5 FT7 FC3 FCz C1 C5 TP7 CP3 P1 P5 PO7 PO3 POz PO4 PO8 P6 P2 CPz "
    "CP4 TP8 C6 C2 FC4 FT8 F6 F2 AF4 AF8"
).split()


def select_rows(meta: Any, selection: Mapping[str, Any], where: str) -> Rows:
    """§4: channels in the user's order (duplicates kept), then the times of a mask; rows ch*T + t."""
    ch_names = [str(c) for c in lookup(lookup(meta, "eeg", where), "ch_names", where)]
    n_t = len(lookup(lookup(meta, "eeg", where), "times", where))
    check_keys(selection, ("channels", "timepoints"))
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
    t = binary(selection["timepoints"], "timepoints", n_t) if "timepoints" in selection else np.arange(n_t)
    return Rows({"": unit_time_rows(ch, t, n_t)}, {"": (len(ch), len(t))}, {"": len(ch_names) * n_t},
                {"channels": ch, "timepoints": t})


def full_shape(metadata: Any, variant: str | None) -> tuple[int, ...]:
    """(repetitions, channels, times): NED's accuracy arrays give it; BERG's files hold 4 repetitions."""
    models = metadata.get("encoding_models", {})
    single = models.get("encoding_accuracy", models).get("correlation_single_repetitions")
    if single is not None:
        return tuple(np.shape(single))
    return (4, len(metadata["eeg"]["ch_names"]), len(metadata["eeg"]["times"]))


def labels(metadata: Any, shape: tuple[int, ...], resolved: Any, kept: dict) -> dict[str, np.ndarray]:
    """Repetitions 1..4, channel names and times (seconds) that the selection kept."""
    names, times = np.asarray(metadata["eeg"]["ch_names"]).astype(str), np.asarray(metadata["eeg"]["times"], float)
    channels = kept.get("channels", resolved.channels)
    t = kept.get("timepoints", resolved.times)
    return {"repetition": np.arange(1, shape[0] + 1), "channel": names if channels is None else names[channels],
            "time": times if t is None else times[t]}


REGIONS = {"O": "occipital", "P": "parietal", "C": "central", "T": "temporal", "F": "frontal", "A": "frontal"}


def channel_region(name: str) -> str:
    """The scalp region of a channel. Occipital: every name with an 'O' (O1, Oz, O2 and the PO
    channels: the 8 of NED's EEG tutorial); the others by their first letter (Fp1 -> frontal)."""
    return "occipital" if "O" in name.upper() else REGIONS.get(name[:1].upper(), "other")


def unit_groups(coords: dict, metadata: dict) -> list[str]:
    """Each channel's scalp region, for the time-course figure."""
    return [channel_region(str(n)) for n in coords["channel"]]


def ned_accuracy(metadata: Any) -> float:
    """100 x mean correlation (all repetitions) / mean upper noise ceiling, over channels and times."""
    accuracy = metadata["encoding_models"]["encoding_accuracy"]
    return float(100 * np.mean(accuracy["correlation_all_repetitions"]) / np.mean(accuracy["noise_ceiling_upper"]))


FAMILY = Family(
    "eeg", "eeg", "things_eeg_2", "vit_b_32", tuple(range(1, 11)), None, (), ("repetition", "channel", "time"), "EEG",
    backbone=VIT_B_32,
    response_layout="(repetition, channel, time) row-major: 4 x 63 x 140, flattened as rep*8820 + ch*140 + t",
    berg_outputs="(N, 4 repetitions, channels <= 63, times <= 140) float32",
    selection_keys=("channels", "timepoints"), select_rows=select_rows, metadata_section="eeg",
    accuracy=(("encoding_models", "correlation_averaged_repetitions"), "mean r (averaged repetitions)"),
    berg_files=BergFiles(re.compile(r"^weights_subject-(\d{2})\.npy$"), "weights_subject-{s:02d}.npy",
                         re.compile(r"^metadata_subject-(\d{2})\.npy$"), "metadata_subject-{s:02d}.npy"),
    full_shape=full_shape, labels=labels, plot=Plot("timecourses", "eeg_timecourses", "EEG", unit_groups), pool="eeg",
    maps=Plot("topomaps", "eeg_topomaps", "EEG"),
    repetitions=True, ned_options=("channels", "times"), ned_accuracy=ned_accuracy)
