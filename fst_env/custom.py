"""Custom reward envs: a user's problems plus a reward function become a registered, checker-passing env.

The user's reward function is untrusted in the sense that it may be buggy: every call is guarded (any real
number type accepted, NaN/inf/non-numbers refused, out-of-range rewards clipped *and reported*, a deadline per
call, every exception but KeyboardInterrupt caught). See :class:`RewardTaskEnv`.
"""

from __future__ import annotations

import math
import numbers
import queue
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fst_env.cards import EnvCard, register_env
from fst_env.core import SPLITS, Outcome, Problem, TextEnv, Verdict

RewardFn = Callable[[str, dict[str, Any]], "float | tuple[float, str]"]
FeedbackFn = Callable[[str, dict[str, Any], float], str]
HintFn = Callable[[str, dict[str, Any], float], str]

#: Default deadline (seconds) on one reward_fn call.
DEFAULT_REWARD_TIMEOUT_S = 5.0
#: Timed-out reward_fn calls still running (in their threads) beyond which no new call is started.
MAX_STUCK_CALLS = 4

# Timed-out calls cannot be killed in-process; this counts the threads still running one (all tasks together).
_stuck_lock = threading.Lock()
_stuck_calls = 0


class _RewardWorker:
    """One daemon thread that runs reward_fn calls for one env, so a call can be given a deadline.

    A call past its deadline is abandoned: its thread keeps running it (Python cannot kill a thread) and is
    counted in ``_stuck_calls`` until the call returns; the next call gets a fresh thread.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue | None = None

    def _start(self) -> queue.SimpleQueue:
        jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, args=(jobs,), name="fst-reward-fn", daemon=True).start()
        return jobs

    @staticmethod
    def _serve(jobs: queue.SimpleQueue) -> None:
        global _stuck_calls
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, args, box, done = job
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # SystemExit & co. from user code: reported, not a dead worker
                box["exc"] = exc
            with _stuck_lock:
                if box.get("abandoned"):
                    _stuck_calls -= 1  # the timed-out call finally returned; this thread is no longer needed
                    return
                box["finished"] = True
            done.set()

    def call(self, fn: Callable[..., Any], args: tuple, timeout: float) -> dict[str, Any]:
        """Run ``fn(*args)``: ``{"value": ...}``, ``{"exc": exception}`` or ``{"timeout": True}``."""
        global _stuck_calls
        if self._jobs is None:
            self._jobs = self._start()
        box: dict[str, Any] = {}
        done = threading.Event()
        self._jobs.put((fn, args, box, done))
        if done.wait(timeout):
            return box
        with _stuck_lock:
            if box.get("finished"):  # finished between the wait's end and the lock
                return box
            box["abandoned"] = True
            _stuck_calls += 1
        self._jobs = None  # that thread is busy with the stuck call; a new one serves the next call
        return {"timeout": True}

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.put(None)
            self._jobs = None

    def __deepcopy__(self, memo: dict) -> _RewardWorker:
        return _RewardWorker()  # a copied env gets its own thread, started on its first call

    def __getstate__(self) -> dict[str, Any]:
        return {"_jobs": None}


def _real_value(value: Any) -> float | str:
    """``value`` as a float if it is a real number (Python, numpy or a 0-d tensor), else why it is not."""
    if isinstance(value, (bool, np.bool_)):
        return f"got a bool ({value!r}); return a number such as float(ok)"
    if isinstance(value, numbers.Real):  # int, float, Fraction, numpy integer and floating scalars
        result = float(value)
    elif isinstance(value, np.ndarray):
        if value.ndim != 0 or value.dtype.kind not in "iuf":
            return f"got a numpy array of shape {value.shape} and dtype {value.dtype}; return one real number"
        result = float(value.item())
    elif type(value).__module__.split(".")[0] == "torch" and "torch" in sys.modules:
        torch = sys.modules["torch"]  # only already-imported: a tensor cannot exist without torch loaded
        if not torch.is_tensor(value):
            return f"got {type(value).__name__}; return a number"
        if value.dim() != 0 or value.is_complex() or value.dtype == torch.bool:
            return f"got a tensor of shape {tuple(value.shape)} and dtype {value.dtype}; return one real number"
        result = float(value.detach().cpu().item())
    else:
        return f"got {type(value).__name__} {value!r:.120}"
    if not math.isfinite(result):
        return f"got {result!r}"
    return result


@dataclass
class _Task:
    splits: dict[str, Sequence[Mapping[str, Any]]]
    reward_fn: RewardFn
    feedback_fn: FeedbackFn | None
    prompt_key: str
    answer_key: str
    reward_range: tuple[float, float]
    hint_fn: HintFn | None = None
    reward_timeout_s: float | None = DEFAULT_REWARD_TIMEOUT_S
    warned_clip: bool = False


_TASKS: dict[str, _Task] = {}


class RewardTaskEnv(TextEnv):
    """A single-turn env over a user's problems, scored by a user's reward function.

    ``reward_fn(response, problem) -> reward | (reward, feedback)``. The reward may be any real number type
    (int, float, numpy scalar or 0-d array, 0-d torch tensor); a bool, NaN, inf, complex, string or non-scalar
    is an ``error`` verdict (reward 0) whose feedback says what came back. A reward outside the declared
    ``reward_range`` is clipped into it and reported: ``info["reward_clipped"] = True``, ``info["raw_reward"]``,
    a note in the feedback, :attr:`clipped_count` and one warning per task. Reaching the top of the range is
    ``correct``; anything lower is ``incorrect``; an empty response is a ``format_error`` and is not passed on.

    Each call runs in a worker thread under a deadline (``reward_timeout_s``, default
    :data:`DEFAULT_REWARD_TIMEOUT_S`; ``None`` calls it inline with no deadline). Past it the verdict is
    ``timeout`` with reward 0; the timed-out call *keeps running in its thread* (it cannot be killed
    in-process), and while :data:`MAX_STUCK_CALLS` such calls are still running no new call is started (verdict
    ``timeout`` at once). Any exception from the reward or feedback function other than KeyboardInterrupt
    (``SystemExit``, ``GeneratorExit`` too) is an ``error`` verdict; its text goes into ``info["error"]``.

    The policy-visible hint (``info["hint"]``) comes from ``hint_fn(response, problem, reward)`` when given, else
    a generic one that names the response's reward only: never from the feedback, which may name the answer.
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
        self.clipped_count = 0  # rewards clipped into the declared range by this env
        self._worker = _RewardWorker()
        weakref.finalize(self, self._worker.close)  # an env dropped without close() ends its idle thread too

    def num_problems(self) -> int:
        return len(self.task.splits[self.split])

    def load_problem(self, problem_id: int) -> Problem:
        row = dict(self.task.splits[self.split][problem_id])
        return Problem(prompt=str(row[self.task.prompt_key]), answer=row.get(self.task.answer_key),
                       metadata=row)

    def close(self) -> None:
        self._worker.close()
        super().close()

    def _call(self, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
        """A guarded call of a user function: ``{"value"}``, ``{"exc"}`` or ``{"timeout"}`` (see class doc)."""
        timeout = self.task.reward_timeout_s
        if timeout is None:
            try:
                return {"value": fn(*args)}
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit from a user's function must not end training
                return {"exc": exc}
        with _stuck_lock:
            stuck = _stuck_calls
        if stuck >= MAX_STUCK_CALLS:
            return {"timeout": True, "stuck": stuck}
        result = self._worker.call(fn, args, timeout)
        if isinstance(result.get("exc"), KeyboardInterrupt):
            raise result["exc"]
        return result

    def _failure(self, result: dict[str, Any], what: str) -> Outcome | None:
        if "exc" in result:
            exc = result["exc"]
            error = f"{type(exc).__name__}: {exc}"
            return Outcome(0.0, Verdict.ERROR, f"Error: the {what} raised {error}", info={"error": error})
        if result.get("timeout"):
            limit = self.task.reward_timeout_s
            if "stuck" in result:
                error = (f"not called: {result['stuck']} earlier {what} calls are still running past their "
                         f"{limit:g} s deadline")
            else:
                error = f"the {what} took longer than its {limit:g} s deadline (reward_timeout_s)"
            return Outcome(0.0, Verdict.TIMEOUT, f"Timeout: {error}.", info={"error": error})
        return None

    def judge(self, problem: Problem, response: str) -> Outcome:
        if not response.strip():
            return Outcome(0.0, Verdict.FORMAT_ERROR, "Format error: the response is empty; write an answer.")
        result = self._call(self.task.reward_fn, response, problem.metadata)
        failed = self._failure(result, "reward function")
        if failed is not None:
            return failed
        value = result["value"]
        feedback = None
        if isinstance(value, tuple):
            if len(value) != 2 or not isinstance(value[1], str):
                return _error("Error: the reward function must return a number or a (number, str) pair, "
                              f"got {value!r:.120}")
            value, feedback = value
        raw = _real_value(value)
        if isinstance(raw, str):
            return _error(f"Error: the reward function must return a finite real number; {raw}")
        low, high = self.task.reward_range
        reward = min(max(raw, low), high)
        info: dict[str, Any] = {}
        clip_note = ""
        if reward != raw:
            self.clipped_count += 1
            info.update(reward_clipped=True, raw_reward=raw)
            clip_note = f" (The reward function returned {raw:g}, outside [{low:g}, {high:g}]; clipped to {reward:g}.)"
            if not self.task.warned_clip:
                self.task.warned_clip = True
                warnings.warn(f"{self.task_id}: reward_fn returned {raw:g}, outside the declared reward_range "
                              f"[{low:g}, {high:g}]; clipping (info['reward_clipped'], env.clipped_count)",
                              RuntimeWarning, stacklevel=2)
        verdict = Verdict.CORRECT if reward >= high else Verdict.INCORRECT
        if feedback is None and self.task.feedback_fn is not None:
            result = self._call(self.task.feedback_fn, response, problem.metadata, reward)
            failed = self._failure(result, "feedback function")
            if failed is not None:
                return failed
            feedback = result["value"]
        if not feedback or not str(feedback).strip():
            feedback = _default_feedback(reward, verdict, problem.answer, high)
        hint = _default_hint(reward, verdict, high)
        if self.task.hint_fn is not None:
            result = self._call(self.task.hint_fn, response, problem.metadata, reward)
            failed = self._failure(result, "hint function")
            if failed is not None:
                return failed
            hint = str(result["value"]).strip() or hint
        return Outcome(reward, verdict, str(feedback) + clip_note, info=info, hint=hint)


def _error(feedback: str) -> Outcome:
    return Outcome(0.0, Verdict.ERROR, feedback, info={"error": feedback.removeprefix("Error: ")})


def _default_hint(reward: float, verdict: Verdict, high: float) -> str:
    # Built from the reward only: the default feedback names the expected answer, the hint must not.
    if verdict is Verdict.CORRECT:
        return "Your answer was correct."
    return f"Your answer was not accepted (reward {reward:g} of {high:g})."


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
                  prompt_key: str = "prompt", answer_key: str = "answer", hint_fn: HintFn | None = None,
                  reward_timeout_s: float | None = DEFAULT_REWARD_TIMEOUT_S, **env_kwargs: Any) -> str:
    """Register a custom reward env and return its id.

    ``problems`` is a list of dicts, any iterable of dicts or a ``datasets.Dataset`` (all in the ``train``
    split), or a mapping ``{"train": ..., "validation": ..., "test": ...}``. Each problem needs
    ``prompt_key``; ``answer_key`` is optional and used by the default feedback. ``reward_fn(response,
    problem)`` returns a float or ``(float, feedback)``; ``feedback_fn(response, problem, reward)`` is used
    when the reward function gives no feedback; ``hint_fn(response, problem, reward)`` gives the hint a later
    turn may show the policy (it must not reveal the answer; default: the reward only). Each call has a
    ``reward_timeout_s`` deadline (``None``: none, run inline); see :class:`RewardTaskEnv` for the guards.
    """
    if "/" not in env_id or "-v" not in env_id:
        raise ValueError(f"env_id must look like 'namespace/Name-v0', got {env_id!r}")
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
    if feedback_fn is not None and not callable(feedback_fn):
        raise TypeError(f"feedback_fn must be callable or None, got {type(feedback_fn).__name__}")
    if hint_fn is not None and not callable(hint_fn):
        raise TypeError(f"hint_fn must be callable or None, got {type(hint_fn).__name__}")
    if reward_timeout_s is not None and (isinstance(reward_timeout_s, bool)
                                         or not isinstance(reward_timeout_s, (int, float))
                                         or not 0 < reward_timeout_s < math.inf):
        raise ValueError(f"reward_timeout_s must be a positive number of seconds or None, got {reward_timeout_s!r}")
    low, high = (float(reward_range[0]), float(reward_range[1]))
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"reward_range must be two finite numbers (low, high) with low < high, got {reward_range!r}")
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
    _TASKS[env_id] = _Task(splits, reward_fn, feedback_fn, prompt_key, answer_key, (low, high), hint_fn,
                           None if reward_timeout_s is None else float(reward_timeout_s))
    register_env(env_id, RewardTaskEnv,
                 EnvCard(summary=summary or f"Custom reward task {env_id}", reward_range=reward_range,
                         feedback_kinds=("correct", "incorrect", "format_error", "error", "timeout"),
                         splits={name: len(rows) for name, rows in splits.items()},
                         data_source="user-supplied problems", licence="user's"),
                 kwargs={"task_id": env_id, **env_kwargs})
    return env_id
