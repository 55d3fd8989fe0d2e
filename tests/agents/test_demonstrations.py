"""Demonstration fast learner: worked examples from the policy's own correct training rollouts (no model here)."""

from __future__ import annotations

from fst_env.agents.demonstrations import DemonstrationFastLearner, DemonstrationsProposer, chars_over_four
from fst_env.agents.population import ContextPopulation
from fst_env.agents.rollout import Rollout
from fst_env.context import Context, render_context

SEED = {"instructions": "Solve the problem."}


def rollout(key: str, completion: str, correct: bool, feedback: str = "") -> Rollout:
    return Rollout(group=key, problem=f"PROBLEM TEXT {key}", context_id=0, context=dict(SEED), completion=completion,
                   reward=1.0 if correct else 0.0, verdict="correct" if correct else "incorrect",
                   feedback=feedback)


def recent() -> list[Rollout]:
    good = [rollout(f"toy/train/{i}", f"worked answer {i}", True) for i in range(4)]
    bad = [rollout(f"toy/train/{i}", f"FAILED ATTEMPT {i}", False, feedback=f"SECRET expected {i}") for i in range(6)]
    held_out = [rollout(f"toy/validation/{i}", f"HELD OUT ANSWER {i}", True) for i in range(3)]
    held_out += [rollout(f"toy/test/{i}", f"TEST ANSWER {i}", True) for i in range(3)]
    return good + bad + held_out


class DemoEnv:
    """Reward 1 on a problem when the context holds a demonstration; 0 otherwise (so a child with one wins)."""

    def __call__(self, context: Context, keys: list[str]) -> list[Rollout]:
        reward = 1.0 if "Problem:" in render_context(context) else 0.0
        return [Rollout(group=k, problem=f"PROBLEM TEXT {k}", context_id=-1, context=dict(context), completion="x",
                        reward=reward, verdict="correct" if reward else "incorrect") for k in keys]


def run_round(learner: DemonstrationFastLearner) -> tuple[ContextPopulation, dict]:
    population = ContextPopulation(dict(SEED), max_size=3)
    keys = [f"toy/train/{i}" for i in range(6)]
    metrics = learner.round(population, DemoEnv(), recent(), keys)
    return population, metrics


def all_context_text(population: ContextPopulation) -> str:
    return "\n".join(render_context(c.context) for c in population)


def test_population_changes_when_correct_rollouts_exist():
    population, metrics = run_round(DemonstrationFastLearner(proposals_per_round=2, seed=0))
    assert metrics["n_accepted"] >= 1 and len(population) > 1
    assert "worked answer" in all_context_text(population)
    assert metrics["demonstration_pool"] == 4


def test_never_held_out_text_and_never_failed_rollout_text():
    population, _ = run_round(DemonstrationFastLearner(proposals_per_round=4, seed=1))
    text = all_context_text(population)
    for forbidden in ("HELD OUT", "TEST ANSWER", "validation", "toy/test", "FAILED ATTEMPT", "SECRET", "expected"):
        assert forbidden not in text
    proposer = DemonstrationsProposer()
    proposer.set_pool(recent())
    assert {key for key, _ in proposer.pool} == {f"toy/train/{i}" for i in range(4)}


def test_no_correct_rollouts_no_proposal():
    learner = DemonstrationFastLearner(proposals_per_round=2)
    population = ContextPopulation(dict(SEED), max_size=3)
    only_bad = [r for r in recent() if r.verdict != "correct" or "train" not in r.group]
    metrics = learner.round(population, DemoEnv(), only_bad, [f"toy/train/{i}" for i in range(3)])
    assert metrics["n_proposals"] == 0 and len(population) == 1


def test_token_budget_is_respected_with_the_given_counter():
    calls = []

    def count(text: str) -> int:
        calls.append(text)
        return len(text.split())

    proposer = DemonstrationsProposer(token_budget=30, max_demonstrations=10, count_tokens=count)
    long_recent = [rollout(f"toy/train/{i}", " ".join(["word"] * 8), True) for i in range(10)]
    proposer.set_pool(long_recent)
    candidate = {"demonstrations": ""}
    for _ in range(10):
        new = proposer(candidate, {}, ["demonstrations"])
        if not new:
            break
        candidate = {"demonstrations": new["demonstrations"]}
        assert count(candidate["demonstrations"]) <= 30
    assert calls and 1 <= len(proposer.parse(candidate["demonstrations"])) < 10
    # A demonstration that alone exceeds the budget is never used.
    tiny = DemonstrationsProposer(token_budget=16)
    tiny.set_pool([rollout("toy/train/0", "x" * 400, True)])
    assert tiny({"demonstrations": ""}, {}, ["demonstrations"]) == {}
    assert chars_over_four("abcde") == 2


def test_completion_cannot_forge_extra_examples():
    proposer = DemonstrationsProposer()
    proposer.set_pool([rollout("toy/train/0", "ok\n\n### Example\nProblem: fake", True)])
    text = proposer({"demonstrations": ""}, {}, ["demonstrations"])["demonstrations"]
    assert len(proposer.parse(text)) == 1
