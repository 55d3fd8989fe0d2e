"""The multi-agent text games under one name: a re-export module, plus the scripted player for every seat.

Each game lives in its own module with its scripted players and gym ids:

- :mod:`fst_env.envs.word_guess`: :class:`WordGuessGame` (cooperative), :class:`ScriptedDescriber`,
  :class:`ScriptedGuesser`, ``fst/WordGuess-v0`` (guesser seat) and ``fst/WordDescribe-v0`` (describer seat);
- :mod:`fst_env.envs.bargain`: :class:`BargainGame` (competitive), :class:`ConcedingBargainer`,
  ``fst/Bargain-v0``.

This module only hands their public names on, so ``from fst_env.envs.text_games import WordGuessGame`` (the
import path of earlier releases, used by ``examples/self_play.py``) keeps working; it registers no ids. It also
holds :func:`scripted_player`, the one policy that plays any seat of either game, because it spans both.
"""

from __future__ import annotations

from fst_env.envs._games import SPLIT_SIZES, fold, observation_role, printable
from fst_env.envs.bargain import ITEM_TYPES, BargainConfig, BargainGame, ConcedingBargainer, bargain_env
from fst_env.envs.word_guess import (
    CATEGORIES,
    CLUE_TEMPLATES,
    VOWELS,
    Feature,
    ScriptedDescriber,
    ScriptedGuesser,
    WordGuessConfig,
    WordGuessGame,
    feature_holds,
    leaked_piece,
    parse_features,
    word_describe_env,
    word_features,
    word_guess_env,
)

__all__ = [
    "CATEGORIES",
    "CLUE_TEMPLATES",
    "ITEM_TYPES",
    "SPLIT_SIZES",
    "VOWELS",
    "BargainConfig",
    "BargainGame",
    "ConcedingBargainer",
    "Feature",
    "ScriptedDescriber",
    "ScriptedGuesser",
    "WordGuessConfig",
    "WordGuessGame",
    "bargain_env",
    "feature_holds",
    "fold",
    "leaked_piece",
    "parse_features",
    "printable",
    "scripted_player",
    "word_describe_env",
    "word_features",
    "word_guess_env",
]

_SELF_PLAY_BARGAINER = ConcedingBargainer.preset("fair")
_SELF_PLAY_DESCRIBER = ScriptedDescriber("strong")
_SELF_PLAY_GUESSER = ScriptedGuesser()


def scripted_player(observation: str) -> str:
    """One scripted policy for every seat of every text game: it reads game and role from the observation header."""
    game, role = observation_role(observation)
    if game == "word_guess":
        return _SELF_PLAY_DESCRIBER(observation) if role == "describer" else _SELF_PLAY_GUESSER(observation)
    if game == "bargain":
        return _SELF_PLAY_BARGAINER(observation)
    raise ValueError(f"scripted_player does not know the game {game!r}")
