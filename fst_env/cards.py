"""Env cards: what a task is, how it rewards, what feedback it gives, and how it is registered.

A card travels with the registry entry: ``gym.spec(id).card`` after registration, and ``fst_env.describe(id)``
prints it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

NAMESPACE = "fst"


@dataclass(frozen=True)
class EnvCard:
    """Facts about a registered task, for people and for tooling (README table, ``fst envs``)."""

    summary: str
    reward_range: tuple[float, float] = (0.0, 1.0)
    feedback_kinds: tuple[str, ...] = ("correct", "incorrect", "format_error")
    difficulty_knobs: Mapping[str, str] = field(default_factory=dict)
    splits: Mapping[str, int] = field(default_factory=dict)
    data_source: str = ""
    licence: str = ""
    turns: str = "single"
    notes: str = ""

    def validate(self) -> None:
        low, high = self.reward_range
        if not low < high:
            raise ValueError(f"EnvCard.reward_range must be (low, high) with low < high, got {self.reward_range}")
        if not self.summary.strip():
            raise ValueError("EnvCard.summary must be a non-empty sentence")
        if self.turns not in ("single", "multi"):
            raise ValueError(f"EnvCard.turns must be 'single' or 'multi', got {self.turns!r}")

    def render(self, env_id: str = "") -> str:
        knobs = ", ".join(f"{k} ({v})" for k, v in self.difficulty_knobs.items()) or "none"
        splits = ", ".join(f"{k}={v:,}" for k, v in self.splits.items()) or "n/a"
        lines = [
            f"{env_id}" if env_id else "",
            f"  {self.summary}",
            f"  reward range   : {self.reward_range[0]:g} .. {self.reward_range[1]:g}",
            f"  feedback kinds : {', '.join(self.feedback_kinds)}",
            f"  turns          : {self.turns}",
            f"  difficulty     : {knobs}",
            f"  splits         : {splits}",
            f"  data source    : {self.data_source or 'n/a'}",
            f"  licence        : {self.licence or 'n/a'}",
        ]
        if self.notes:
            lines.append(f"  notes          : {self.notes}")
        return "\n".join(line for line in lines if line)


_CARDS: dict[str, EnvCard] = {}


def register_env(env_id: str, entry_point: str | Callable[..., gym.Env], card: EnvCard,
                 kwargs: dict[str, Any] | None = None, max_episode_steps: int | None = None,
                 **spec_kwargs: Any) -> None:
    """Register ``env_id`` with Gymnasium and attach its card (re-registration replaces both)."""
    card.validate()
    if env_id in gym.registry:
        del gym.registry[env_id]
    gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs or {},
                 max_episode_steps=max_episode_steps, **spec_kwargs)
    gym.spec(env_id).card = card  # EnvSpec is a plain dataclass; the card rides on the registry entry
    _CARDS[env_id] = card


def card(env_id: str) -> EnvCard:
    """The card of a registered env id."""
    if env_id not in _CARDS:
        spec = gym.spec(env_id)  # raises gymnasium's clear "not found" error for unknown ids
        found = getattr(spec, "card", None)
        if found is None:
            raise KeyError(f"{env_id} is registered with Gymnasium but has no fst-env card")
        return found
    return _CARDS[env_id]


def registered_ids(namespace: str | None = NAMESPACE) -> list[str]:
    """All ids with a card, optionally only those in ``namespace`` (``None`` for all)."""
    return sorted(i for i in _CARDS if namespace is None or i.startswith(f"{namespace}/"))


def describe(env_id: str) -> str:
    """A printable description of a registered env: its card and how to make it."""
    return card(env_id).render(env_id)


def markdown_table(namespace: str | None = NAMESPACE) -> str:
    """The registered envs as a Markdown table (the README's table is generated from this)."""
    rows = ["| id | what it is | reward | turns | difficulty knobs |", "|---|---|---|---|---|"]
    for env_id in registered_ids(namespace):
        c = _CARDS[env_id]
        knobs = ", ".join(f"`{k}`" for k in c.difficulty_knobs) or "-"
        summary = c.summary.replace("|", "\\|")
        rows.append(f"| `{env_id}` | {summary} | {c.reward_range[0]:g}..{c.reward_range[1]:g} | {c.turns} "
                    f"| {knobs} |")
    return "\n".join(rows)
