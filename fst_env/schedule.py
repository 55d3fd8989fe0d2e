"""What a run trains on: stages of tasks, when to evaluate and checkpoint, and the config error type.

Kept free of torch so that the CLI and config files can be parsed and validated before anything heavy loads.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the field and what is allowed."""


def resolve_env_id(env_id: str) -> str:
    """The registered id behind ``env_id``: ``"my_module:myorg/Task-v0"`` imports ``my_module`` first (it registers
    the id, as with gymnasium's own ``module:EnvId`` strings; the working directory is searched too) and returns
    ``"myorg/Task-v0"``.

    Raises :class:`ConfigError` (one line) for a module that cannot be imported or an id that is not registered,
    naming the closest registered ids.
    """
    if not isinstance(env_id, str) or not env_id:
        raise ConfigError(f"env_id: must be a registered env id such as 'fst/MathReasoning-v0', got {env_id!r}")
    module, sep, bare = env_id.rpartition(":")
    if sep:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())  # as `python -m` does: the user's module usually sits where they run `fst`
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"env_id {env_id!r}: cannot import module {module!r} ({exc}); "
                              "is it on PYTHONPATH (run from its folder)?") from None
    else:
        bare = env_id
    if bare not in gym.registry:
        close = difflib.get_close_matches(bare, list(gym.registry), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        where = f" after importing {module!r}" if sep else ""
        raise ConfigError(f"env_id {bare!r} is not registered{where}.{hint} See `fst envs` for every id.")
    return bare


@dataclass
class Stage:
    """One task of a schedule: train on ``env_id`` (made with ``env_kwargs``) for ``steps`` updates."""

    env_id: str
    steps: int
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    reset_population: bool = False

    @property
    def task(self) -> str:
        """A name for the task that tells apart the same env with different kwargs."""
        if not self.env_kwargs:
            return self.env_id
        return self.env_id + "[" + ",".join(f"{k}={v}" for k, v in sorted(self.env_kwargs.items())) + "]"


@dataclass
class Schedule:
    """Stages run in order by one loop, plus when to evaluate and checkpoint (in updates; 0 = only at the end)."""

    stages: list[Stage]
    eval_every: int = 0
    eval_problems: int = 16
    eval_k: int = 1
    eval_split: str = "validation"
    eval_greedy: bool = True  # also evaluate greedy decoding (a second pass over the problems)
    kl_prompts: int = 8
    checkpoint_every: int = 0

    def validate(self) -> Schedule:
        if not self.stages:
            raise ConfigError("schedule.stages: at least one stage is required")
        for i, stage in enumerate(self.stages):
            try:
                stage.env_id = resolve_env_id(stage.env_id)
            except ConfigError as exc:
                raise ConfigError(f"stages[{i}].{exc}") from None
            if isinstance(stage.steps, bool) or not isinstance(stage.steps, int) or stage.steps < 1:
                raise ConfigError(f"stages[{i}].steps: must be an int >= 1, got {stage.steps!r}")
            try:  # the env's own config check, so a bad kwarg fails here in one line, not mid-run
                gym.make(stage.env_id, **stage.env_kwargs).close()
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"stages[{i}].env_kwargs: {exc}") from None
        for name in ("eval_every", "checkpoint_every", "kl_prompts"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"schedule.{name}: must be an int >= 0, got {getattr(self, name)!r}")
        for name in ("eval_problems", "eval_k"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"schedule.{name}: must be an int >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.eval_greedy, bool):
            raise ConfigError(f"schedule.eval_greedy: must be true or false, got {self.eval_greedy!r}")
        if self.eval_split not in ("train", "validation", "test"):
            raise ConfigError(f"schedule.eval_split: must be one of train, validation, test; got {self.eval_split!r}")
        return self

    @property
    def tasks(self) -> list[Stage]:
        """The distinct tasks of the schedule, in first-seen order."""
        return list({stage.task: stage for stage in self.stages}.values())

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)
