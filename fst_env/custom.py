"""Custom reward envs: a user's problems plus a reward function become a registered, checker-passing env."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fst_env.cards import EnvCard, register_env
from fst_env.core import SPLITS, Outcome, Problem, TextEnv, Verdict

RewardFn = Callable[[str, dict[str, Any]], "float | tuple[float, str]"]
FeedbackFn = Callable[[str, dict[str, Any], float], str]


@dataclass
class _Task:
    splits: dict[str, Sequence[Mapping[str, Any]]]
    reward_fn: RewardFn
    feedback_fn: FeedbackFn | None
    prompt_key: str
    answer_key: str
    reward_range: tuple[float, float]


_TASKS: dict[str, _Task] = {}


class RewardTaskEnv(TextEnv):
    """A single-turn env over a user's problems, scored by a user's reward function.

    ``reward_fn(response, problem) -> float | (float, feedback)``. Reaching the top of the reward range is
    ``correct``; anything lower is ``incorrect``; an empty response is a ``format_error`` and is not passed to
    ``reward_fn``. Exceptions and malformed returns from ``reward_fn`` become reward 0 with an ``error``
    verdict whose feedback names the problem.
    """

    def __init__(self, task_id: str, split: str = "train", **kwargs: Any) -> None:
        if task_id not in _TASKS:
            raise KeyError(f"no custom task {task_id!r}: register it with fst_env.register_task first")
        self.task_id = task_id
        self.task = _TASKS[task_id]
        from fst_env.cards import card

        self.card = card(task_id)
        super().__init__(split, **kwargs)
        if split not in self.task.splits:
            have = [s for s in SPLITS if s in self.task.splits]
            raise ValueError(f"{task_id} has no {split!r} split (it has {have}); pass problems as a mapping "
                             "like {'train': [...], 'validation': [...]} to register held-out splits")

    def num_problems(self) -> int:
        return len(self.task.splits[self.split])

    def load_problem(self, problem_id: int) -> Problem:
        row = dict(self.task.splits[self.split][problem_id])
        return Problem(prompt=str(row[self.task.prompt_key]), answer=row.get(self.task.answer_key),
                       metadata=row)

    def judge(self, problem: Problem, response: str) -> Outcome:
        if not response.strip():
            return Outcome(0.0, Verdict.FORMAT_ERROR, "Format error: the response is empty; write an answer.")
        try:
            result = self.task.reward_fn(response, problem.metadata)
        except Exception as exc:
            return Outcome(0.0, Verdict.ERROR, f"Error: the reward function raised {type(exc).__name__}: {exc}")
        feedback = None
        if isinstance(result, tuple):
            if len(result) != 2 or not isinstance(result[1], str):
                return Outcome(0.0, Verdict.ERROR, "Error: the reward function must return a float or a "
                                                   f"(float, str) pair, got {result!r:.120}")
            result, feedback = result
        if isinstance(result, bool) or not isinstance(result, (int, float)) or not math.isfinite(result):
            return Outcome(0.0, Verdict.ERROR, "Error: the reward function must return a finite number, "
                                               f"got {result!r:.120}")
        reward = float(result)
        low, high = self.task.reward_range
        verdict = Verdict.CORRECT if reward >= high else Verdict.INCORRECT
        if feedback is None and self.task.feedback_fn is not None:
            feedback = self.task.feedback_fn(response, problem.metadata, reward)
        if not feedback or not str(feedback).strip():
            feedback = _default_feedback(reward, verdict, problem.answer, high)
        return Outcome(min(max(reward, low), high), verdict, str(feedback))


def _default_feedback(reward: float, verdict: Verdict, expected: Any, high: float) -> str:
    expected_text = f" The expected answer is {expected!r}." if expected is not None else ""
    if verdict is Verdict.CORRECT:
        return f"Correct (reward {reward:g})." + (f" It matches the expected answer {expected!r}."
                                                  if expected is not None else "")
    return f"Incorrect (reward {reward:g} of {high:g}).{expected_text}"


def _as_rows(problems: Any, where: str) -> Sequence[Mapping[str, Any]]:
    if isinstance(problems, (str, bytes)) or not isinstance(problems, Iterable):
        raise TypeError(f"{where} must be a list of dicts, an iterable of dicts or a datasets.Dataset, "
                        f"got {type(problems).__name__}")
    if hasattr(problems, "__getitem__") and hasattr(problems, "__len__") and not isinstance(problems, Mapping):
        return problems  # a list or a datasets.Dataset: indexable without copying
    return list(problems)


def register_task(env_id: str, problems: Any, reward_fn: RewardFn, feedback_fn: FeedbackFn | None = None, *,
                  summary: str | None = None, reward_range: tuple[float, float] = (0.0, 1.0),
                  prompt_key: str = "prompt", answer_key: str = "answer", **env_kwargs: Any) -> str:
    """Register a custom reward env and return its id.

    ``problems`` is a list of dicts, any iterable of dicts or a ``datasets.Dataset`` (all in the ``train``
    split), or a mapping ``{"train": ..., "validation": ..., "test": ...}``. Each problem needs
    ``prompt_key``; ``answer_key`` is optional and used by the default feedback. ``reward_fn(response,
    problem)`` returns a float or ``(float, feedback)``; ``feedback_fn(response, problem, reward)`` is used
    when the reward function gives no feedback.
    """
    if "/" not in env_id or "-v" not in env_id:
        raise ValueError(f"env_id must look like 'namespace/Name-v0', got {env_id!r}")
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
    if feedback_fn is not None and not callable(feedback_fn):
        raise TypeError(f"feedback_fn must be callable or None, got {type(feedback_fn).__name__}")
    raw = problems if isinstance(problems, Mapping) else {"train": problems}
    unknown = set(raw) - set(SPLITS)
    if unknown:
        raise ValueError(f"problems has unknown split names {sorted(unknown)}; use {list(SPLITS)}")
    splits = {name: _as_rows(rows, f"problems[{name!r}]") for name, rows in raw.items()}
    seen: dict[str, str] = {}
    for name, rows in splits.items():
        if len(rows) == 0:
            raise ValueError(f"{env_id}: split {name!r} has no problems")
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping) or prompt_key not in row:
                raise ValueError(f"{env_id}: problem {i} of split {name!r} must be a dict with a "
                                 f"{prompt_key!r} key, got {row!r:.120}")
            prompt = str(row[prompt_key])
            if seen.setdefault(prompt, name) != name:
                raise ValueError(f"{env_id}: splits must be disjoint, but problem {prompt[:60]!r} is in both "
                                 f"{seen[prompt]!r} and {name!r}")
    _TASKS[env_id] = _Task(splits, reward_fn, feedback_fn, prompt_key, answer_key,
                           (float(reward_range[0]), float(reward_range[1])))
    register_env(env_id, RewardTaskEnv,
                 EnvCard(summary=summary or f"Custom reward task {env_id}", reward_range=reward_range,
                         feedback_kinds=("correct", "incorrect", "format_error", "error"),
                         splits={name: len(rows) for name, rows in splits.items()},
                         data_source="user-supplied problems", licence="user's"),
                 kwargs={"task_id": env_id, **env_kwargs})
    return env_id
