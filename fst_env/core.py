"""The text-environment core: one small base class every fst-env task derives from.

Contract (see DESIGN.md):
- observations and actions are ``str``; ``reset`` returns ``(prompt, info)``;
- ``step`` returns ``(obs, reward, terminated, truncated, info)`` with ``info["feedback"]`` (a non-empty,
  human-readable str for the *learner*: it may name the expected answer), ``info["hint"]`` (a non-empty str that
  may be shown to the *policy* in a later turn: never the expected answer or a working input) and
  ``info["verdict"]`` (one of :data:`VERDICTS`);
- the same seed, or ``options={"problem_id": k}``, gives the same problem, and the same action on it the same
  reward and feedback;
- any ``str`` is a legal action: model output never raises, a non-``str`` action is a caller bug (TypeError).
"""

from __future__ import annotations

import enum
import math
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from gymnasium.vector.utils import shared_memory as vector_shared_memory

from fst_env.cards import EnvCard

SPLITS: tuple[str, ...] = ("train", "validation", "test")

#: Longest observation (prompt plus any injected context); bounds AsyncVectorEnv's shared memory per env.
OBSERVATION_MAX_CHARS = 1 << 17

#: Responses longer than this are not parsed: they get reward 0 and a format-error feedback.
DEFAULT_MAX_RESPONSE_CHARS = 65_536


class Verdict(str, enum.Enum):
    """What happened to an action, as a machine-readable tag beside the free-text feedback."""

    CORRECT = "correct"
    INCORRECT = "incorrect"
    FORMAT_ERROR = "format_error"
    ERROR = "error"
    TIMEOUT = "timeout"


VERDICTS: frozenset[str] = frozenset(v.value for v in Verdict)

# Characters drawn by ``TextSpace.sample``; ``contains`` accepts any Unicode text.
_SAMPLE_CHARSET = "".join(chr(c) for c in range(32, 127)) + "\n\tαβγδπΣ√≤≥×÷°€中文字ñéü"


class TextSpace(spaces.Text):
    """A Gymnasium ``Text`` space that admits any text a model can write.

    ``spaces.Text`` only contains strings over a finite charset; model output can hold any Unicode
    character (even lone surrogates), so ``contains`` here accepts every ``str`` up to ``max_length``.
    ``sample`` draws short printable strings (at most ``sample_max_length`` characters) so that checkers
    and smoke tests stay fast even when ``max_length`` is large.
    """

    def __init__(self, max_length: int = DEFAULT_MAX_RESPONSE_CHARS, *, min_length: int = 0,
                 sample_max_length: int = 64, seed: int | np.random.Generator | None = None) -> None:
        super().__init__(max_length, min_length=min_length, charset=_SAMPLE_CHARSET, seed=seed)
        self.sample_max_length = max(min_length, min(sample_max_length, max_length))

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if mask is not None or probability is not None:
            return super().sample(mask=mask, probability=probability)
        length = int(self.np_random.integers(self.min_length, self.sample_max_length + 1))
        chars = self.np_random.choice(len(_SAMPLE_CHARSET), size=length)
        return "".join(_SAMPLE_CHARSET[i] for i in chars)

    def __repr__(self) -> str:
        return f"TextSpace(min_length={self.min_length}, max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return (isinstance(other, TextSpace) and self.min_length == other.min_length
                and self.max_length == other.max_length)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.min_length, self.max_length))


@dataclass(frozen=True)
class Problem:
    """One task instance: the prompt shown to the model, the reference answer and anything the judge needs."""

    prompt: str
    answer: Any
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """The judge's answer to one action.

    ``feedback`` is for the learner (fast-weight reflection, logs) and may name the expected answer; ``hint`` is
    what the policy may see in a later turn (retries, multi-turn tasks) and must not reveal the answer or a
    working input; ``None`` means the generic hint for the verdict (:func:`default_hint`).
    ``terminated=False`` (multi-turn tasks) continues the episode with ``next_observation``, which is shown to the
    policy and so must hold hint-level text only.
    """

    reward: float
    verdict: Verdict | str
    feedback: str
    terminated: bool = True
    next_observation: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    hint: str | None = None


_DEFAULT_HINTS: dict[str, str] = {
    "correct": "Your answer was correct.",
    "incorrect": "Your answer was incorrect.",
    "format_error": "Your answer could not be read: it was not in the required format.",
    "error": "Your answer could not be scored.",
    "timeout": "Scoring your answer took too long.",
}


#: Default for ``TextEnv(step_deadline_s=...)``: the longest one step's judging may take.
DEFAULT_STEP_DEADLINE_S = 5.0


def timeout_outcome(deadline_s: float, detail: str = "") -> Outcome:
    """The outcome of a response whose scoring passed the step deadline: reward 0, verdict ``timeout``."""
    extra = f" ({detail})" if detail else ""
    return Outcome(0.0, Verdict.TIMEOUT,
                   f"Timeout: scoring this response passed the step deadline of {deadline_s:g} s{extra}; it gets "
                   "no credit. Give a plain, short final answer in the required format.",
                   hint=f"Scoring your answer took longer than the {deadline_s:g} s limit, so it got no credit. "
                        "Give a plain, short final answer in the required format.")


def default_hint(verdict: str) -> str:
    """The hint for a verdict when the task gives none: the verdict in words, nothing about the answer."""
    return _DEFAULT_HINTS.get(verdict, _DEFAULT_HINTS["error"])


class TextEnv(gym.Env[str, str]):
    """Base class for a text task that returns a reward and textual feedback.

    Subclasses set :attr:`card`, provide their problems (assign ``self.problems``, a sequence of
    :class:`Problem` such as a :class:`~fst_env.splits.ProceduralSplit`, or override :meth:`num_problems` and
    :meth:`load_problem`) and implement :meth:`judge`; a multi-turn task returns ``Outcome(terminated=False)``.
    The base class handles seeding, problem selection (``problem_id``), splits, type checks, oversized responses
    and judge exceptions, so every task gets the same guarantees.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "human"], "render_fps": 1}
    card: ClassVar[EnvCard | None] = None

    def __init__(self, split: str = "train", *, max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS,
                 render_mode: str | None = None, step_deadline_s: float = DEFAULT_STEP_DEADLINE_S) -> None:
        if split not in SPLITS:
            raise ValueError(f"{self._name()}: split must be one of {list(SPLITS)}, got {split!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"{self._name()}: render_mode must be one of "
                             f"{self.metadata['render_modes']} or None, got {render_mode!r}")
        if max_response_chars < 1:
            raise ValueError(f"{self._name()}: max_response_chars must be >= 1, got {max_response_chars}")
        if isinstance(step_deadline_s, bool) or not isinstance(step_deadline_s, (int, float)) \
                or not math.isfinite(step_deadline_s) or not 0 < step_deadline_s <= 600:
            raise ValueError(f"{self._name()}: step_deadline_s must be a number of seconds in (0, 600], "
                             f"got {step_deadline_s!r}")
        self.split = split
        self.render_mode = render_mode
        self.max_response_chars = max_response_chars
        #: Longest one judge may take; isolated scoring is killed at it, an in-process overrun scores ``timeout``.
        self.step_deadline_s = float(step_deadline_s)
        self.observation_space = TextSpace(max_length=OBSERVATION_MAX_CHARS)
        # The action space admits anything; oversized actions are judged as format errors, not rejected.
        self.action_space = TextSpace(max_length=1 << 24)
        low, high = self.card.reward_range if self.card else (0.0, 1.0)
        self.reward_range = (low, high)
        self.problems: Sequence[Problem] | None = None
        self.problem: Problem | None = None
        self.problem_id: int | None = None
        self._needs_reset = True
        self._turn = 0
        self._last_text = ""

    # ----------------------------------------------------------------- subclass hooks
    def num_problems(self) -> int:
        """How many problems the current split holds (``len(self.problems)`` unless overridden)."""
        if self.problems is None:
            raise NotImplementedError(f"{type(self).__name__}: set self.problems or override num_problems()")
        return len(self.problems)

    def load_problem(self, problem_id: int) -> Problem:
        """Problem ``problem_id`` of the current split, deterministic (``self.problems[problem_id]`` by default)."""
        if self.problems is None:
            raise NotImplementedError(f"{type(self).__name__}: set self.problems or override load_problem()")
        return self.problems[problem_id]

    def judge(self, problem: Problem, response: str) -> Outcome:
        """Score a response on a problem. May raise; the base class turns exceptions into ``error``."""
        raise NotImplementedError

    def oracle_response(self) -> str | None:
        """A response that earns full reward on the current problem, where the task knows one (None if not).

        Used by tests and benchmarks across the registry; never shown to the agent.
        """
        return None

    # ----------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        options = dict(options or {})
        n = self.num_problems()
        if n <= 0:
            raise ValueError(f"{self._name()}: split {self.split!r} holds no problems")
        if options.get("problem_id") is not None:
            problem_id = options["problem_id"]
            if isinstance(problem_id, (bool, np.bool_)) or not isinstance(problem_id, (int, np.integer)):
                raise TypeError(f"{self._name()}: options['problem_id'] must be an int, "
                                f"got {type(problem_id).__name__}")
            if not 0 <= problem_id < n:
                raise ValueError(f"{self._name()}: problem_id must be in [0, {n}) for split "
                                 f"{self.split!r}, got {problem_id}")
            problem_id = int(problem_id)
        else:
            problem_id = int(self.np_random.integers(n))
        self.problem_id = problem_id
        self.problem = self.load_problem(problem_id)
        self._needs_reset = False
        self._turn = 0
        self._last_text = self.problem.prompt
        return self.problem.prompt, self._base_info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if not isinstance(action, str):
            raise TypeError(f"{self._name()}.step expects a str action (the model's text), got "
                            f"{type(action).__name__}: {action!r:.80}")
        if self._needs_reset or self.problem is None:
            raise ResetNeeded(f"{self._name()}: call reset() before step() "
                              f"(the episode {'has ended' if self.problem is not None else 'has not started'})")
        self._turn += 1
        outcome = self._safe_judge(action)
        verdict = outcome.verdict.value if isinstance(outcome.verdict, Verdict) else str(outcome.verdict)
        if verdict not in VERDICTS:
            verdict = Verdict.ERROR.value
        feedback = outcome.feedback.strip() or f"{verdict}: no further detail."
        low, high = self.reward_range
        reward = float(np.clip(outcome.reward, low, high)) if np.isfinite(outcome.reward) else low
        info = self._base_info()
        info.update(outcome.info)
        hint = (outcome.hint or "").strip() or default_hint(verdict)
        info.update(feedback=feedback, hint=hint, verdict=verdict, turn=self._turn)
        if outcome.terminated:
            self._needs_reset = True
            observation = feedback
        else:
            observation = outcome.next_observation or hint
        self._last_text = observation
        return observation, reward, bool(outcome.terminated), False, info

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._last_text
        if self.render_mode == "human":
            print(self._last_text)
        return None

    # ----------------------------------------------------------------- helpers
    def _safe_judge(self, action: str) -> Outcome:
        if len(action) > self.max_response_chars:
            return Outcome(0.0, Verdict.FORMAT_ERROR,
                           f"Format error: the response has {len(action):,} characters, over this task's "
                           f"limit of {self.max_response_chars:,}. Answer concisely.")
        started = time.monotonic()
        try:
            outcome = self.judge(self.problem, action)
        except Exception as exc:  # a judge bug must not crash a training run
            outcome = Outcome(0.0, Verdict.ERROR,
                              f"Error: the task could not score this response ({type(exc).__name__}: {exc}).")
        elapsed = time.monotonic() - started
        if elapsed > self.step_deadline_s and outcome.verdict not in (Verdict.TIMEOUT, Verdict.TIMEOUT.value):
            # An in-process judge cannot be interrupted; one that overran gets no credit for what it found.
            return timeout_outcome(self.step_deadline_s, f"scoring took {elapsed:.1f} s")
        return outcome

    def _base_info(self) -> dict[str, Any]:
        return {"problem_id": self.problem_id, "split": self.split}

    def _name(self) -> str:
        spec = getattr(self, "spec", None)
        return spec.id if spec is not None else type(self).__name__


# AsyncVectorEnv's shared memory for ``spaces.Text`` stores charset indices and silently drops every other
# character, which blanks model text. TextSpace stores code points instead (any character, surrogates too),
# with the length in the first slot.
@vector_shared_memory.create_shared_memory.register(TextSpace)
def _create_text_memory(space: TextSpace, n: int = 1, ctx: Any = multiprocessing) -> Any:
    return ctx.Array(np.dtype(np.int32).char, n * (space.max_length + 1))


class _SharedTextBatch(Sequence):
    """A live view of the texts in shared memory.

    AsyncVectorEnv reads its shared memory once, at construction, and relies on getting a view that later
    writes show through (true of numpy arrays, not of a tuple of str). Copies (``deepcopy``, which the vector
    env returns by default) are plain tuples.
    """

    def __init__(self, rows: np.ndarray) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return tuple(self)[index]
        row = self._rows[index]
        return "".join(map(chr, row[1: 1 + row[0]]))

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, Sequence) else other)

    __hash__ = None  # mutable view

    def __deepcopy__(self, memo: dict) -> tuple[str, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        return repr(tuple(self))


@vector_shared_memory.read_from_shared_memory.register(TextSpace)
def _read_text_memory(space: TextSpace, shared_memory: Any, n: int = 1) -> _SharedTextBatch:
    return _SharedTextBatch(np.frombuffer(shared_memory.get_obj(), dtype=np.int32).reshape((n, space.max_length + 1)))


@vector_shared_memory.write_to_shared_memory.register(TextSpace)
def _write_text_memory(space: TextSpace, index: int, value: str, shared_memory: Any) -> None:
    if len(value) > space.max_length:
        raise ValueError(f"observation of {len(value):,} characters exceeds the space's max_length "
                         f"{space.max_length:,}; use AsyncVectorEnv(shared_memory=False) for longer text")
    size = space.max_length + 1
    row = np.frombuffer(shared_memory.get_obj(), dtype=np.int32)[index * size: (index + 1) * size]
    row[0] = len(value)
    row[1: 1 + len(value)] = np.fromiter(map(ord, value), dtype=np.int32, count=len(value))
