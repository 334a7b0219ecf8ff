"""Building blocks of BERG's selection rules (berg-spec §4-§8), shared by the family modules: BERG's
checks with BERG's messages. No torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import SelectionError

__all__ = ["Rows", "lookup", "binary", "names", "check_keys", "unit_time_rows", "timepoints"]


def lookup(mapping: Any, key: str, where: str) -> Any:
    """``mapping[key]`` for dicts and for pickled sklearn objects (attributes), or one clear error."""
    if hasattr(mapping, "keys") and key in mapping.keys():
        return mapping[key]
    found = sorted(map(str, mapping.keys())) if hasattr(mapping, "keys") else type(mapping).__name__
    raise ValueError(f"{where}: '{key}' missing (found {found})")


def binary(value: Any, name: str, length: int) -> np.ndarray:
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


def names(value: Any, what: str, valid: Sequence[str]) -> list[str]:
    """A list of names, each valid (BERG: 'must be provided as a list', 'Invalid ...')."""
    if not isinstance(value, (list, tuple)):
        raise SelectionError(f"{what} must be provided as a list, got {type(value).__name__}")
    bad = [v for v in value if v not in valid]
    if bad:
        raise SelectionError(f"Invalid {what}(s): {bad}. Valid {what}s are: {list(valid)}")
    return list(value)


def check_keys(selection: Mapping[str, Any], valid: Sequence[str]) -> None:
    for key in selection:
        if key not in valid:
            raise SelectionError(f"Invalid selection key: '{key}'. Valid keys are: {sorted(valid)}")


def unit_time_rows(units: np.ndarray, times: np.ndarray, n_times: int) -> np.ndarray:
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


def timepoints(selection: Mapping[str, Any], n_times: int) -> np.ndarray:
    """The time points a ``timepoints`` mask keeps (all without one)."""
    return binary(selection["timepoints"], "timepoints", n_times) if "timepoints" in selection else np.arange(n_times)

