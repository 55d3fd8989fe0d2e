"""Give a single-turn text env several attempts per problem, with the judge's hint (never its feedback) between them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
from gymnasium.error import ResetNeeded

from fst_env.core import Verdict, default_hint

#: The named ways to turn the attempts' rewards into the episode's reward.
REWARD_RULES: tuple[str, ...] = ("last", "max", "discounted")

RewardRule = str | Callable[[list[float]], float]


def retry_prompt(prompt: str, hint: str, attempt: int, max_attempts: int) -> str:
    """The observation before attempt ``attempt`` (>= 2): the original prompt, then the previous attempt's hint."""
    hint = hint.strip()
    stop = "" if hint.endswith((".", "!", "?")) else "."
    return (f"{prompt}\n\nYour previous answer was judged: {hint}{stop} Try again. "
            f"(Attempt {attempt} of {max_attempts}.)")


class MultiTurnRetry(gym.Wrapper[str, str, str, str], gym.utils.RecordConstructorArgs):
    """Turns a single-turn text env into a multi-turn one: retry the same problem until correct or out of attempts.

    Each step is one attempt, judged by the inner env. After a verdict other than ``correct`` with attempts left,
    the episode goes on: the inner env is reset to the same problem (``options={"problem_id": same id}``, the
    other reset options kept) and the next observation is the problem's prompt followed by
    ``"Your previous answer was judged: <hint>. Try again. (Attempt k of N.)"``. The hint is the inner env's
    ``info["hint"]`` (what the policy may see), never ``info["feedback"]``, which is for the learner and may name
    the expected answer or a working input: shown to the policy, copying it would win the retry.
    The episode terminates after a ``correct`` attempt or after ``max_attempts`` attempts.

    Rewards: every intermediate step gives 0 and the final step gives ``reward_rule`` applied to the attempts'
    rewards, so the episode return is exactly the rule:

    - ``"last"``: the final attempt's reward;
    - ``"max"``: the best attempt's reward;
    - ``"discounted"``: the final attempt's reward times ``gamma ** (attempts - 1)`` (a later success is worth less);
    - a callable ``rule(rewards: list[float]) -> float``.

    ``info`` on every step is the inner env's (feedback, verdict of that attempt) plus ``attempt`` (1-based) and
    ``attempt_rewards`` (the rewards so far). The inner env must accept ``options["problem_id"]`` and report
    ``info["problem_id"]`` on reset, as every fst-env task does; an inner step that does not end the inner episode
    still counts as one whole attempt (the inner env is reset for the next one).
    """

    def __init__(self, env: gym.Env[str, str], max_attempts: int = 3, reward_rule: RewardRule = "last", *,
                 gamma: float = 0.9) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, max_attempts=max_attempts, reward_rule=reward_rule,
                                                 gamma=gamma)
        gym.Wrapper.__init__(self, env)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"MultiTurnRetry: max_attempts must be an int >= 1, got {max_attempts!r}")
        if not callable(reward_rule) and reward_rule not in REWARD_RULES:
            raise ValueError(f"MultiTurnRetry: reward_rule must be one of {list(REWARD_RULES)} or a callable "
                             f"taking the list of attempt rewards, got {reward_rule!r}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"MultiTurnRetry: gamma must be in (0, 1], got {gamma}")
        self.max_attempts = max_attempts
        self.reward_rule = reward_rule
        self.gamma = float(gamma)
        # Per-episode state, re-initialised by reset.
        self._problem_id: int | None = None
        self._options: dict[str, Any] = {}
        self._rewards: list[float] = []
        self._done = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        problem_id = info.get("problem_id")
        if problem_id is None:
            raise ValueError("MultiTurnRetry: the inner env's reset info has no 'problem_id', so the same problem "
                             "cannot be posed again; wrap an fst-env task (a TextEnv)")
        self._problem_id = int(problem_id)
        self._options = dict(options or {})
        self._rewards = []
        self._done = False
        info = dict(info)
        info.update(attempt=1, attempt_rewards=[])
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if not isinstance(action, str):
            return self.env.step(action)  # the inner env raises its TypeError naming the env and the type
        if self._done:
            raise ResetNeeded("MultiTurnRetry: the episode has ended (correct answer or no attempts left); "
                              "call reset() before step()")
        obs, reward, _terminated, truncated, info = self.env.step(action)
        self._rewards.append(float(reward))
        attempt = len(self._rewards)
        info = dict(info)
        info.update(attempt=attempt, attempt_rewards=list(self._rewards))
        if info.get("verdict") == Verdict.CORRECT.value or attempt >= self.max_attempts:
            self._done = True
            return obs, self._episode_reward(), True, bool(truncated), info
        # Never the feedback (nor ``obs``: a terminated TextEnv's observation is its feedback).
        hint = str(info.get("hint") or "").strip() or default_hint(str(info.get("verdict", "")))
        prompt, _ = self.env.reset(options={**self._options, "problem_id": self._problem_id})
        return retry_prompt(prompt, hint, attempt + 1, self.max_attempts), 0.0, False, False, info

    def _episode_reward(self) -> float:
        rewards = list(self._rewards)
        if callable(self.reward_rule):
            return float(self.reward_rule(rewards))
        if self.reward_rule == "max":
            return max(rewards)
        if self.reward_rule == "discounted":
            return rewards[-1] * self.gamma ** (len(rewards) - 1)
        return rewards[-1]
