"""Fast rounds with trials in the collects (``trials="collect"``): children are sampled by the RL collects beside
their parents and judged at the next round on those paired samples; the round itself generates nothing."""

from __future__ import annotations

import random

import pytest

from fst_env.agents.fast import EvidenceAcceptance, NotesFastLearner, ReflectiveFastLearner, ScoreAcceptance
from fst_env.agents.population import ContextPopulation
from fst_env.agents.rollout import Rollout
from fst_env.context import Context

SEED = {"instructions": "Solve the problem."}
KEYS = [f"toy/train/{i}" for i in range(4)]


def no_generation(context: Context, keys: list[str]) -> list[Rollout]:
    raise AssertionError("a trials='collect' round must not generate rollouts")


def reflector(prompt: str) -> str:
    current = prompt.split("```")[1].strip()
    return f"Improved:\n```text\n{current} Think step by step.\n```"


def collected(context_id: int, context: Context, rewards: dict[str, list[float]], version: int) -> list[Rollout]:
    """What a collect under weights ``version`` left for the fast round: rollouts of one context per problem."""
    return [Rollout(group=key, problem=f"What is 6*7? ({key})", context_id=context_id, context=dict(context),
                    completion="41", reward=r, feedback="Correct." if r else "Incorrect: expected 42, got 41.",
                    verdict="correct" if r else "incorrect", info={"weights_version": version})
            for key, values in rewards.items() for r in values]


def learner(**kwargs) -> ReflectiveFastLearner:
    return ReflectiveFastLearner(reflector, proposals_per_round=1, trials="collect", **kwargs)


def with_trial() -> tuple[ContextPopulation, int, ReflectiveFastLearner]:
    """A population whose seed (id 0) has just proposed one trial from its collect rollouts."""
    pop = ContextPopulation(SEED)
    fast = learner()
    metrics = fast.round(pop, no_generation, collected(0, SEED, {k: [0.0, 0.0] for k in KEYS}, 0), KEYS)
    assert metrics["n_proposals"] == 1 and metrics["metric_calls"] == 0
    return pop, pop.trial_ids[0], fast


def test_a_round_proposes_trials_and_generates_nothing() -> None:
    pop, trial, _ = with_trial()
    assert pop.member_ids == [0] and pop.trial_ids == [trial]
    assert pop[trial].context["instructions"] == "Solve the problem. Think step by step."
    assert pop[trial].scores == {} and pop[trial].parent_id == 0 and pop[trial].round == 1
    assert pop.best().id == 0 and pop.pareto_front() == [0]  # a trial is no member
    assert sorted(pop.assign_group(4, random.Random(0))) == [0, 0, trial, trial]  # but the collects sample it


def test_a_trial_that_beats_its_parent_on_paired_samples_is_promoted() -> None:
    pop, trial, fast = with_trial()
    recent = []
    for version in (1, 2, 3):  # three collects after the round, each sampling both contexts on every problem
        recent += collected(0, SEED, {k: [0.0, 0.0] for k in KEYS}, version)
        recent += collected(trial, pop.context(trial), {k: [1.0, 0.0] for k in KEYS}, version)
    metrics = fast.round(pop, no_generation, recent, KEYS)
    assert metrics["n_trials_judged"] == 1 and metrics["n_accepted"] == 1 and metrics["metric_calls"] == 0
    record = metrics["proposals"][0]
    assert record["accepted"] and record["child_id"] == trial and record["pairs"] == 24
    assert len(record["minibatch"]) == 12  # (problem, weights version) units
    assert trial in pop.member_ids and pop[trial].scores == dict.fromkeys(KEYS, 0.5)
    assert pop[0].scores == dict.fromkeys(KEYS, 0.0)  # members are scored from the same collects
    assert pop.best().id == trial
    assert metrics["n_proposals"] == 1 and len(pop.trial_ids) == 1  # and the next trial is on its way
    assert pop[pop.trial_ids[0]].parent_id == trial  # from the front's only parent


def test_a_trial_no_better_than_its_parent_is_removed() -> None:
    pop, trial, fast = with_trial()
    recent = []
    for version in (1, 2):
        recent += collected(0, SEED, {k: [1.0, 0.0] for k in KEYS}, version)
        recent += collected(trial, pop.context(trial), {k: [1.0, 0.0] for k in KEYS}, version)
    metrics = fast.round(pop, no_generation, recent, KEYS)
    record = metrics["proposals"][0]
    assert not record["accepted"] and record["child_id"] is None and metrics["n_rejected"] == 1
    assert "sign test" in record["reason"] or "pairs" in record["reason"]
    assert trial not in pop and pop.member_ids == [0]


def test_samples_are_paired_only_under_the_same_weights() -> None:
    # The parent's samples came from older weights than the trial's: comparing them would credit the trial with
    # whatever the slow steps did in between, so there is no evidence and the trial is dropped.
    pop, trial, fast = with_trial()
    recent = collected(0, SEED, {k: [0.0] * 4 for k in KEYS}, 1)
    recent += collected(trial, pop.context(trial), {k: [1.0] * 4 for k in KEYS}, 2)
    record = fast.round(pop, no_generation, recent, KEYS)["proposals"][0]
    assert not record["accepted"] and record["pairs"] == 0
    assert record["reason"] == "no collect sampled it beside its parent under the same weights"
    assert trial not in pop


def _trial_accepts(parent_rate: float, child_rate: float, rounds: int = 300) -> int:
    """Rounds (of ``rounds``) that promote a trial, each after 3 collects x 4 problems x 2 samples per context
    with coin-flip rewards at the given rates (seeded)."""
    accepted = 0
    for trial_round in range(rounds):
        pop, trial, fast = with_trial()
        coin = random.Random(trial_round)
        recent = []
        for version in (1, 2, 3):
            for cid, rate in ((0, parent_rate), (trial, child_rate)):
                recent += collected(cid, pop.context(cid),
                                    {k: [float(coin.random() < rate) for _ in range(2)] for k in KEYS}, version)
        accepted += fast.round(pop, no_generation, recent, KEYS)["n_accepted"]
    return accepted


def test_an_identical_trial_is_rarely_accepted_and_a_better_one_usually_is() -> None:
    # An identical trial (both contexts' rewards are coin flips at 0.3) passes the sign test at most at its level;
    # a real gain (0.3 -> 0.7) is usually found from the same amount of collect evidence. Measured: 5 of 300 (1.7%)
    # and 245 of 300 (82%).
    identical = _trial_accepts(0.3, 0.3)
    better = _trial_accepts(0.3, 0.7)
    assert identical == 5 and identical / 300 <= 0.05
    assert better == 245


def test_a_trial_whose_parent_was_pruned_is_dropped() -> None:
    pop = ContextPopulation(SEED, max_size=1)
    other = pop.add({"instructions": "Other."}, 0, dict.fromkeys(KEYS, 1.0))
    trial = pop.add({"instructions": "Solve the problem. Think."}, 0, {}, trial=True)
    removed = pop.prune()
    assert removed == [0] and pop.member_ids == [other] and pop.trial_ids == [trial]  # trials are not pruned
    record = learner().round(pop, no_generation, collected(other, pop.context(other), {KEYS[0]: [0.0]}, 0),
                             KEYS)["proposals"][0]
    assert record["reason"] == "its parent left the population" and trial not in pop


def test_notes_learner_runs_in_collect_mode() -> None:
    pop = ContextPopulation(SEED)
    fast = NotesFastLearner(proposals_per_round=1, trials="collect")
    recent = collected(0, SEED, {k: [0.0, 0.0] for k in KEYS}, 0)
    metrics = fast.round(pop, no_generation, recent, KEYS)
    assert metrics["metric_calls"] == 0 and metrics["n_proposals"] == len(pop.trial_ids) == 1
    assert pop[pop.trial_ids[0]].context.get("notes")


def test_collect_mode_needs_a_sample_level_acceptance_test() -> None:
    assert isinstance(learner().acceptance, EvidenceAcceptance)
    with pytest.raises(ValueError, match="accept_samples"):
        learner(acceptance=ScoreAcceptance(lambda before, after: True))
    with pytest.raises(ValueError, match="trials must be one of"):
        ReflectiveFastLearner(reflector, trials="lazy")


def test_population_trials_round_trip_and_guard_their_operations() -> None:
    pop, trial, _ = with_trial()
    restored = ContextPopulation.from_state_dict(pop.state_dict())
    assert restored.trial_ids == [trial] and restored.member_ids == [0]
    with pytest.raises(ValueError, match="not a trial"):
        pop.promote(0, {})
    with pytest.raises(ValueError, match="is a member"):
        pop.remove(0)
    with pytest.raises(ValueError, match="no scores"):
        pop.add({"instructions": "x"}, 0, {KEYS[0]: 1.0}, trial=True)
    state = pop.state_dict()
    state["candidates"] = [c for c in state["candidates"] if c["trial"]]
    with pytest.raises(ValueError, match="only trials"):
        ContextPopulation.from_state_dict(state)


def test_collect_mode_refuses_rollouts_without_a_weights_version() -> None:
    pop, _, fast = with_trial()
    untagged = collected(0, SEED, {KEYS[0]: [0.0]}, 0)
    untagged[0].info.clear()
    with pytest.raises(ValueError, match="weights_version"):
        fast.round(pop, no_generation, untagged, KEYS)
