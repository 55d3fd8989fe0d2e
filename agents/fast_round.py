"""The fast round: evolve the context population between slow (RL) steps, GEPA style, under the current weights.

A fast round (FST, arXiv 2605.12484; GEPA's reflective mutation) does, for a :class:`ContextPopulation`:

1. re-score every candidate on ``problem_keys`` with the CURRENT policy (scores go stale as the weights move);
2. until the round's budget is spent: draw a parent from the per-problem Pareto front, sample a minibatch of
   recent problems, collect the parent's rollouts on it (reusing recent RL rollouts of that very context only
   when they were sampled under the current weights, the ``evidence``: parent and child must be judged under the
   same weights, or a policy that improved since would make any child look better), turn them into reflective
   records ``{"Inputs", "Generated Outputs", "Feedback"}``, propose a
   child, evaluate the child on the same minibatch and accept it only if it is strictly better (sum of scores);
   an accepted child is scored on ``problem_keys`` and joins the population;
3. prune the population to K (Pareto front first, then mean score).

We own this outer loop (``gepa.optimize`` takes one seed and cannot carry a population across RL phases) and use
gepa's parts for everything inside it: a ``GEPAState`` rebuilt from the population each round, the
``ParetoCandidateSelector``, the ``EpochShuffledBatchSampler``, the round-robin component selector, the
``ReflectiveMutationProposer`` (parent/child minibatch evaluation, budget counting, skip of perfect minibatches),
gepa's reflection prompt and fence extractor (``StatelessReflectionLM`` / ``InstructionProposalSignature``) and
its ``StrictImprovementAcceptance``.

:class:`GepaFastLearner` is that round for any proposer; :class:`ReflectiveFastLearner` and
:class:`NotesFastLearner` fix the proposer (:mod:`fst_env.agents.fast_proposers`). The gepa glue is in
:mod:`fst_env.agents.fast_bridge`, the acceptance tests in :mod:`fst_env.agents.fast_acceptance`.
"""

from __future__ import annotations

import difflib
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from gepa.core.state import GEPAState, ValsetEvaluation
from gepa.logging.experiment_tracker import ExperimentTracker
from gepa.proposer.base import CandidateProposal
from gepa.proposer.reflective_mutation.reflective_mutation import ReflectiveMutationProposer
from gepa.strategies.acceptance import StrictImprovementAcceptance
from gepa.strategies.batch_sampler import EpochShuffledBatchSampler
from gepa.strategies.candidate_selector import ParetoCandidateSelector
from gepa.strategies.component_selector import RoundRobinReflectionComponentSelector

from fst_env.agents.fast_acceptance import Acceptance
from fst_env.agents.fast_bridge import (
    EvaluateFn,
    GepaLog,
    Proposer,
    ProposerStrategy,
    RolloutAdapter,
    clean_text,
    context_key,
)
from fst_env.agents.fast_proposers import NotesProposer, ReflectionProposer
from fst_env.agents.population import ContextPopulation
from fst_env.agents.reflection import ReflectionLM
from fst_env.agents.rollout import Rollout

logger = logging.getLogger(__name__)


@runtime_checkable
class FastLearner(Protocol):
    """What the agent drives every T slow steps: one fast round on the population, plus resumable state."""

    def round(self, population: ContextPopulation, evaluate: EvaluateFn, recent_rollouts: Sequence[Rollout],
              problem_keys: Sequence[str], *, evidence: Sequence[Rollout] | None = None) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


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


# ============================================================================================== the learners
class GepaFastLearner:
    """The fast round shared by both learners: gepa's reflective-mutation parts under our outer loop.

    Contract of :meth:`round` (the steps are in this module's docstring):
    - ``recent_rollouts`` give the problems minibatches are drawn from; of them, only ``evidence`` (default: all
      of them) stands in for rollouts of its context. Callers whose weights changed since a rollout was sampled
      must leave it out of ``evidence`` (after a slow step: ``()``), so every score the round compares was
      measured under the current weights;
    - every candidate is re-scored on ``problem_keys`` first, from rollouts under the current weights (evidence
      or freshly generated);
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
              problem_keys: Sequence[str] = (), *, evidence: Sequence[Rollout] | None = None) -> dict[str, Any]:
        """One fast round on ``population`` (modified in place); returns the metrics of the round.

        ``evidence``: the rollouts of ``recent_rollouts`` sampled under the current weights (default: all of them).
        """
        keys = list(dict.fromkeys(problem_keys))
        if not keys or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"{type(self).__name__}.round: problem_keys must be a non-empty list of problem keys "
                             f"(str), got {list(problem_keys)[:5]!r}")
        round_index = population.new_round()
        adapter = RolloutAdapter(evaluate, max_records_per_problem=self.max_records_per_problem,
                                  max_field_chars=self.max_field_chars, minibatch_samples=self.minibatch_samples)
        adapter.remember(recent_rollouts if evidence is None else evidence)

        # 1. Re-score under the current weights: scores from earlier rounds were measured with older weights. The
        # adapter only holds rollouts under the current weights, so those it has are as good as new ones.
        for cid in population.ids:
            by_key, _ = adapter.rollouts_for(population.context(cid), keys, reuse=True)
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
        strategy = ProposerStrategy(self.proposer)
        proposer = ReflectiveMutationProposer(
            logger=GepaLog(), trainset=trainset, adapter=adapter,
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
               adapter: RolloutAdapter, idx_to_id: list[int], keys: list[str],
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
            duplicate = next((c.id for c in population if context_key(c.context) == context_key(child)), None)
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
            "reflection": clean_text(reflection, 2000),
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
