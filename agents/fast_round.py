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

With ``trials="collect"`` a round generates nothing: a child is not tried on fresh minibatch rollouts but joins
the population as a *trial* context, which the next collects sample beside its parent (G/K rollouts each, the
same problems, the same weights). The next round judges it on those paired samples (``accept_samples``, pairs
only within one weights version) and promotes or drops it; members are scored from the recent collects, and the
reflection reads the parent's recent rollouts. Evidence then costs no generation and grows with T, at the price
of trial contexts taking part of the RL batch.

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

from gepa.core.adapter import EvaluationBatch
from gepa.core.data_loader import ensure_loader
from gepa.core.state import GEPAState, ValsetEvaluation
from gepa.logging.experiment_tracker import ExperimentTracker
from gepa.proposer.base import CandidateProposal
from gepa.proposer.reflective_mutation.reflective_mutation import ReflectiveMutationProposer
from gepa.strategies.acceptance import StrictImprovementAcceptance
from gepa.strategies.batch_sampler import EpochShuffledBatchSampler
from gepa.strategies.candidate_selector import ParetoCandidateSelector
from gepa.strategies.component_selector import RoundRobinReflectionComponentSelector

from fst_env.agents.fast_acceptance import Acceptance, EvidenceAcceptance
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


#: How a child is tried: "round" (fresh minibatch rollouts in the round) or "collect" (sampled by the next collects).
TRIAL_MODES = ("round", "collect")


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
      rng so a resumed run continues identically;
    - ``trials="collect"``: the round calls ``evaluate`` never (``metric_calls`` is 0). It judges every trial
      candidate on the recent rollouts (``Rollout.context_id``; ``info["weights_version"]`` pairs samples only
      within one version), promotes or removes it, scores members from the recent rollouts on ``problem_keys``,
      and adds up to ``proposals_per_round`` new trials reflected from their parents' recent rollouts. It needs
      a sample-level ``acceptance`` (``accept_samples``; default :class:`EvidenceAcceptance`).
    """

    def __init__(self, proposer: Proposer, *, components: Sequence[str] = ("instructions",),
                 minibatch_size: int = 3, proposals_per_round: int = 4, budget_metric_calls: int | None = None,
                 max_iterations: int | None = None, acceptance: Acceptance | None = None,
                 perfect_score: float = 1.0, skip_perfect_score: bool = True, max_records_per_problem: int = 2,
                 max_field_chars: int = 2000, minibatch_samples: int = 1, seed: int = 0,
                 trials: str = "round") -> None:
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
        if trials not in TRIAL_MODES:
            raise ValueError(f"{type(self).__name__}: trials must be one of {list(TRIAL_MODES)}, got {trials!r}")
        if trials == "collect":
            acceptance = acceptance if acceptance is not None else EvidenceAcceptance()
            if not hasattr(acceptance, "accept_samples"):
                raise ValueError(f"{type(self).__name__}: trials='collect' judges children on paired samples; "
                                 f"its acceptance needs accept_samples (e.g. EvidenceAcceptance)")
        self.trials = trials
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
        if self.trials == "collect":
            return self._trial_round(population, recent_rollouts, keys)
        round_index = population.new_round()
        adapter = RolloutAdapter(evaluate, max_records_per_problem=self.max_records_per_problem,
                                  max_field_chars=self.max_field_chars, minibatch_samples=self.minibatch_samples)
        adapter.remember(recent_rollouts if evidence is None else evidence)

        # 1. Re-score under the current weights: scores from earlier rounds were measured with older weights. The
        # adapter only holds rollouts under the current weights, so those it has are as good as new ones.
        for cid in population.member_ids:
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
            "stop_reason": stop_reason,
            **self._round_summary(population, strategy, (lm_calls_before, cache_hits_before), removed, records),
        }
        logger.info("fast round %d: %d proposals, %d accepted, %d rollouts, population %s", round_index,
                    n_proposals, n_accepted, adapter.generated, population.ids)
        return metrics

    def _round_summary(self, population: ContextPopulation, strategy: ProposerStrategy, calls_before: tuple[int, int],
                       removed: list[int], records: list[dict[str, Any]]) -> dict[str, Any]:
        """The round metrics both ways of trying children share: reflection counts, population, records."""
        best = population.best()
        return {
            "budget_metric_calls": self.budget_metric_calls,
            "reflection_calls": int(getattr(self.proposer, "lm_calls", 0)) - calls_before[0],
            "reflection_cache_hits": int(getattr(self.proposer, "cache_hits", 0)) - calls_before[1],
            "reflection_errors": len(strategy.errors),
            "last_reflection_error": strategy.errors[-1] if strategy.errors else "",
            "population_size": len(population),
            "front_size": len(population.pareto_front()),
            "best_id": best.id,
            "best_mean_score": best.mean_score,
            "mean_scores": dict(population.mean_scores()),
            "removed_ids": removed,
            "proposals": records,
        }

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

    # ------------------------------------------------------------------ trials="collect"
    def _trial_round(self, population: ContextPopulation, recent_rollouts: Sequence[Rollout],
                     keys: list[str]) -> dict[str, Any]:
        """The round of ``trials="collect"``: judge the trials, score the members, propose new trials."""
        round_index = population.new_round()
        # Rewards per (context id, problem, weights version): only samples of one version are compared.
        samples: dict[tuple[int, str, Any], list[float]] = {}
        for rollout in recent_rollouts:
            if not isinstance(rollout, Rollout):
                raise TypeError(f"fast learner: recent_rollouts must hold Rollout objects, got "
                                f"{type(rollout).__name__}")
            if "weights_version" not in (rollout.info or {}):
                raise ValueError("fast learner: trials='collect' pairs samples under the same weights, so every "
                                 "recent rollout needs info['weights_version'] (FSTAgent sets it)")
            version = rollout.info["weights_version"]
            samples.setdefault((rollout.context_id, rollout.group, version), []).append(float(rollout.reward))

        records = [self._judge_trial(population, cid, samples) for cid in population.trial_ids]
        n_accepted = sum(int(r["accepted"]) for r in records)
        for cid in population.member_ids:
            rewards: dict[str, list[float]] = {}
            for (context_id, group, _), values in samples.items():
                if context_id == cid and group in keys:
                    rewards.setdefault(group, []).extend(values)
            if rewards:  # a member the recent collects did not sample keeps its last scores
                population.set_scores(cid, {k: sum(v) / len(v) for k, v in rewards.items()})
        removed = population.prune()

        strategy = ProposerStrategy(self.proposer)
        lm_calls_before = int(getattr(self.proposer, "lm_calls", 0))
        cache_hits_before = int(getattr(self.proposer, "cache_hits", 0))
        n_proposals, n_iterations, stop_reason, adapter = self._propose_trials(population, recent_rollouts, strategy)
        metrics: dict[str, Any] = {
            "round": round_index,
            "n_iterations": n_iterations,
            "n_proposals": n_proposals,
            "n_accepted": n_accepted,
            "n_rejected": len(records) - n_accepted,
            "n_skipped": n_iterations - n_proposals,
            "n_trials_judged": len(records),
            "n_trials": len(population.trial_ids),
            "metric_calls": 0,
            "metric_calls_rescore": 0,
            "rollouts_reused": adapter.reused,
            "stop_reason": stop_reason,
            **self._round_summary(population, strategy, (lm_calls_before, cache_hits_before), removed, records),
        }
        logger.info("fast round %d (trials in the collects): %d judged, %d accepted, %d new trials, population %s",
                    round_index, len(records), n_accepted, n_proposals, population.ids)
        return metrics

    def _judge_trial(self, population: ContextPopulation, trial_id: int,
                     samples: Mapping[tuple[int, str, Any], list[float]]) -> dict[str, Any]:
        """Promote or remove one trial from its paired samples beside its parent; the round's record of it."""
        trial = population[trial_id]
        parent_id = trial.parent_id
        units = sorted({(group, version) for (cid, group, version) in samples
                        if cid == trial_id and (parent_id, group, version) in samples}, key=repr)
        parent_rewards = [samples[(parent_id, g, v)] for g, v in units]
        child_rewards = [samples[(trial_id, g, v)] for g, v in units]
        if parent_id not in population.member_ids:
            accepted, reason = False, "its parent left the population"
        elif not units:
            accepted, reason = False, "no collect sampled it beside its parent under the same weights"
        else:
            accepted, reason = self.acceptance.accept_samples(parent_rewards, child_rewards)
            accepted = bool(accepted)
        parent_context = population.context(parent_id) if parent_id in population else {}
        if accepted:
            by_group: dict[str, list[float]] = {}
            for (group, _), rewards in zip(units, child_rewards, strict=True):
                by_group.setdefault(group, []).extend(rewards)
            population.promote(trial_id, {g: sum(v) / len(v) for g, v in by_group.items()})
        else:
            population.remove(trial_id)
        before = [sum(r) / len(r) for r in parent_rewards]
        after = [sum(r) / len(r) for r in child_rewards]
        return {
            "iteration": population.round,
            "parent_id": parent_id,
            "child_id": trial_id if accepted else None,
            "trial_id": trial_id,
            "accepted": accepted,
            "reason": reason,
            "components": list(trial.changed),
            "minibatch": [g for g, _ in units],
            "pairs": sum(min(len(p), len(c)) for p, c in zip(parent_rewards, child_rewards, strict=True)),
            "parent_scores": before,
            "child_scores": after,
            "parent_sum": sum(before),
            "child_sum": sum(after),
            "diff": {c: diff_summary(parent_context.get(c, ""), trial.context.get(c, "")) for c in trial.changed},
            "reflection": clean_text(trial.reflection, 2000),
        }

    def _propose_trials(self, population: ContextPopulation, recent_rollouts: Sequence[Rollout],
                        strategy: ProposerStrategy) -> tuple[int, int, str, RolloutAdapter]:
        """Add up to ``proposals_per_round`` trials, each reflected from its parent's recent rollouts on a
        minibatch (gepa's Pareto selector, batch sampler and round-robin components); nothing is generated."""

        def no_generation(context: Any, problem_keys: list[str]) -> list[Rollout]:
            raise RuntimeError("a trials='collect' fast round generates no rollout")  # a bug if reached

        adapter = RolloutAdapter(no_generation, max_records_per_problem=self.max_records_per_problem,
                                 max_field_chars=self.max_field_chars)
        adapter.remember(recent_rollouts)
        trainset = list(dict.fromkeys(r.group for r in recent_rollouts))
        if not trainset:
            return 0, 0, "no_rollouts", adapter
        state, idx_to_id = population.to_gepa_state()
        for candidate in state.program_candidates:
            for component in self.components:
                candidate.setdefault(component, "")
        state.list_of_named_predictors = list(self.components)
        selector = ParetoCandidateSelector(self.rng)
        sampler = EpochShuffledBatchSampler(min(self.minibatch_size, len(trainset)), self.rng)
        components_for = RoundRobinReflectionComponentSelector()
        loader = ensure_loader(trainset)
        n_proposals = n_iterations = 0
        stop_reason = "proposals_per_round"
        while n_proposals < self.proposals_per_round:
            if n_iterations >= self.max_iterations:
                stop_reason = "max_iterations"
                break
            state.i += 1
            n_iterations += 1
            parent_idx = selector.select_candidate_idx(state)
            parent = state.program_candidates[parent_idx]
            parent_id = idx_to_id[parent_idx]
            minibatch = [trainset[i] for i in sampler.next_minibatch_ids(loader, state)]
            minibatch = [k for k in minibatch if adapter.remembered(parent, k)]
            if not minibatch:
                continue  # the parent has no recent rollout on these problems
            by_key, _ = adapter.rollouts_for(parent, minibatch, reuse=True)
            scores = [adapter.score(by_key[k]) for k in minibatch]
            if self.skip_perfect_score and all(s >= self.perfect_score for s in scores):
                continue
            trajectories = [by_key[k] for k in minibatch]
            batch = EvaluationBatch(outputs=[[r.completion for r in t] for t in trajectories], scores=scores,
                                    trajectories=trajectories)
            components = components_for(state, trajectories, scores, parent_idx, parent)
            try:
                proposal, _ = strategy.reflect(parent, adapter.make_reflective_dataset(parent, batch, components),
                                               components)
            except Exception:
                if strategy.fatal is not None:
                    raise strategy.fatal from None
                continue  # recorded in strategy.errors, as gepa's proposer skips a failed reflection
            if not proposal.new_texts:
                continue
            parent_context = population.context(parent_id)
            child = {k: v for k, v in {**parent, **proposal.new_texts}.items() if v or k in parent_context}
            if any(context_key(c.context) == context_key(child) for c in population):
                continue
            reflection = "\n".join(str(proposal.raw_lm_outputs.get(c, "")) for c in proposal.new_texts).strip()
            population.add(child, parent_id, {}, reflection=reflection, changed=sorted(proposal.new_texts),
                           trial=True)
            n_proposals += 1
        return n_proposals, n_iterations, stop_reason, adapter

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
