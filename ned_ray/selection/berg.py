"""BERG's selections (berg-spec §4-§8): which output rows a selection keeps, from a model's metadata
alone, with BERG's rules, order, duplicates and messages. Each family states its keys and its rule
(:mod:`ned_ray.families`); no torch: the driver checks a selection before anything is written, and
the encoders gather the same rows from the weights.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import ConfigError, SelectionError
from ..families import BY_KEY
from ..families.rules import Rows
from ..ids import select

__all__ = ["Rows", "resolve_selection", "berg_selections"]


def resolve_selection(family_key: str, metadata: Any, selection: Mapping[str, Any] | None = None,
                      where: str = "<metadata>") -> Rows:
    """The rows a BERG selection keeps, from the model's metadata alone (BERG's rules and messages)."""
    family = BY_KEY.get(family_key)
    if family is None or family.select_rows is None:
        valid = [f.key for f in BY_KEY.values() if f.select_rows is not None]
        raise ValueError(f"unknown BERG model family '{family_key}'; valid: {', '.join(valid)}")
    if selection is not None and not isinstance(selection, Mapping):
        raise SelectionError(f"a selection must be a dict of {list(family.selection_keys)}, got "
                             f"{type(selection).__name__}")
    return family.select_rows(metadata, dict(selection or {}), where)


def berg_selections(patterns: Mapping[str, Mapping[str, Any]], models: list) -> dict:
    """The BERG selection of each model (``{ModelId: dict}``), from patterns (ids or globs, as
    ``--models``) -> selection dicts: two patterns may not set one key of one model differently."""
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
