"""Episode statistics for text envs: Gymnasium's return / length / time plus verdicts and response lengths."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.wrappers import RecordEpisodeStatistics

from fst_env.core import Verdict


class TextEpisodeStatistics(RecordEpisodeStatistics):
    """Gymnasium's :class:`~gymnasium.wrappers.RecordEpisodeStatistics` with what a text task adds.

    At the end of an episode ``info[stats_key]`` (``"episode"`` by default) holds Gymnasium's ``r`` (return),
    ``l`` (steps) and ``t`` (seconds), plus:

    - ``verdicts``: ``{verdict: count}`` over the episode's steps, with every verdict of
      :class:`fst_env.Verdict` present (zeros included, so vector envs and loggers see fixed keys); a step whose
      info has no recognised verdict is counted under ``"unknown"`` (always present too);
    - ``response_chars``: total characters of the episode's actions (``str`` actions only);
    - ``mean_response_chars``: ``response_chars / l``.

    The per-episode counters are re-initialised on reset; only Gymnasium's bounded queues
    (``return_queue``, ``length_queue``, ``time_queue``) outlive an episode, as in the parent class.
    """

    def __init__(self, env: gym.Env[str, str], buffer_length: int = 100, stats_key: str = "episode") -> None:
        super().__init__(env, buffer_length=buffer_length, stats_key=stats_key)
        self.episode_verdicts: dict[str, int] = self._zero_verdicts()
        self.episode_response_chars = 0

    @staticmethod
    def _zero_verdicts() -> dict[str, int]:
        return {**{v.value: 0 for v in Verdict}, "unknown": 0}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        obs, info = super().reset(seed=seed, options=options)
        self.episode_verdicts = self._zero_verdicts()
        self.episode_response_chars = 0
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = super().step(action)
        # A text env has raised on a non-str action by now; a non-text env's actions add no characters.
        self.episode_response_chars += len(action) if isinstance(action, str) else 0
        verdict = info.get("verdict")
        key = verdict if isinstance(verdict, str) and verdict in self.episode_verdicts else "unknown"
        self.episode_verdicts[key] += 1
        if terminated or truncated:
            stats = info[self._stats_key]
            length = max(int(stats["l"]), 1)
            stats.update(verdicts=dict(self.episode_verdicts), response_chars=self.episode_response_chars,
                         mean_response_chars=self.episode_response_chars / length)
        return obs, reward, terminated, truncated, info
