"""Gymnasium wrappers for text envs, one per module.

- :class:`ContextInjection`: put fast weights (a text context) into every observation or the system prompt.
- :class:`ChatFormat`: render observations with a tokenizer's chat template, keeping the episode's conversation.
- :class:`MultiTurnRetry`: retry a single-turn task with the judge's feedback until correct or out of attempts.
- :class:`TextEpisodeStatistics`: Gymnasium's episode statistics plus verdict counts and response lengths.
"""

from fst_env.wrappers.chat_format import ChatFormat
from fst_env.wrappers.context_injection import ContextInjection
from fst_env.wrappers.episode_stats import TextEpisodeStatistics
from fst_env.wrappers.multi_turn_retry import MultiTurnRetry

__all__ = ["ChatFormat", "ContextInjection", "MultiTurnRetry", "TextEpisodeStatistics"]
