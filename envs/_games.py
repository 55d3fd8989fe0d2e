"""Shared parts of the text games in this folder: the drawn-game base class, config checks, text helpers.

Private to ``fst_env.envs`` (the leading underscore keeps the env discovery in ``envs/__init__.py`` from taking
it for a task family). Each game module (:mod:`fst_env.envs.word_guess`, :mod:`fst_env.envs.bargain`) builds on
:class:`DrawnGame`; the scripted players read observations with :func:`observation_line` and
:func:`observation_role`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import fields
from typing import Any, ClassVar, Generic, TypeVar

from fst_env.core import DEFAULT_MAX_RESPONSE_CHARS, Problem
from fst_env.multiagent import TextAECEnv
from fst_env.splits import ProceduralSplit

SPLIT_SIZES = {"train": 50_000, "validation": 1_000, "test": 1_000}


def fold(text: str) -> str:
    """Case- and accent-insensitive form of ``text`` (NFKD, combining marks dropped, casefolded)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def printable(text: str, limit: int = 300) -> str:
    """``text`` safe to echo in feedback: one line, control characters and lone surrogates escaped, capped."""
    out = []
    for ch in " ".join(text.split()):
        category = unicodedata.category(ch)
        out.append(ch.encode("unicode_escape").decode("ascii") if category in ("Cc", "Cs", "Cf") else ch)
    flat = "".join(out)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def validate_split_sizes(name: str, sizes: dict[str, int]) -> None:
    """Raise ValueError unless ``sizes`` gives a positive int size for train, validation and test."""
    for split in ("train", "validation", "test"):
        if not isinstance(sizes.get(split), int) or sizes[split] < 1:
            raise ValueError(f"{name}.split_sizes[{split!r}] must be a positive int, got {sizes.get(split)!r}")


def _config(cls: type, config: Any, overrides: dict[str, Any]) -> Any:
    if config is None:
        config = cls()
    elif not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    if overrides:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"{cls.__name__} has no fields {unknown}; its fields are {sorted(names)}")
        config = cls(**{**{f.name: getattr(config, f.name) for f in fields(cls)}, **overrides})
    config.validate()
    return config


_ConfigT = TypeVar("_ConfigT")


class DrawnGame(TextAECEnv, Generic[_ConfigT]):
    """A game whose problems are drawn from its config: the constructor and problem hooks the games here share.

    ``Game(config=None, *, split, max_response_chars, render_mode, **overrides)``: ``config`` (default:
    ``config_class()``) with ``overrides`` applied, validated, becomes :attr:`config`; its ``data_seed`` and
    ``split_sizes`` lay out the split. Subclasses set :attr:`roles` and :attr:`config_class` and implement
    :meth:`_generate`.
    """

    roles: ClassVar[tuple[str, ...]]
    config_class: ClassVar[type]

    def __init__(self, config: _ConfigT | None = None, *, split: str = "train",
                 max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS, render_mode: str | None = None,
                 **overrides: Any) -> None:
        super().__init__(self.roles, split, max_response_chars=max_response_chars, render_mode=render_mode)
        self.config: _ConfigT = _config(self.config_class, config, overrides)
        self._problems = ProceduralSplit(self._generate, seed=self.config.data_seed, split=split,
                                         size=self.config.split_sizes[split])

    def num_problems(self) -> int:
        return len(self._problems)

    def load_problem(self, problem_id: int) -> Problem:
        return self._problems[problem_id]

    def _generate(self, index: int) -> Problem:
        """The problem for generator index ``index``, deterministic in it (the split picks which indices it uses)."""
        raise NotImplementedError



def observation_line(observation: str, prefix: str) -> str | None:
    """The rest of the first line of ``observation`` that starts with ``prefix`` (stripped), or None."""
    for line in observation.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def observation_role(observation: str) -> tuple[str, str]:
    """``(game, role)`` from an observation's ``Game: <game>. Role: <role>.`` header; ValueError without one."""
    match = re.match(r"Game: (\w+)\. Role: (\w+)\.", observation)
    if match is None:
        raise ValueError(f"not an observation of a text game (no 'Game: ... Role: ...' header): "
                         f"{printable(observation, 80)!r}")
    return match.group(1), match.group(2)
