"""Selections (as BERG offers them): keep some EEG channels and times, or fMRI voxels by noise ceiling.

A :class:`Selection` holds what the user asked for (channel names, a time range in seconds, a
minimum ncsnr); :meth:`Selection.resolve` turns it into the index arrays of one model, from that
model's NED metadata. Outputs then hold ``response[..., index]`` exactly, and the indexes are stored
with the output's metadata so every value can be traced back to NED's voxel, channel and time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SelectionError
from ..ids import ModelId

__all__ = ["Selection", "Resolved", "parse_times", "parse_channels"]


def parse_channels(text: str | None) -> tuple[str, ...] | None:
    """'O1,Oz,O2' -> ('O1', 'Oz', 'O2'); None or '' -> None (all channels)."""
    if not text:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise SelectionError(f"--channels: no channel names in '{text}'; give names such as 'O1,Oz,O2'")
    return names


def parse_times(text: str | None) -> tuple[float, float] | None:
    """'0.1:0.3' (seconds, both ends included) -> (0.1, 0.3); None or '' -> None (all times)."""
    if not text:
        return None
    try:
        start, stop = (float(x) for x in text.split(":"))
    except ValueError:
        raise SelectionError(f"--times must be START:END in seconds (e.g. 0.1:0.3), got '{text}'") from None
    if stop < start:
        raise SelectionError(f"--times: END must not be before START, got '{text}'")
    return start, stop


@dataclass(frozen=True)
class Resolved:
    """The kept indexes of one model's response axes (None: the whole axis)."""

    voxels: np.ndarray | None = None  # fMRI: indexes into NED's voxel order
    channels: np.ndarray | None = None  # EEG: indexes into metadata['eeg']['ch_names']
    times: np.ndarray | None = None  # EEG: indexes into metadata['eeg']['times']

    @classmethod
    def from_record(cls, indexes: dict[str, Any]) -> "Resolved":
        """A selection as the job records it (lists of indexes; BERG's own under "berg", ignored here)."""
        return cls(**{k: np.asarray(v, dtype=np.int64) for k, v in indexes.items() if k != "berg"})

    @property
    def empty(self) -> bool:
        return self.voxels is None and self.channels is None and self.times is None

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Slice a batch of responses: (N, V) or (N, reps, channels, times)."""
        if self.voxels is not None:
            values = values[:, self.voxels]
        if self.channels is not None:
            values = values[:, :, self.channels]
        if self.times is not None:
            values = values[..., self.times]
        return values

    def shape(self, full: tuple[int, ...]) -> tuple[int, ...]:
        """The per-image shape after this selection, from the model's full per-image shape."""
        return tuple(self.apply(np.empty((0, *full), np.float32)).shape[1:])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("voxels", "channels", "times") if getattr(self, k) is not None}


@dataclass(frozen=True)
class Selection:
    """What to keep. Each part applies to the models that have that axis (EEG or fMRI)."""

    channels: tuple[str, ...] | None = None
    times: tuple[float, float] | None = None
    min_ncsnr: float | None = None

    @classmethod
    def parse(cls, channels: str | None, times: str | None, min_ncsnr: float | None) -> "Selection":
        """The selection of ``--channels``, ``--times`` and ``--min-ncsnr`` (malformed ones fail here)."""
        return cls(parse_channels(channels), parse_times(times), None if min_ncsnr is None else float(min_ncsnr))

    def to_json(self) -> dict[str, Any]:
        return {"channels": list(self.channels) if self.channels else None,
                "times": list(self.times) if self.times else None, "min_ncsnr": self.min_ncsnr}

    def resolve(self, model_id: ModelId, metadata: dict) -> Resolved:
        """The index arrays for one model, from its NED metadata; clear errors for names or ranges
        that select nothing. BERG's other families are selected with BERG's own selections
        (``--selection``): these options leave them whole."""
        options = model_id.family.ned_options
        if not options:
            return Resolved()
        if "min_ncsnr" in options:
            if self.min_ncsnr is None:
                return Resolved()
            ncsnr = np.asarray(metadata["fmri"]["ncsnr"], dtype=np.float64)
            keep = np.flatnonzero(ncsnr > self.min_ncsnr)
            if len(keep) == 0:
                raise SelectionError(f"--min-ncsnr {self.min_ncsnr} keeps no voxel of {model_id} (its ncsnr ranges "
                                 f"{ncsnr.min():.3f} to {ncsnr.max():.3f}); use a lower threshold")
            return Resolved(voxels=keep)
        names = [str(n) for n in metadata["eeg"]["ch_names"]]
        times = np.asarray(metadata["eeg"]["times"], dtype=np.float64)
        channels = None
        if self.channels is not None:
            unknown = [c for c in self.channels if c not in names]
            if unknown:
                raise SelectionError(f"--channels: {', '.join(unknown)} not among {model_id}'s channels; valid: {', '.join(names)}")
            channels = np.asarray([names.index(c) for c in self.channels], dtype=np.int64)
        kept_times = None
        if self.times is not None:
            kept_times = np.flatnonzero((times >= self.times[0] - 1e-9) & (times <= self.times[1] + 1e-9))
            if len(kept_times) == 0:
                raise SelectionError(f"--times {self.times[0]}:{self.times[1]} keeps no time point of {model_id} "
                                 f"(its times run from {times.min():.3f} to {times.max():.3f} s)")
        return Resolved(channels=channels, times=kept_times)
