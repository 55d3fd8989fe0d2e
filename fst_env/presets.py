"""Difficulty presets for a task family's config dataclass, with per-field overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

ConfigT = TypeVar("ConfigT")


def preset_config(env_id: str, presets: Mapping[str, ConfigT], difficulty: str | None, overrides: Mapping[str, Any],
                  default: str = "medium") -> ConfigT:
    """A validated config: the ``difficulty`` preset (``default`` when None) with ``overrides`` applied.

    An unknown difficulty is a ValueError; an unknown override is a TypeError listing the config's fields.
    """
    if difficulty is not None and difficulty not in presets:
        raise ValueError(f"difficulty must be one of {list(presets)} or None, got {difficulty!r}")
    base = presets[difficulty or default]
    fields = [f.name for f in dataclasses.fields(base)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise TypeError(f"{env_id} has no option {unknown}; its config fields are {fields}")
    config = dataclasses.replace(base, **overrides)
    config.validate()
    return config
