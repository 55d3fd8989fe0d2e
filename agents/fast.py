"""Fast learners: evolve the context population between slow (RL) steps, GEPA style, under the current weights.

A fast round (FST, arXiv 2605.12484; GEPA's reflective mutation) does, for a :class:`ContextPopulation`:

1. re-score every candidate on ``problem_keys`` with the CURRENT policy (scores go stale as the weights move);
2. until the round's budget is spent: draw a parent from the per-problem Pareto front, sample a minibatch of
   recent problems, collect the parent's rollouts on it (reusing recent RL rollouts of that very context when
   there are some), turn them into reflective records ``{"Inputs", "Generated Outputs", "Feedback"}``, propose a
   child, evaluate the child on the same minibatch and accept it only if it is strictly better (sum of scores);
   an accepted child is scored on ``problem_keys`` and joins the population;
3. prune the population to K (Pareto front first, then mean score).

We own this outer loop (``gepa.optimize`` takes one seed and cannot carry a population across RL phases) and use
gepa's parts for everything inside it: a ``GEPAState`` rebuilt from the population each round, the
``ParetoCandidateSelector``, the ``EpochShuffledBatchSampler``, the round-robin component selector, the
``ReflectiveMutationProposer`` (parent/child minibatch evaluation, budget counting, skip of perfect minibatches),
gepa's reflection prompt and fence extractor (``StatelessReflectionLM`` / ``InstructionProposalSignature``) and
its ``StrictImprovementAcceptance``.

Two learners share the loop and differ only in the proposer: :class:`ReflectiveFastLearner` asks a reflection
LM to rewrite the instructions; :class:`NotesFastLearner` is LLM-free and curates short notes from recurring env
feedback, so fast weights still help where the reflection model is weak.

Use from an agent (every T slow steps)::

    population = ContextPopulation({"instructions": "Solve the problem."}, max_size=4)
    learner = ReflectiveFastLearner(from_transformers(model, tokenizer), budget_metric_calls=96, seed=0)

    def evaluate(context, keys):            # current policy, this context, these problems -> scored Rollouts
        ...

    metrics = learner.round(population, evaluate, recent_rollouts, problem_keys)
    ids = population.assign_group(group_size, rng)   # contexts for the G rollouts of one RL problem
"""

from __future__ import annotations

import difflib
import logging
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from gepa.core.adapter import EvaluationBatch
from gepa.core.state import GEPAState, ValsetEvaluation
from gepa.logging.experiment_tracker import ExperimentTracker
from gepa.proposer.base import CandidateProposal
from gepa.proposer.reflective_mutation.reflection_lm import ReflectionProposal, StatelessReflectionLM
from gepa.proposer.reflective_mutation.reflective_mutation import ReflectiveMutationProposer
from gepa.strategies.acceptance import StrictImprovementAcceptance
from gepa.strategies.batch_sampler import EpochShuffledBatchSampler
from gepa.strategies.candidate_selector import ParetoCandidateSelector
from gepa.strategies.component_selector import RoundRobinReflectionComponentSelector

from fst_env.agents.population import ContextPopulation
from fst_env.agents.reflection import ReflectionConfigError, ReflectionLM, as_reflection_lm, parse_reflection_output
from fst_env.agents.rollout import Rollout
from fst_env.context import Context

logger = logging.getLogger(__name__)

#: The agent supplies this: run the CURRENT policy with ``context`` on each problem key and return the scored
#: rollouts (one or more per key, ``Rollout.group`` = the key, with reward, feedback and verdict filled in).
EvaluateFn = Callable[[Context, list[str]], list[Rollout]]

#: Reflective records, per component: gepa's ``make_reflective_dataset`` output.
ReflectiveDataset = Mapping[str, Sequence[Mapping[str, Any]]]

#: Verdicts that mark a rollout as failed even when its score is unknown.
_FAILED_VERDICTS = frozenset({"incorrect", "format_error", "error", "timeout"})


# ============================================================================================== protocols
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


@runtime_checkable
class Acceptance(Protocol):
    """Decides whether a child enters the population from its and its parent's minibatch scores.

    This is gepa's ``AcceptanceCriterion``: ``proposal.subsample_scores_before`` are the parent's scores and
    ``proposal.subsample_scores_after`` the child's, on the same minibatch. Default: gepa's
    ``StrictImprovementAcceptance`` (sum strictly greater). Wrap a plain function with :class:`ScoreAcceptance`.
    """

    def should_accept(self, proposal: CandidateProposal, state: GEPAState) -> bool: ...


class ScoreAcceptance:
    """An :class:`Acceptance` from a plain ``(parent_scores, child_scores) -> bool`` function."""

    def __init__(self, fn: Callable[[list[float], list[float]], bool], name: str = "") -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "custom")

    def should_accept(self, proposal: CandidateProposal, state: GEPAState) -> bool:
        return bool(self.fn(list(proposal.subsample_scores_before or []),
                            list(proposal.subsample_scores_after or [])))


class EvidenceAcceptance:
    """Accept a child only when a one-sided sign test says it beats its parent, not on one lucky sample.

    On the minibatch, sample ``j`` of the child on problem ``i`` is paired with sample ``j`` of the parent
    (``min`` of the two counts per problem); ties are dropped and the rest tested with a one-sided binomial
    (sign) test of ``P(child wins) > 1/2`` at level ``alpha``. The child must also have at least ``min_pairs``
    non-tied pairs, cover ``min_problems`` problems, and beat the parent's mean per-problem score by more than
    ``margin``. Under the null that the child is the parent (independent samples of the same distribution per
    problem), each non-tied pair is a fair coin whatever the problems' difficulty, so the false-accept rate is at
    most ``alpha``: measured 1.2% (6 of 500 trials, rng seed 0) for an identical child on a coin-flip reward
    with 3 problems x 4 samples, against 40.6% (203 of 500) for gepa's strict improvement of the sum on the
    same draws; a real gain (0.3 -> 0.9) is accepted in 88.4% of trials (see tests/agents/test_fast.py).
    ``should_accept`` (gepa's protocol, per-problem scores only) applies the same test to per-problem means.
    """

    def __init__(self, alpha: float = 0.05, *, min_problems: int = 2, min_pairs: int = 5,
                 margin: float = 0.0) -> None:
        if not 0 < alpha < 1 or min_problems < 1 or min_pairs < 1 or margin < 0:
            raise ValueError(f"EvidenceAcceptance: need 0 < alpha < 1, min_problems >= 1, min_pairs >= 1, "
                             f"margin >= 0; got {alpha}, {min_problems}, {min_pairs}, {margin}")
        self.alpha, self.min_problems, self.min_pairs, self.margin = alpha, min_problems, min_pairs, margin

    def accept_samples(self, parent: Sequence[Sequence[float]],
                       child: Sequence[Sequence[float]]) -> tuple[bool, str]:
        """Decision and reason from per-problem reward lists (``parent[i]``, ``child[i]``: problem ``i``)."""
        from scipy.stats import binomtest

        if len(parent) != len(child):
            raise ValueError("EvidenceAcceptance: parent and child need scores on the same problems")
        if len(parent) < self.min_problems:
            return False, f"minibatch has {len(parent)} problems < {self.min_problems}"
        wins = losses = 0
        gaps = []
        for p, c in zip(parent, child, strict=True):
            if not p or not c:
                return False, "a problem has no scored sample"
            gaps.append(sum(c) / len(c) - sum(p) / len(p))
            for a, b in zip(p, c, strict=False):  # pairs up to the shorter list
                wins += b > a
                losses += b < a
        gap = sum(gaps) / len(gaps)
        if wins + losses < self.min_pairs:
            return False, f"only {wins + losses} non-tied sample pairs < {self.min_pairs}"
        if gap <= self.margin:
            return False, f"mean gain {gap:+.3f} <= margin {self.margin}"
        p_value = float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)
        if p_value > self.alpha:
            return False, f"sign test {wins} wins / {losses} losses: p={p_value:.3f} > {self.alpha}"
        return True, f"sign test {wins} wins / {losses} losses: p={p_value:.3g} <= {self.alpha}"

    def should_accept(self, proposal: CandidateProposal, state: GEPAState) -> bool:
        before = [[float(s)] for s in proposal.subsample_scores_before or []]
        after = [[float(s)] for s in proposal.subsample_scores_after or []]
        return self.accept_samples(before, after)[0]


@runtime_checkable
class FastLearner(Protocol):
    """What the agent drives every T slow steps: one fast round on the population, plus resumable state."""

    def round(self, population: ContextPopulation, evaluate: EvaluateFn, recent_rollouts: Sequence[Rollout],
              problem_keys: Sequence[str]) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


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


def _clean(text: str, limit: int) -> str:
    """Printable, valid-UTF-8 text of at most ``limit`` characters (head and tail kept, the middle elided).

    Model output may hold lone surrogates or control characters; they would break tokenizers and JSON logs.
    """
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    text = _CONTROL.sub("", text)
    if len(text) <= limit:
        return text
    half = max(limit // 2 - 10, 1)
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters elided ...]\n{text[-half:]}"


def _context_key(context: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Identity of a context for rollout reuse: its non-empty components (an absent and an empty component
    render the same prompt)."""
    return tuple(sorted((k, v) for k, v in context.items() if v))


def diff_summary(old: str, new: str, max_lines: int = 12) -> str:
    """A short human-readable diff of two component texts: size change plus the first changed lines."""
    lines = [line for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0)
             if not line.startswith(("---", "+++", "@@"))]
    added = sum(1 for line in lines if line.startswith("+"))
    removed = sum(1 for line in lines if line.startswith("-"))
    shown = lines[:max_lines]
    more = f"\n... {len(lines) - len(shown)} more changed lines" if len(lines) > len(shown) else ""
    return f"+{added}/-{removed} lines, {len(old)} -> {len(new)} chars" + ("\n" + "\n".join(shown) if shown else "") \
        + more


# ============================================================================================== gepa adapter
class _RolloutAdapter:
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
            fresh.setdefault((_context_key(rollout.context), rollout.group), []).append(rollout)
        self._memory.update(fresh)

    def rollouts_for(self, context: Context, keys: Sequence[str], *, reuse: bool,
                     samples: int = 1) -> tuple[dict[str, list[Rollout]], int]:
        """Rollouts of ``context`` on every key in ``keys`` (remembered ones when ``reuse`` and there are at least
        ``samples`` of them; otherwise ``samples`` requests per key are generated) and how many were generated."""
        ckey = _context_key(context)
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
                    "Inputs": _clean(rollout.problem, self.max_field_chars),
                    "Generated Outputs": _clean(rollout.completion, self.max_field_chars),
                    "Feedback": _clean(format_feedback(float(rollout.reward), rollout.verdict, rollout.feedback),
                                       self.max_field_chars),
                })
                hint = (rollout.info or {}).get("hint")
                if isinstance(hint, str) and hint.strip():  # the env's answer-free channel, when it gave one
                    records[-1]["Hint"] = _clean(hint, self.max_field_chars)
        return {component: [dict(r) for r in records] for component in components_to_update}


# ============================================================================================== proposers
class ReflectionProposer:
    """A :class:`Proposer` that asks a reflection LM to rewrite a component, with gepa's prompt and extractor.

    The prompt is gepa's ``InstructionProposalSignature`` template (or ``prompt_template``, which must hold the
    ``<curr_param>`` and ``<side_info>`` placeholders), rendered and sent by gepa's ``StatelessReflectionLM``.
    Each reply then goes through :func:`parse_reflection_output`: an empty, echoed or degenerate reply proposes
    nothing for that component (the parent is kept, and no rollouts are spent on a child). ``lm_calls`` counts
    the reflection LM calls.

    A deterministic reflection LM (``deterministic``; default: the LM's own ``deterministic`` attribute, which
    :func:`~fst_env.agents.reflection.from_transformers` sets for greedy decoding) would answer a prompt it has
    answered before with the same rejected reply, so a rejected reply is remembered per prompt (up to
    ``cache_size`` prompts) and replayed instead of asking again; ``cache_hits`` counts the calls saved.
    """

    def __init__(self, reflection_lm: ReflectionLM, prompt_template: str | dict[str, str] | None = None, *,
                 min_chars: int = 8, max_chars: int = 20_000, deterministic: bool | None = None,
                 cache_size: int = 256) -> None:
        self.reflection_lm = as_reflection_lm(reflection_lm)
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.lm_calls = 0
        self.cache_hits = 0
        self.deterministic = bool(getattr(reflection_lm, "deterministic", False)) if deterministic is None \
            else bool(deterministic)
        self.cache_size = cache_size
        self._rejected: dict[str, str] = {}  # prompt -> the rejected reply a deterministic LM gave for it
        self._gepa = StatelessReflectionLM(self._call_lm, prompt_template, _GepaLog())

    def _call_lm(self, prompt: Any) -> str:
        if self.deterministic and isinstance(prompt, str) and prompt in self._rejected:
            self.cache_hits += 1
            return self._rejected[prompt]
        self.lm_calls += 1
        reply = self.reflection_lm(prompt)
        if not isinstance(reply, str):
            raise TypeError(f"reflection LM must return str, got {type(reply).__name__}")
        return reply

    def reflect(self, candidate: dict[str, str], reflective_dataset: ReflectiveDataset,
                components_to_update: list[str]) -> tuple[ReflectionProposal, ReflectionProposer]:
        """gepa's ``ReflectionLM`` protocol: the proposal (new texts, prompts, raw replies) and this proposer."""
        proposal, _ = self._gepa.reflect(candidate, reflective_dataset, components_to_update)
        new_texts: dict[str, str] = {}
        rejected: dict[str, str] = {}
        for name, raw in proposal.raw_lm_outputs.items():
            text, reason = parse_reflection_output(raw, candidate.get(name, ""), min_chars=self.min_chars,
                                                   max_chars=self.max_chars)
            if text is None:
                rejected[name] = reason
                prompt = proposal.prompts.get(name)
                if self.deterministic and isinstance(prompt, str) and len(self._rejected) < self.cache_size:
                    self._rejected[prompt] = raw
            else:
                new_texts[name] = text
        metadata = {"rejected_replies": rejected} if rejected else {}
        return ReflectionProposal(new_texts=new_texts, prompts=dict(proposal.prompts),
                                  raw_lm_outputs=dict(proposal.raw_lm_outputs), metadata=metadata), self

    def __call__(self, candidate: Context, reflective_dataset: ReflectiveDataset,
                 components_to_update: list[str]) -> dict[str, str]:
        return self.reflect(dict(candidate), reflective_dataset, components_to_update)[0].new_texts


@dataclass(frozen=True)
class _NoteCandidate:
    """A note the notes proposer could add, with how often its trigger occurred and where it came from."""

    text: str
    count: int
    kind: str  # "format" or "recurring"
    order: int  # first appearance, for deterministic ties


# Sentences in format-error feedback that state a requirement ("put the answer in <answer> tags", ...).
_REQUIREMENT = re.compile(r"\b(must|should|required?|expected|format|put|wrap|enclose|use|write|provide|give|"
                          r"answer with|end with|start with|respond|reply|only|tags?|box(?:ed)?|exactly)\b",
                          re.IGNORECASE)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?")
_QUOTED = re.compile(r"'[^'\n]{0,200}'|\"[^\"\n]{0,200}\"|`[^`\n]{0,200}`|«[^»\n]{0,200}»")
_EXPECTED = re.compile(r"\b(expected|correct answer|should (?:be|have been)|the answer (?:is|was))\b", re.IGNORECASE)


def _mask_specifics(sentence: str) -> str:
    """A sentence with problem-specific values masked, so the same correction on different problems matches."""
    return _NUMBER.sub("<N>", _QUOTED.sub("<value>", sentence))


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


_COUNT = re.compile(r"\(\s*\d+\s*x\s*\)|\b\d+\s*(?:x|times)\b", re.IGNORECASE)
_VERDICT_LEAD = re.compile(r"^\s*(?:incorrect|wrong|error|format error|invalid|failed)\s*[:.!-]\s*", re.IGNORECASE)
_RECHECK_RULE = "Final answers were often wrong: re-check each step and the final value before answering."


def note_meaning(text: str) -> str:
    """What a note says, for de-duplication: lower case, counts, numbers, quoted values, placeholders and
    punctuation removed, so "(4x) got '12'" and "(5x) got '7'" are the same lesson."""
    text = _COUNT.sub(" ", text)
    text = _mask_specifics(text).replace("<N>", " ").replace("<value>", " ")
    text = re.sub(r"\ba (?:number|value)\b", " ", text.lower())
    return " ".join(re.sub(r"[^\w<>/]+", " ", text).split())


def _as_rule(sentence: str) -> str:
    """A feedback sentence as a rule: verdict lead-in dropped, specific values written generically, no quotes."""
    text = _VERDICT_LEAD.sub("", _mask_specifics(sentence)).strip()
    text = text.replace("<N>", "a number").replace("<value>", "a value")
    return text[:1].upper() + text[1:] if text else ""


class NotesProposer:
    """An LLM-free :class:`Proposer`: curates a short bullet list of rules from recurring env feedback.

    From the failed rollouts in the reflective records (score below ``perfect_score`` or a failing verdict), the
    source text is the record's ``"Hint"`` when it has one (the env's answer-free ``info["hint"]`` channel), else
    its feedback with every sentence that names the expected answer removed (``expected``, ``correct answer``,
    ``should be``, ``the answer is``...): a training label never reaches a context. Then:
    - format errors give a rule stating the requirement sentence (``Format rule: Put the final answer inside
      <answer></answer> tags.``), once it occurs ``min_count_format`` times;
    - other sentences are compared with numbers and quoted values masked; one that recurs on ``min_count``
      failed rollouts gives a rule (``Avoid this recurring mistake: ...``, masked values written as "a number" /
      "a value", verdict words such as "Incorrect:" dropped), never the quoted error;
    - answers judged wrong against an expected value on ``min_count`` rollouts give one fixed rule to re-check
      the final value.
    Notes carry no counts, and a note is new only if its *meaning* (lower-cased, numbers, quoted values and
    punctuation removed, see :func:`note_meaning`) differs from every kept note, so the same lesson is not
    re-proposed. At most ``max_new_notes`` notes are added per proposal (format rules first, then the most
    frequent); the list keeps ``max_notes`` notes, dropping the oldest. Pure and deterministic. No new note -> no
    proposal.
    """

    def __init__(self, max_notes: int = 6, *, max_new_notes: int = 2, min_count: int = 2,
                 min_count_format: int = 1, max_note_chars: int = 240, perfect_score: float = 1.0) -> None:
        if max_notes < 1 or max_new_notes < 1:
            raise ValueError(f"NotesProposer: max_notes and max_new_notes must be >= 1, got {max_notes}, "
                             f"{max_new_notes}")
        if min_count < 1 or min_count_format < 1:
            raise ValueError(f"NotesProposer: min_count and min_count_format must be >= 1, got {min_count}, "
                             f"{min_count_format}")
        if max_note_chars < 40:
            raise ValueError(f"NotesProposer: max_note_chars must be >= 40, got {max_note_chars}")
        self.max_notes = max_notes
        self.max_new_notes = max_new_notes
        self.min_count = min_count
        self.min_count_format = min_count_format
        self.max_note_chars = max_note_chars
        self.perfect_score = perfect_score

    # ---- note extraction
    def _failed(self, score: float | None, verdict: str) -> bool:
        return (score is not None and score < self.perfect_score) or verdict in _FAILED_VERDICTS

    def _shorten(self, text: str) -> str:
        text = " ".join(_clean(text, 10 * self.max_note_chars).split())
        return text if len(text) <= self.max_note_chars else text[: self.max_note_chars - 1].rstrip() + "…"

    def derive_notes(self, records: Sequence[Mapping[str, Any]]) -> list[_NoteCandidate]:
        """Candidate notes from the records' hints / feedback, best first (format rules, then by frequency)."""
        format_hits: dict[str, list[Any]] = {}  # meaning -> [count, sentence, first order]
        recurring: dict[str, list[Any]] = {}  # meaning -> [count, rule text, first order]
        wrong_answers = 0
        order = 0
        for record in records:
            score, verdict, body = parse_feedback(str(record.get("Feedback", "")))
            if not self._failed(score, verdict):
                continue
            hint = str(record.get("Hint") or "").strip()
            source = hint or body
            sentences = [s.strip() for s in _SENTENCE_SPLIT.split(_clean(source, 4000)) if len(s.strip()) >= 8]
            named_expected = any(_EXPECTED.search(s) for s in sentences)
            # A sentence naming the expected answer could put a training label into the prompt: never used.
            sentences = [s for s in sentences if not _EXPECTED.search(s)]
            wrong_answers += int(named_expected and verdict != "format_error")
            seen_in_record: set[str] = set()  # one record counts once per lesson
            if verdict == "format_error":
                required = [s for s in sentences if _REQUIREMENT.search(s)] or sentences[:1]
                for sentence in required:
                    key = note_meaning(sentence)
                    if not key or key in seen_in_record:
                        continue
                    seen_in_record.add(key)
                    hit = format_hits.setdefault(key, [0, sentence, order])
                    hit[0] += 1
                    order += 1
            else:
                for sentence in sentences:
                    key = note_meaning(sentence)
                    # Sentences that are nothing but masked values carry no reusable lesson.
                    if key in seen_in_record or len(key.replace(" ", "")) < 6:
                        continue
                    seen_in_record.add(key)
                    hit = recurring.setdefault(key, [0, _as_rule(sentence), order])
                    hit[0] += 1
                    order += 1
        notes = [_NoteCandidate(self._shorten(f"Format rule: {text}"), count, "format", first)
                 for count, text, first in format_hits.values() if count >= self.min_count_format]
        notes += [_NoteCandidate(self._shorten(f"Avoid this recurring mistake: {rule}"), count, "recurring", first)
                  for count, rule, first in recurring.values() if count >= self.min_count and rule]
        if wrong_answers >= self.min_count:
            notes.append(_NoteCandidate(_RECHECK_RULE, wrong_answers, "recurring", order))
        return sorted(notes, key=lambda n: (n.kind != "format", -n.count, n.order))

    @staticmethod
    def parse_notes(text: str) -> list[str]:
        """The notes in a "notes" component: one per non-empty line, bullet markers removed."""
        return [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip() for line in text.splitlines() if line.strip()]

    # ---- proposer protocol
    def reflect(self, candidate: dict[str, str], reflective_dataset: ReflectiveDataset,
                components_to_update: list[str]) -> tuple[ReflectionProposal, NotesProposer]:
        """gepa's ``ReflectionLM`` protocol: new notes per component, with the rationale as the "raw output"."""
        new_texts: dict[str, str] = {}
        rationale: dict[str, str] = {}
        for name in components_to_update:
            records = reflective_dataset.get(name) or []
            existing = self.parse_notes(candidate.get(name, ""))
            known = {note_meaning(n) for n in existing}
            fresh: list[_NoteCandidate] = []
            for note in self.derive_notes(records):
                if note_meaning(note.text) not in known and len(fresh) < self.max_new_notes:
                    fresh.append(note)
                    known.add(note_meaning(note.text))
            if not fresh:
                continue
            kept = (existing + [n.text for n in fresh])[-self.max_notes:]
            new_texts[name] = "\n".join(f"- {n}" for n in kept)
            rationale[name] = "; ".join(f"{n.kind} x{n.count}: {n.text}" for n in fresh)
        return ReflectionProposal(new_texts=new_texts, raw_lm_outputs=rationale), self

    def __call__(self, candidate: Context, reflective_dataset: ReflectiveDataset,
                 components_to_update: list[str]) -> dict[str, str]:
        return self.reflect(dict(candidate), reflective_dataset, components_to_update)[0].new_texts


# ============================================================================================== gepa glue
class _GepaLog:
    """gepa's ``LoggerProtocol`` onto :mod:`logging` (gepa's default logger prints to stdout)."""

    def log(self, message: str) -> None:
        logger.debug("gepa: %s", message)


class _ProposerStrategy:
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
                components_to_update: list[str]) -> tuple[ReflectionProposal, _ProposerStrategy]:
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


# ============================================================================================== the learners
class GepaFastLearner:
    """The fast round shared by both learners: gepa's reflective-mutation parts under our outer loop.

    Contract of :meth:`round` (see the module docstring for the steps):
    - every candidate is re-scored on ``problem_keys`` first, always with freshly generated rollouts;
    - a round stops after ``proposals_per_round`` proposals (children evaluated on a minibatch),
      ``max_iterations`` iterations (default ``3 * proposals_per_round``; an iteration without a proposal happens
      when the parent's minibatch is already perfect or the proposer changes nothing), or before an iteration
      whose worst-case cost would exceed ``budget_metric_calls``;
    - ``metric_calls`` counts every rollout generated in the round, re-scoring included, and stays within
      ``budget_metric_calls`` unless the mandatory re-scoring alone exceeds it;
    - children are accepted by ``acceptance`` (default gepa's strict improvement of the minibatch sum), scored on
      ``problem_keys`` and added with lineage; the population is then pruned to its ``max_size``;
    - deterministic given ``seed`` (and a deterministic evaluate fn / proposer); :meth:`state_dict` carries the
      rng so a resumed run continues identically.
    """

    def __init__(self, proposer: Proposer, *, components: Sequence[str] = ("instructions",),
                 minibatch_size: int = 3, proposals_per_round: int = 4, budget_metric_calls: int | None = None,
                 max_iterations: int | None = None, acceptance: Acceptance | None = None,
                 perfect_score: float = 1.0, skip_perfect_score: bool = True, max_records_per_problem: int = 2,
                 max_field_chars: int = 2000, minibatch_samples: int = 1, seed: int = 0) -> None:
        components = list(components)
        if not components or not all(isinstance(c, str) and c for c in components):
            raise ValueError(f"{type(self).__name__}: components must be non-empty component names, got {components}")
        for name, value in (("minibatch_size", minibatch_size), ("proposals_per_round", proposals_per_round),
                            ("max_records_per_problem", max_records_per_problem),
                            ("minibatch_samples", minibatch_samples)):
            if value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 1, got {value}")
        if budget_metric_calls is not None and budget_metric_calls < 1:
            raise ValueError(f"{type(self).__name__}: budget_metric_calls must be >= 1 or None, "
                             f"got {budget_metric_calls}")
        if max_iterations is not None and max_iterations < 1:
            raise ValueError(f"{type(self).__name__}: max_iterations must be >= 1 or None, got {max_iterations}")
        if acceptance is not None and not isinstance(acceptance, Acceptance):
            raise TypeError(f"{type(self).__name__}: acceptance needs should_accept(proposal, state); wrap a "
                            f"scores function with ScoreAcceptance")
        self.proposer = proposer
        self.components = components
        self.minibatch_size = minibatch_size
        self.proposals_per_round = proposals_per_round
        self.budget_metric_calls = budget_metric_calls
        self.max_iterations = max_iterations if max_iterations is not None else 3 * proposals_per_round
        self.acceptance: Acceptance = acceptance if acceptance is not None else StrictImprovementAcceptance()
        self.perfect_score = perfect_score
        self.skip_perfect_score = skip_perfect_score
        self.max_records_per_problem = max_records_per_problem
        self.max_field_chars = max_field_chars
        self.minibatch_samples = minibatch_samples
        self.seed = seed
        # One rng for gepa's Pareto selector and batch sampler, as gepa.optimize shares one.
        self.rng = random.Random(seed)

    # ------------------------------------------------------------------ the round
    def round(self, population: ContextPopulation, evaluate: EvaluateFn, recent_rollouts: Sequence[Rollout] = (),
              problem_keys: Sequence[str] = ()) -> dict[str, Any]:
        """One fast round on ``population`` (modified in place); returns the metrics of the round."""
        keys = list(dict.fromkeys(problem_keys))
        if not keys or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"{type(self).__name__}.round: problem_keys must be a non-empty list of problem keys "
                             f"(str), got {list(problem_keys)[:5]!r}")
        round_index = population.new_round()
        adapter = _RolloutAdapter(evaluate, max_records_per_problem=self.max_records_per_problem,
                                  max_field_chars=self.max_field_chars, minibatch_samples=self.minibatch_samples)
        adapter.remember(recent_rollouts)

        # 1. Re-score under the current weights: scores from earlier rounds were measured with older weights.
        for cid in population.ids:
            by_key, _ = adapter.rollouts_for(population.context(cid), keys, reuse=False)
            population.set_scores(cid, {k: adapter.score(by_key[k]) for k in keys})
        rescore_calls = adapter.generated

        # 2. gepa's state, selector, sampler and proposer over the re-scored population.
        state, idx_to_id = population.to_gepa_state()
        for candidate in state.program_candidates:
            for component in self.components:
                candidate.setdefault(component, "")  # gepa only edits components the candidate has
        state.list_of_named_predictors = list(self.components)
        state.total_num_evals = rescore_calls
        trainset = list(dict.fromkeys(r.group for r in recent_rollouts)) or keys
        minibatch = min(self.minibatch_size, len(trainset))
        strategy = _ProposerStrategy(self.proposer)
        proposer = ReflectiveMutationProposer(
            logger=_GepaLog(), trainset=trainset, adapter=adapter,
            candidate_selector=ParetoCandidateSelector(self.rng),
            module_selector=RoundRobinReflectionComponentSelector(),
            batch_sampler=EpochShuffledBatchSampler(minibatch, self.rng),
            perfect_score=self.perfect_score, skip_perfect_score=self.skip_perfect_score,
            experiment_tracker=ExperimentTracker(), reflection_strategy=strategy)
        lm_calls_before = int(getattr(self.proposer, "lm_calls", 0))
        cache_hits_before = int(getattr(self.proposer, "cache_hits", 0))

        records: list[dict[str, Any]] = []
        n_iterations = n_proposals = n_accepted = 0
        stop_reason = "proposals_per_round"
        while n_proposals < self.proposals_per_round:
            if n_iterations >= self.max_iterations:
                stop_reason = "max_iterations"
                break
            worst_case = (2 * minibatch * self.minibatch_samples + len(keys)) * adapter.max_rollouts_per_key
            if self.budget_metric_calls is not None and adapter.generated + worst_case > self.budget_metric_calls:
                stop_reason = "budget"
                break
            # gepa's engine does exactly this before each propose(); its batch sampler indexes by state.i.
            state.i += 1
            state.full_program_trace.append({"i": state.i})
            n_iterations += 1
            proposals = proposer.propose(state)
            if strategy.fatal is not None:
                raise strategy.fatal
            for proposal in proposals:
                n_proposals += 1
                record = self._judge(proposal, state, population, adapter, idx_to_id, keys, trainset)
                n_accepted += int(record["accepted"])
                records.append(record)

        removed = population.prune()
        means = population.mean_scores()
        best = population.best()
        metrics: dict[str, Any] = {
            "round": round_index,
            "n_iterations": n_iterations,
            "n_proposals": n_proposals,
            "n_accepted": n_accepted,
            "n_rejected": n_proposals - n_accepted,
            "n_skipped": n_iterations - len({r["iteration"] for r in records}),
            "metric_calls": adapter.generated,
            "metric_calls_rescore": rescore_calls,
            "rollouts_reused": adapter.reused,
            "budget_metric_calls": self.budget_metric_calls,
            "reflection_calls": int(getattr(self.proposer, "lm_calls", 0)) - lm_calls_before,
            "reflection_cache_hits": int(getattr(self.proposer, "cache_hits", 0)) - cache_hits_before,
            "reflection_errors": len(strategy.errors),
            "last_reflection_error": strategy.errors[-1] if strategy.errors else "",
            "stop_reason": stop_reason,
            "population_size": len(population),
            "front_size": len(population.pareto_front()),
            "best_id": best.id,
            "best_mean_score": best.mean_score,
            "mean_scores": {cid: m for cid, m in means.items()},
            "removed_ids": removed,
            "proposals": records,
        }
        logger.info("fast round %d: %d proposals, %d accepted, %d rollouts, population %s", round_index,
                    n_proposals, n_accepted, adapter.generated, population.ids)
        return metrics

    def _judge(self, proposal: CandidateProposal, state: GEPAState, population: ContextPopulation,
               adapter: _RolloutAdapter, idx_to_id: list[int], keys: list[str],
               trainset: list[str]) -> dict[str, Any]:
        """Apply the acceptance test to one proposal; add an accepted child to the state and the population."""
        parent_idx = proposal.parent_program_ids[0]
        parent_id = idx_to_id[parent_idx]
        parent = state.program_candidates[parent_idx]
        changed = [k for k in proposal.candidate if proposal.candidate[k] != parent.get(k)]
        before = [float(s) for s in proposal.subsample_scores_before or []]
        after = [float(s) for s in proposal.subsample_scores_after or []]
        reflection = "\n".join(str(proposal.metadata.get(f"raw_lm_output:{c}", "")) for c in changed).strip()
        minibatch_keys = [trainset[i] for i in proposal.subsample_indices or []]
        if hasattr(self.acceptance, "accept_samples") and minibatch_keys:
            # Sample-level evidence: both candidates' minibatch rollouts are in the adapter's memory already.
            parent_by_key, _ = adapter.rollouts_for(parent, minibatch_keys, reuse=True, samples=1)
            child_by_key, _ = adapter.rollouts_for(proposal.candidate, minibatch_keys, reuse=True, samples=1)
            accepted, reason = self.acceptance.accept_samples(
                [[float(r.reward) for r in parent_by_key[k]] for k in minibatch_keys],
                [[float(r.reward) for r in child_by_key[k]] for k in minibatch_keys])
            accepted = bool(accepted)
        else:
            accepted = bool(self.acceptance.should_accept(proposal, state))
            reason = ("child beats parent on the minibatch" if accepted
                      else "child does not beat parent on the minibatch")
            if not accepted and hasattr(self.acceptance, "reject_reason"):
                reason = str(self.acceptance.reject_reason(proposal, state))
        child_id: int | None = None
        if accepted:
            # Drop components that only exist because the state padded them in (empty, absent from the parent).
            parent_ctx = population.context(parent_id) if parent_id in population else {}
            child = {k: v for k, v in proposal.candidate.items() if v or k in parent_ctx}
            duplicate = next((c.id for c in population if _context_key(c.context) == _context_key(child)), None)
            if duplicate is not None:
                accepted, reason = False, f"child duplicates candidate {duplicate}"
            else:
                # Minibatch rollouts of the child were generated this round under the current weights: reuse them.
                by_key, generated = adapter.rollouts_for(child, keys, reuse=True)
                scores = {k: adapter.score(by_key[k]) for k in keys}
                discovered_at = state.total_num_evals
                state.increment_evals(generated)
                state.update_state_with_new_program(proposal.parent_program_ids, proposal.candidate,
                                                    ValsetEvaluation(outputs_by_val_id={}, scores_by_val_id=scores),
                                                    None, discovered_at)
                child_id = population.add(child, parent_id, scores, reflection=reflection, changed=changed)
                idx_to_id.append(child_id)
        return {
            "iteration": state.i,
            "parent_id": parent_id,
            "child_id": child_id,
            "accepted": accepted,
            "reason": reason,
            "components": changed,
            # gepa's minibatch ids index the trainset list; report the problem keys.
            "minibatch": [trainset[i] for i in proposal.subsample_indices or []],
            "parent_scores": before,
            "child_scores": after,
            "parent_sum": sum(before),
            "child_sum": sum(after),
            "diff": {c: diff_summary(parent.get(c, ""), proposal.candidate[c]) for c in changed},
            "reflection": _clean(reflection, 2000),
        }

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """The learner's resumable state (its rng), JSON-serialisable."""
        version, internal, gauss = self.rng.getstate()
        return {"seed": self.seed, "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        version, internal, gauss = state["rng"]
        self.seed = int(state.get("seed", self.seed))
        self.rng.setstate((version, tuple(internal), gauss))


class ReflectiveFastLearner(GepaFastLearner):
    """The FST fast learner: a reflection LM rewrites context components from rollouts and env feedback.

    ``reflection_lm`` is any ``str -> str`` callable (see :mod:`fst_env.agents.reflection` for transformers and
    OpenAI-compatible adapters). Everything else is :class:`GepaFastLearner`'s loop and contract.
    """

    def __init__(self, reflection_lm: ReflectionLM, minibatch_size: int = 3, proposals_per_round: int = 4,
                 budget_metric_calls: int | None = None, components: Sequence[str] = ("instructions",),
                 seed: int = 0, *, prompt_template: str | dict[str, str] | None = None, **kwargs: Any) -> None:
        self.reflection = ReflectionProposer(reflection_lm, prompt_template)
        super().__init__(self.reflection, components=components, minibatch_size=minibatch_size,
                         proposals_per_round=proposals_per_round, budget_metric_calls=budget_metric_calls, seed=seed,
                         **kwargs)


class NotesFastLearner(GepaFastLearner):
    """An LLM-free fast learner: a "notes" component curated from recurring env feedback (see
    :class:`NotesProposer`), under the same minibatch protocol and acceptance test as the reflective learner."""

    def __init__(self, max_notes: int = 6, minibatch_size: int = 3, proposals_per_round: int = 4,
                 budget_metric_calls: int | None = None, seed: int = 0, *, component: str = "notes",
                 max_new_notes: int = 2, min_count: int = 2, min_count_format: int = 1, max_note_chars: int = 240,
                 **kwargs: Any) -> None:
        self.notes = NotesProposer(max_notes, max_new_notes=max_new_notes, min_count=min_count,
                                   min_count_format=min_count_format, max_note_chars=max_note_chars,
                                   perfect_score=kwargs.get("perfect_score", 1.0))
        super().__init__(self.notes, components=(component,), minibatch_size=minibatch_size,
                         proposals_per_round=proposals_per_round, budget_metric_calls=budget_metric_calls, seed=seed,
                         **kwargs)
