"""The fast learners' bridge to gepa: the evaluate-fn and proposer shapes, reflective records, the rollout adapter.

gepa's ``ReflectiveMutationProposer`` drives three things of ours, all here: :class:`RolloutAdapter` (gepa's
``GEPAAdapter`` over the agent's :data:`EvaluateFn`, reusing rollouts already generated), :class:`ProposerStrategy`
(gepa's ``ReflectionLM`` over any :class:`Proposer`, keeping its errors for the round's metrics) and
:class:`GepaLog` (gepa's logger onto :mod:`logging`). The record format the proposers read
(:func:`format_feedback` / :func:`parse_feedback`) and :func:`clean_text`, which every text taken from a model
passes through, live here too, so proposers and the round depend on this module and never on each other's.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from gepa.core.adapter import EvaluationBatch
from gepa.proposer.reflective_mutation.reflection_lm import ReflectionProposal

from fst_env.agents.reflection import ReflectionConfigError
from fst_env.agents.rollout import Rollout
from fst_env.context import Context

logger = logging.getLogger(__name__)

#: The agent supplies this: run the CURRENT policy with ``context`` on each problem key and return the scored
#: rollouts (one or more per key, ``Rollout.group`` = the key, with reward, feedback and verdict filled in).
EvaluateFn = Callable[[Context, list[str]], list[Rollout]]

#: Reflective records, per component: gepa's ``make_reflective_dataset`` output.
ReflectiveDataset = Mapping[str, Sequence[Mapping[str, Any]]]


@runtime_checkable
class Proposer(Protocol):
    """Proposes new component texts from a parent context and reflective records (gepa's ``ProposalFn`` shape).

    ``__call__(parent, reflective_dataset, components_to_update)`` returns ``{component: new text}`` for the
    components it changes (returning the whole new context is fine: unchanged components and components not in
    ``components_to_update`` are ignored); an empty dict means "no proposal" (the parent is kept and no budget is
    spent on a child). ``reflective_dataset[component]`` is a list of records ``{"Inputs", "Generated Outputs",
    "Feedback"}`` (see :func:`format_feedback`). A proposer may also implement gepa's ``ReflectionLM.reflect`` to
    return prompts, raw outputs and metadata for the logs; the learner then uses that.
    """

    def __call__(self, candidate: Context, reflective_dataset: ReflectiveDataset,
                 components_to_update: list[str]) -> dict[str, str]: ...


# ============================================================================================== records
def format_feedback(reward: float, verdict: str, feedback: str) -> str:
    """The "Feedback" field of a reflective record: ``Score: 0 (format_error). <env feedback>``."""
    head = f"Score: {reward:g}" + (f" ({verdict})" if verdict else "")
    return f"{head}. {feedback.strip() or '(the environment gave no feedback)'}"


_FEEDBACK_RE = re.compile(r"^Score: (?P<score>[-+0-9.eEinfa]+)(?: \((?P<verdict>[a-z_]+)\))?\. (?P<body>.*)$",
                          re.DOTALL)


def parse_feedback(text: str) -> tuple[float | None, str, str]:
    """Inverse of :func:`format_feedback`: ``(score or None, verdict or "", env feedback)``."""
    match = _FEEDBACK_RE.match(text or "")
    if not match:
        return None, "", text or ""
    try:
        score: float | None = float(match["score"])
    except ValueError:
        score = None
    return score, match["verdict"] or "", match["body"]


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str, limit: int) -> str:
    """Printable, valid-UTF-8 text of at most ``limit`` characters (head and tail kept, the middle elided).

    Model output may hold lone surrogates or control characters; they would break tokenizers and JSON logs.
    """
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    text = _CONTROL.sub("", text)
    if len(text) <= limit:
        return text
    half = max(limit // 2 - 10, 1)
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters elided ...]\n{text[-half:]}"


def context_key(context: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Identity of a context for rollout reuse: its non-empty components (an absent and an empty component
    render the same prompt)."""
    return tuple(sorted((k, v) for k, v in context.items() if v))


# ============================================================================================== gepa adapter
class RolloutAdapter:
    """gepa ``GEPAAdapter`` over the agent's :data:`EvaluateFn`, with reuse of rollouts already generated.

    A data instance is a problem key. Rollouts are remembered per (context, key): the recent RL rollouts first,
    then every rollout generated in the round (fresher, so it replaces older ones). ``evaluate`` reuses them and
    reports only what it generated as gepa's ``num_metric_calls``, so the budget counts real rollouts.
    """

    propose_new_texts = None  # proposals come from the learner's reflection strategy

    def __init__(self, evaluate: EvaluateFn, *, max_records_per_problem: int, max_field_chars: int,
                 minibatch_samples: int = 1) -> None:
        self._evaluate_fn = evaluate
        self.minibatch_samples = minibatch_samples
        self.max_records_per_problem = max_records_per_problem
        self.max_field_chars = max_field_chars
        self._memory: dict[tuple[tuple[tuple[str, str], ...], str], list[Rollout]] = {}
        self.generated = 0
        self.reused = 0
        self.max_rollouts_per_key = 1

    def remember(self, rollouts: Sequence[Rollout]) -> None:
        """Make ``rollouts`` (e.g. the recent RL rollouts) reusable; several per (context, key) are kept."""
        fresh: dict[tuple[tuple[tuple[str, str], ...], str], list[Rollout]] = {}
        for rollout in rollouts:
            if not isinstance(rollout, Rollout):
                raise TypeError(f"fast learner: recent_rollouts must hold Rollout objects, got "
                                f"{type(rollout).__name__}")
            fresh.setdefault((context_key(rollout.context), rollout.group), []).append(rollout)
        self._memory.update(fresh)

    def remembered(self, context: Context, key: str) -> int:
        """How many rollouts of ``context`` on problem ``key`` are remembered."""
        return len(self._memory.get((context_key(context), key), ()))

    def rollouts_for(self, context: Context, keys: Sequence[str], *, reuse: bool,
                     samples: int = 1) -> tuple[dict[str, list[Rollout]], int]:
        """Rollouts of ``context`` on every key in ``keys`` (remembered ones when ``reuse`` and there are at least
        ``samples`` of them; otherwise ``samples`` requests per key are generated) and how many were generated."""
        ckey = context_key(context)
        result: dict[str, list[Rollout]] = {}
        missing: list[str] = []
        for key in dict.fromkeys(keys):
            remembered = self._memory.get((ckey, key)) if reuse else None
            if remembered and len(remembered) >= samples:
                result[key] = remembered
                self.reused += len(remembered)
            else:
                missing.append(key)
        if not missing:
            return result, 0
        rollouts = self._evaluate_fn(dict(context), [key for key in missing for _ in range(samples)])
        self._check(rollouts, missing)
        self.generated += len(rollouts)
        fresh: dict[str, list[Rollout]] = {}
        for rollout in rollouts:
            fresh.setdefault(rollout.group, []).append(rollout)
        for key in missing:
            result[key] = fresh[key]
            self._memory[(ckey, key)] = fresh[key]
            # Rollouts per requested (key, sample): an evaluate fn may return several per request.
            self.max_rollouts_per_key = max(self.max_rollouts_per_key, math.ceil(len(fresh[key]) / samples))
        return result, len(rollouts)

    @staticmethod
    def _check(rollouts: Any, keys: Sequence[str]) -> None:
        """The evaluate fn must return scored Rollouts covering every requested key (a caller bug otherwise)."""
        if not isinstance(rollouts, Sequence):
            raise TypeError(f"fast learner: evaluate must return a list of Rollout, got {type(rollouts).__name__}")
        for rollout in rollouts:
            if not isinstance(rollout, Rollout):
                raise TypeError(f"fast learner: evaluate must return Rollout objects, got {type(rollout).__name__}")
            if not isinstance(rollout.reward, int | float) or not math.isfinite(rollout.reward):
                raise ValueError(f"fast learner: evaluate returned a non-finite reward {rollout.reward!r} for "
                                 f"problem {rollout.group!r}")
        covered = {r.group for r in rollouts}
        missing = [k for k in keys if k not in covered]
        if missing:
            raise ValueError(f"fast learner: evaluate returned no rollout for problem keys {missing[:5]} "
                             f"({len(missing)} of {len(keys)} missing); every requested key needs at least one")

    @staticmethod
    def score(rollouts: Sequence[Rollout]) -> float:
        """A problem's score under one context: the mean reward of its rollouts."""
        return sum(float(r.reward) for r in rollouts) / len(rollouts)

    # ---- gepa GEPAAdapter protocol
    def evaluate(self, batch: list[str], candidate: dict[str, str], capture_traces: bool = False) -> EvaluationBatch:
        by_key, generated = self.rollouts_for(candidate, batch, reuse=True, samples=self.minibatch_samples)
        return EvaluationBatch(outputs=[[r.completion for r in by_key[k]] for k in batch],
                               scores=[self.score(by_key[k]) for k in batch],
                               trajectories=[by_key[k] for k in batch],
                               num_metric_calls=generated)

    def make_reflective_dataset(self, candidate: dict[str, str], eval_batch: EvaluationBatch,
                                components_to_update: list[str]) -> dict[str, list[dict[str, Any]]]:
        records: list[dict[str, Any]] = []
        for trajectory in eval_batch.trajectories or []:
            # The lowest rewards first: failures carry the feedback worth reflecting on.
            ranked = sorted(trajectory, key=lambda r: float(r.reward))[: self.max_records_per_problem]
            for rollout in ranked:
                records.append({
                    "Inputs": clean_text(rollout.problem, self.max_field_chars),
                    "Generated Outputs": clean_text(rollout.completion, self.max_field_chars),
                    "Feedback": clean_text(format_feedback(float(rollout.reward), rollout.verdict, rollout.feedback),
                                       self.max_field_chars),
                })
                hint = (rollout.info or {}).get("hint")
                if isinstance(hint, str) and hint.strip():  # the env's answer-free channel, when it gave one
                    records[-1]["Hint"] = clean_text(hint, self.max_field_chars)
        return {component: [dict(r) for r in records] for component in components_to_update}


# ============================================================================================== gepa glue
class GepaLog:
    """gepa's ``LoggerProtocol`` onto :mod:`logging` (gepa's default logger prints to stdout)."""

    def log(self, message: str) -> None:
        logger.debug("gepa: %s", message)


class ProposerStrategy:
    """gepa ``ReflectionLM`` over any :class:`Proposer`, recording errors for the round's metrics.

    gepa's proposer swallows reflection exceptions (it logs them and skips the iteration, after one retry of the
    same job). Configuration errors (:class:`ReflectionConfigError`: bad key, unknown model) can never succeed,
    so they are kept in ``fatal`` and the learner re-raises them; the retry of a job that just failed is answered
    with the same error instead of a second call.
    """

    def __init__(self, proposer: Proposer) -> None:
        self.proposer = proposer
        self.errors: list[str] = []
        self.fatal: BaseException | None = None
        # The last failed job's objects (held, not their ids, so a new job cannot reuse their addresses).
        self._failed: tuple[Any, Any, BaseException] | None = None

    def reflect(self, candidate: dict[str, str], reflective_dataset: ReflectiveDataset,
                components_to_update: list[str]) -> tuple[ReflectionProposal, ProposerStrategy]:
        if self.fatal is not None:
            raise self.fatal
        if self._failed is not None and self._failed[0] is candidate and self._failed[1] is reflective_dataset:
            raise self._failed[2]
        try:
            reflect = getattr(self.proposer, "reflect", None)
            if reflect is not None:
                proposal = reflect(candidate, reflective_dataset, components_to_update)[0]
            else:
                proposal = ReflectionProposal(new_texts=dict(self.proposer(dict(candidate), reflective_dataset,
                                                                           components_to_update)))
        except Exception as err:
            self.errors.append(f"{type(err).__name__}: {err}")
            self._failed = (candidate, reflective_dataset, err)
            if isinstance(err, ReflectionConfigError):
                self.fatal = err
            raise
        # Only the requested components, only real changes (gepa evaluates any child it gets).
        proposal.new_texts = {k: v for k, v in proposal.new_texts.items()
                              if k in components_to_update and isinstance(v, str) and v != candidate.get(k)}
        return proposal, self

