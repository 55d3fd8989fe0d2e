"""Fast learners: a scripted reflector and keyword-scored evaluate fns stand in for the LLMs (no model here)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from fst_env.agents.fast import (
    GepaFastLearner,
    NotesFastLearner,
    NotesProposer,
    ReflectiveFastLearner,
    ScoreAcceptance,
    diff_summary,
    format_feedback,
    parse_feedback,
)
from fst_env.agents.population import ContextPopulation
from fst_env.agents.reflection import ReflectionAuthError
from fst_env.agents.rollout import Rollout
from fst_env.context import Context, render_context

KEYS = [f"toy/train/{i}" for i in range(6)]
SEED = {"instructions": "Solve the problem."}


class KeywordEnv:
    """An evaluate fn whose reward depends on words in the context; it logs every (context, keys) call.

    reward = base + 0.5 if ``good`` is in the rendered context, - 0.5 if ``bad`` is; clipped to [0, 1].
    ``per_key`` rollouts are returned per problem (the G/K rollouts of one context).
    """

    def __init__(self, good: str = "step by step", bad: str = "guess", base: float = 0.5, per_key: int = 1) -> None:
        self.good, self.bad, self.base, self.per_key = good, bad, base, per_key
        self.calls: list[tuple[Context, list[str]]] = []

    def reward(self, context: Context) -> float:
        text = render_context(context)
        value = self.base + (0.5 if self.good in text else 0.0) - (0.5 if self.bad in text else 0.0)
        return min(1.0, max(0.0, value))

    def __call__(self, context: Context, keys: list[str]) -> list[Rollout]:
        self.calls.append((dict(context), list(keys)))
        reward = self.reward(context)
        feedback = "Correct." if reward >= 1 else f"Incorrect: expected 42, got 41. Work {self.good}."
        return [Rollout(group=k, problem=f"What is 6*7? ({k})", context_id=-1, context=dict(context),
                        completion="41", reward=reward, feedback=feedback,
                        verdict="correct" if reward >= 1 else "incorrect")
                for k in keys for _ in range(self.per_key)]

    @property
    def rollouts(self) -> int:
        return sum(len(keys) * self.per_key for _, keys in self.calls)


class ScriptedReflector:
    """A reflection LM that appends the next scripted phrase to the current instruction, in a fenced block."""

    def __init__(self, phrases: list[str] | Callable[[int], str]) -> None:
        self.phrases = phrases
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        n = len(self.prompts) - 1
        phrase = self.phrases(n) if callable(self.phrases) else self.phrases[n % len(self.phrases)]
        current = prompt.split("```")[1].strip()
        return f"Here is the improved instruction.\n```text\n{current} {phrase}\n```"


def test_better_context_enters_the_population() -> None:
    env = KeywordEnv()
    reflector = ScriptedReflector(["Think step by step."])
    learner = ReflectiveFastLearner(reflector, proposals_per_round=1, seed=0)
    pop = ContextPopulation(SEED)
    metrics = learner.round(pop, env, [], KEYS)
    assert metrics["n_proposals"] == 1 and metrics["n_accepted"] == 1 and metrics["n_rejected"] == 0
    child = next(c for c in pop if c.parent_id is not None)
    assert child.context["instructions"] == "Solve the problem. Think step by step."
    assert child.changed == ["instructions"] and child.round == 1
    assert "Think step by step" in child.reflection  # the reflection that produced it is kept
    assert child.scores == dict.fromkeys(KEYS, 1.0)  # scored on every problem key, under the current env
    assert pop.best().id == child.id and metrics["best_mean_score"] == 1.0
    record = metrics["proposals"][0]
    assert record["accepted"] and record["child_id"] == child.id and record["parent_id"] == pop.ids[0]
    assert record["parent_sum"] == pytest.approx(1.5) and record["child_sum"] == pytest.approx(3.0)
    assert set(record["minibatch"]) <= set(KEYS) and len(record["minibatch"]) == 3
    assert "+Solve the problem. Think step by step." in record["diff"]["instructions"]


def test_worse_or_equal_context_is_rejected() -> None:
    env = KeywordEnv()
    learner = ReflectiveFastLearner(ScriptedReflector(["Just guess.", "Be brief."]), proposals_per_round=2)
    pop = ContextPopulation(SEED)
    metrics = learner.round(pop, env, [], KEYS)
    assert metrics["n_proposals"] == 2 and metrics["n_accepted"] == 0 and metrics["n_rejected"] == 2
    assert len(pop) == 1 and pop.context(pop.ids[0]) == SEED
    worse, equal = metrics["proposals"]
    assert worse["child_sum"] < worse["parent_sum"]
    assert equal["child_sum"] == equal["parent_sum"]  # a tie is not a strict improvement
    assert all(r["child_id"] is None for r in metrics["proposals"])


def test_custom_acceptance_can_admit_ties() -> None:
    learner = ReflectiveFastLearner(ScriptedReflector(["Be brief."]), proposals_per_round=1,
                                    acceptance=ScoreAcceptance(lambda before, after: sum(after) >= sum(before)))
    pop = ContextPopulation(SEED)
    assert learner.round(pop, KeywordEnv(), [], KEYS)["n_accepted"] == 1
    with pytest.raises(TypeError, match="ScoreAcceptance"):
        ReflectiveFastLearner(ScriptedReflector(["x"]), acceptance=lambda a, b: True)  # type: ignore[arg-type]


def test_reflection_prompt_is_gepas_and_carries_feedback() -> None:
    reflector = ScriptedReflector(["Think step by step."])
    ReflectiveFastLearner(reflector, proposals_per_round=1).round(ContextPopulation(SEED), KeywordEnv(), [], KEYS)
    prompt = reflector.prompts[0]
    assert prompt.startswith("I provided an assistant with the following instructions")
    assert "Solve the problem." in prompt
    for field in ("## Inputs", "## Generated Outputs", "## Feedback"):
        assert field in prompt
    assert "Score: 0.5 (incorrect). Incorrect: expected 42, got 41." in prompt


def test_recent_rollouts_are_reused_not_regenerated() -> None:
    env = KeywordEnv()
    recent_keys = ["toy/train/r1", "toy/train/r2", "toy/train/r3"]
    recent = KeywordEnv()(dict(SEED), recent_keys)  # "RL rollouts" of the seed, produced outside the round
    learner = ReflectiveFastLearner(ScriptedReflector(["Think step by step."]), proposals_per_round=1)
    metrics = learner.round(ContextPopulation(SEED), env, recent, KEYS[:2])
    seed_calls = [keys for ctx, keys in env.calls if ctx == SEED]
    assert seed_calls == [KEYS[:2]]  # only the re-scoring; the minibatch came from the recent rollouts
    child_calls = [keys for ctx, keys in env.calls if ctx != SEED]
    assert sorted(child_calls[0]) == recent_keys  # the child is evaluated on the recent problems
    assert metrics["rollouts_reused"] >= 3
    assert metrics["metric_calls"] == env.rollouts == 2 + 3 + 2


def test_rescoring_uses_only_rollouts_under_the_current_weights() -> None:
    stale = KeywordEnv(base=0.0)(dict(SEED), KEYS)  # rollouts from before the last slow steps
    env = KeywordEnv(base=0.5)  # the current weights do better
    pop = ContextPopulation(SEED)
    learner = ReflectiveFastLearner(ScriptedReflector(["Be brief."]), proposals_per_round=1)
    learner.round(pop, env, stale, KEYS, evidence=())  # the caller says none was sampled under these weights
    assert env.calls[0] == (SEED, KEYS)  # the seed was re-scored with the current policy
    assert pop[pop.ids[0]].scores == dict.fromkeys(KEYS, 0.5)
    # Rollouts under the current weights (no slow step since) are as good as new ones: nothing is regenerated.
    current = KeywordEnv(base=0.5)(dict(SEED), KEYS)
    env = KeywordEnv(base=0.5)
    pop = ContextPopulation(SEED)
    ReflectiveFastLearner(ScriptedReflector(["Be brief."]), proposals_per_round=1).round(pop, env, current, KEYS)
    assert [keys for ctx, keys in env.calls if ctx == SEED] == []
    assert pop[pop.ids[0]].scores == dict.fromkeys(KEYS, 0.5)


class CoinEnv:
    """An evaluate fn whose reward is a coin flip with probability ``rate`` whatever the context (seeded)."""

    def __init__(self, rate: float, seed: int) -> None:
        import random

        self.rate, self.rng = rate, random.Random(seed)

    def __call__(self, context: Context, keys: list[str]) -> list[Rollout]:
        rewards = [float(self.rng.random() < self.rate) for _ in keys]
        return [Rollout(group=k, problem=f"problem {k}", context_id=-1, context=dict(context), completion="41",
                        reward=r, feedback="Correct." if r else "Incorrect: expected 42.",
                        verdict="correct" if r else "incorrect") for k, r in zip(keys, rewards, strict=True)]


def _identical_child_accepts(evidence_is_stale: bool, trials: int = 200) -> int:
    """Rounds (of ``trials``) that accept a child as good as its parent, under the agent's acceptance settings,
    when the recent rollouts came from older weights (reward rate 0.2) and the current ones score 0.5."""
    from fst_env.agents.fast import EvidenceAcceptance

    recent_keys = [f"toy/train/r{i}" for i in range(3)]
    accepted = 0
    for trial in range(trials):
        older = CoinEnv(0.2, seed=10_000 + trial)(dict(SEED), [k for k in recent_keys for _ in range(4)])
        learner = ReflectiveFastLearner(ScriptedReflector(["Be brief."]), proposals_per_round=1, seed=trial,
                                        acceptance=EvidenceAcceptance(), minibatch_samples=4)
        metrics = learner.round(ContextPopulation(SEED), CoinEnv(0.5, seed=trial), older, KEYS[:2],
                                evidence=older if evidence_is_stale else ())
        accepted += metrics["n_accepted"]
    return accepted


def test_parent_and_child_are_judged_under_the_same_weights():
    # The child changes nothing that matters. Judged against rollouts from older, worse weights, it would look
    # better in most rounds; with the parent re-sampled under the current weights it is accepted about as
    # rarely as the sign test allows (alpha 5%). Measured: 52 of 200 (26%) vs 5 of 200 (2.5%).
    stale_accepts = _identical_child_accepts(evidence_is_stale=True)
    fresh_accepts = _identical_child_accepts(evidence_is_stale=False)
    assert stale_accepts == 52
    assert fresh_accepts == 5
    assert fresh_accepts / 200 <= 0.05 < stale_accepts / 200


def test_budget_is_respected_and_counts_every_generated_rollout() -> None:
    env = KeywordEnv(base=0.0, good="rule")
    reflector = ScriptedReflector(lambda n: f"rule{n}" if n % 2 else f"note {n}")
    learner = ReflectiveFastLearner(reflector, proposals_per_round=50, budget_metric_calls=40, max_iterations=100)
    metrics = learner.round(ContextPopulation(SEED), env, [], KEYS)
    assert metrics["stop_reason"] == "budget"
    assert metrics["metric_calls"] == env.rollouts <= 40
    assert metrics["metric_calls_rescore"] == len(KEYS)
    assert metrics["n_proposals"] >= 1


def test_budget_counts_several_rollouts_per_problem() -> None:
    env = KeywordEnv(per_key=2)
    learner = ReflectiveFastLearner(ScriptedReflector(["Think step by step."]), proposals_per_round=5,
                                    budget_metric_calls=30)
    pop = ContextPopulation(SEED)
    metrics = learner.round(pop, env, [], KEYS)
    assert metrics["metric_calls"] == env.rollouts <= 30
    assert pop[pop.ids[0]].scores == dict.fromkeys(KEYS, 0.5)  # mean over the two rollouts of each problem


def test_rescoring_refreshes_stale_scores_each_round() -> None:
    pop = ContextPopulation(SEED)
    learner = ReflectiveFastLearner(ScriptedReflector(["Think step by step."]), proposals_per_round=1)
    learner.round(pop, KeywordEnv(base=0.5), [], KEYS)
    child = next(c.id for c in pop if c.parent_id is not None)
    assert pop[child].mean_score == 1.0
    # "The slow weights moved": the same contexts now score differently; round 2 must see it.
    drifted = KeywordEnv(base=0.0, good="nothing-matches")
    learner.round(pop, drifted, [], KEYS[:3])
    assert pop[pop.ids[0]].scores == dict.fromkeys(KEYS[:3], 0.0)
    if child in pop:
        assert pop[child].scores == dict.fromkeys(KEYS[:3], 0.0)


def test_population_is_pruned_to_max_size() -> None:
    env = KeywordEnv(base=0.0, good="x")
    # Each accepted child adds one more "x": every proposal is a strict improvement until the reward caps.
    learner = ReflectiveFastLearner(ScriptedReflector(lambda n: f"x{n}"), proposals_per_round=4, seed=3)
    pop = ContextPopulation(SEED, max_size=2)
    metrics = learner.round(pop, env, [], KEYS)
    assert metrics["n_accepted"] >= 1
    assert len(pop) <= 2 and metrics["population_size"] == len(pop)
    assert set(metrics["mean_scores"]) == set(pop.ids)


def test_degenerate_reflection_keeps_parent_and_spends_nothing() -> None:
    env = KeywordEnv()
    for reply in ("", "```\n```", "ok ok ok ok " * 200, "I provided an assistant with the following instructions"):
        learner = ReflectiveFastLearner(lambda prompt, r=reply: r, proposals_per_round=2, max_iterations=3)
        env.calls.clear()
        pop = ContextPopulation(SEED)
        metrics = learner.round(pop, env, [], KEYS)
        assert metrics["n_proposals"] == 0 and len(pop) == 1
        assert metrics["metric_calls"] == len(KEYS)  # the re-scoring only
        assert metrics["reflection_calls"] == 3


def test_transient_reflection_errors_are_counted_and_fatal_ones_raise() -> None:
    def flaky(prompt: str) -> str:
        raise RuntimeError("server hiccup")

    metrics = ReflectiveFastLearner(flaky, proposals_per_round=1, max_iterations=2).round(
        ContextPopulation(SEED), KeywordEnv(), [], KEYS)
    assert metrics["n_proposals"] == 0 and metrics["reflection_errors"] >= 2
    assert "server hiccup" in metrics["last_reflection_error"]
    assert metrics["reflection_calls"] == 2  # gepa's immediate retry of the same job is not a second call

    def unauthorised(prompt: str) -> str:
        raise ReflectionAuthError("http://x/v1/chat/completions refused the credentials for model 'm'")

    with pytest.raises(ReflectionAuthError, match="credentials"):
        ReflectiveFastLearner(unauthorised, proposals_per_round=1).round(ContextPopulation(SEED), KeywordEnv(), [],
                                                                         KEYS)


def test_same_seed_same_round_and_state_dict_resumes_identically() -> None:
    def run(learner: ReflectiveFastLearner, pop: ContextPopulation) -> dict:
        return learner.round(pop, KeywordEnv(base=0.0, good="x"), [], KEYS)

    phrases = lambda n: f"x{n}"  # noqa: E731
    a, b = (ReflectiveFastLearner(ScriptedReflector(phrases), proposals_per_round=3, seed=11) for _ in range(2))
    pop_a, pop_b = ContextPopulation(SEED), ContextPopulation(SEED)
    assert run(a, pop_a) == run(b, pop_b)
    assert pop_a.state_dict() == pop_b.state_dict()
    # Resume: a fresh learner loaded from a's state continues exactly like a.
    c = ReflectiveFastLearner(ScriptedReflector(lambda n: f"x{n + 100}"), proposals_per_round=3, seed=999)
    c.load_state_dict(json.loads(json.dumps(a.state_dict())))
    a.reflection.reflection_lm = ScriptedReflector(lambda n: f"x{n + 100}")
    pop_c = ContextPopulation.from_state_dict(pop_a.state_dict())
    assert run(a, pop_a) == run(c, pop_c)
    assert pop_a.state_dict() == pop_c.state_dict()


def test_evaluate_fn_contract_is_checked() -> None:
    learner = ReflectiveFastLearner(ScriptedReflector(["x"]))
    with pytest.raises(ValueError, match="no rollout for problem keys"):
        learner.round(ContextPopulation(SEED), lambda ctx, keys: [], [], KEYS)
    with pytest.raises(TypeError, match="Rollout"):
        learner.round(ContextPopulation(SEED), lambda ctx, keys: ["text"], [], KEYS)
    with pytest.raises(ValueError, match="problem_keys"):
        learner.round(ContextPopulation(SEED), KeywordEnv(), [], [])
    with pytest.raises(ValueError, match="minibatch_size"):
        ReflectiveFastLearner(ScriptedReflector(["x"]), minibatch_size=0)


# ---------------------------------------------------------------------------------------------- notes learner
class FormatEnv:
    """Rewards 1 only when the context tells the model the required format (the quoted sentence is the cue)."""

    REQUIREMENT = "Put your final answer inside <answer></answer> tags."

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, context: Context, keys: list[str]) -> list[Rollout]:
        self.calls += 1
        follows = "<answer></answer>" in render_context(context)
        out = []
        for k in keys:
            if follows:
                out.append(Rollout(k, f"Problem {k}", -1, dict(context), "<answer>7</answer>", 1.0, "Correct.",
                                   "correct"))
            else:
                out.append(Rollout(k, f"Problem {k}", -1, dict(context), "7", 0.0,
                                   f"No answer found in a response of {len(k)} characters. {self.REQUIREMENT}",
                                   "format_error"))
        return out


def test_notes_learner_turns_format_errors_into_a_note_that_raises_the_score() -> None:
    pop = ContextPopulation(SEED)
    metrics = NotesFastLearner(seed=0).round(pop, FormatEnv(), [], KEYS)
    assert metrics["n_accepted"] == 1 and metrics["reflection_calls"] == 0
    child = pop.best()
    assert child.context["instructions"] == SEED["instructions"]
    assert child.context["notes"] == f"- Format rule: {FormatEnv.REQUIREMENT}"
    assert child.mean_score == 1.0 and pop[pop.ids[0]].mean_score == 0.0
    assert child.changed == ["notes"]


def test_notes_learner_is_deterministic() -> None:
    runs = []
    for _ in range(2):
        pop = ContextPopulation(SEED)
        metrics = NotesFastLearner(seed=5).round(pop, FormatEnv(), [], KEYS)
        runs.append((metrics, pop.state_dict()))
    assert runs[0] == runs[1]


def test_notes_learner_proposes_nothing_without_failures() -> None:
    env = KeywordEnv(base=1.0)
    metrics = NotesFastLearner(max_iterations=3).round(ContextPopulation(SEED), env, [], KEYS)
    assert metrics["n_proposals"] == 0 and metrics["metric_calls"] == len(KEYS)


def test_notes_proposer_generic_note_from_recurring_expected_pattern() -> None:
    records = [{"Inputs": "q", "Generated Outputs": str(n),
                "Feedback": format_feedback(0.0, "incorrect", f"Expected {n + 1}, got {n}. Reward is zero.")}
               for n in (3, 17, 250)]
    proposer = NotesProposer(min_count=2)
    notes = proposer.derive_notes(records)
    texts = [n.text for n in notes]
    # The sentence naming the expected value is never quoted; a fixed rule says to re-check instead.
    assert texts == ["Avoid this recurring mistake: Reward is zero.",
                     "Final answers were often wrong: re-check each step and the final value before answering."]
    assert all("17" not in t and "250" not in t and "Expected" not in t for t in texts)
    # A lone occurrence is not "recurring".
    assert NotesProposer(min_count=2).derive_notes(records[:1]) == []
    # Successful rollouts never produce notes.
    good = [{"Feedback": format_feedback(1.0, "correct", "Expected 4, got 4.")}] * 3
    assert proposer.derive_notes(good) == []


def test_notes_proposer_caps_and_deduplicates_notes() -> None:
    proposer = NotesProposer(max_notes=2, max_new_notes=1, min_count=1)
    records = {"notes": [{"Feedback": format_feedback(0.0, "format_error", "Answer with a single integer.")}]}
    parent = {"instructions": "s", "notes": "- old one\n- old two"}
    new = proposer(parent, records, ["notes"])["notes"]
    assert new.splitlines() == ["- old two", "- Format rule: Answer with a single integer."]
    # The same feedback again adds nothing new: no proposal.
    assert proposer({"instructions": "s", "notes": new}, records, ["notes"]) == {}
    with pytest.raises(ValueError, match="max_notes"):
        NotesProposer(max_notes=0)


def test_feedback_format_round_trip_and_diff_summary() -> None:
    text = format_feedback(0.25, "format_error", "Use tags.")
    assert text == "Score: 0.25 (format_error). Use tags."
    assert parse_feedback(text) == (0.25, "format_error", "Use tags.")
    assert parse_feedback("free text") == (None, "", "free text")
    assert format_feedback(1.0, "", "") == "Score: 1. (the environment gave no feedback)"
    summary = diff_summary("a\nb", "a\nc\nd")
    assert summary.startswith("+2/-1 lines") and "+c" in summary and "-b" in summary


def test_records_survive_hostile_model_output() -> None:
    def evaluate(context: Context, keys: list[str]) -> list[Rollout]:
        return [Rollout(k, "p\x00", -1, dict(context), "\ud800" + "x" * 100_000 + "\x07", 0.0, "bad \ud800",
                        "incorrect") for k in keys]

    reflector = ScriptedReflector(["more"])
    GepaFastLearner(NotesProposer(), minibatch_size=2, proposals_per_round=1, max_iterations=1).round(
        ContextPopulation(SEED), evaluate, [], KEYS[:2])
    ReflectiveFastLearner(reflector, proposals_per_round=1, max_field_chars=500).round(
        ContextPopulation(SEED), evaluate, [], KEYS[:2])
    prompt = reflector.prompts[0]
    prompt.encode("utf-8")  # no lone surrogates reach the reflection LM
    assert "\x00" not in prompt and "characters elided" in prompt and len(prompt) < 5000


# ---------------------------------------------------------------------------------------------- evidence acceptance
def _coin_trials(acceptance, parent_rate: float, child_rate: float, trials: int = 500, seed: int = 0):
    import random

    rng = random.Random(seed)
    accepted = strict = 0
    for _ in range(trials):
        parent = [[float(rng.random() < parent_rate) for _ in range(4)] for _ in range(3)]
        child = [[float(rng.random() < child_rate) for _ in range(4)] for _ in range(3)]
        accepted += acceptance.accept_samples(parent, child)[0]
        strict += sum(map(sum, child)) > sum(map(sum, parent))
    return accepted, strict


def test_evidence_acceptance_false_accept_rate_is_rare_on_a_coin_flip():
    from fst_env.agents.fast import EvidenceAcceptance

    # An identical child scored with independent samples on a coin-flip reward, 3 problems x 4 samples.
    accepted, strict = _coin_trials(EvidenceAcceptance(), 0.5, 0.5)
    assert accepted == 6  # 1.2% (docstring figure); the sign test bounds it by alpha = 5%
    assert accepted / 500 < 0.05
    assert strict == 203  # gepa's strict improvement of the sum accepts 40.6% of these identical children
    power, _ = _coin_trials(EvidenceAcceptance(), 0.3, 0.9, seed=1)
    assert power == 442  # a real gain is still accepted in 88.4% of trials


def test_evidence_acceptance_rejects_one_lucky_sample_and_small_minibatches():
    from fst_env.agents.fast import EvidenceAcceptance

    acceptance = EvidenceAcceptance()
    ok, reason = acceptance.accept_samples([[0.0], [0.0], [0.0]], [[1.0], [0.0], [0.0]])  # 0 -> 1 by one sample
    assert not ok and "pairs" in reason
    ok, reason = acceptance.accept_samples([[0.0] * 4], [[1.0] * 4])
    assert not ok and "problems" in reason
    ok, _ = acceptance.accept_samples([[0.0] * 4] * 3, [[1.0] * 4] * 3)
    assert ok
    ok, reason = EvidenceAcceptance(margin=0.5).accept_samples([[0.0] * 4] * 3, [[1.0, 1.0, 0.0, 0.0]] * 3)
    assert not ok and "margin" in reason


def test_learner_with_evidence_acceptance_uses_repeated_minibatch_samples():
    from fst_env.agents.fast import EvidenceAcceptance

    env = KeywordEnv(base=0.0)
    learner = ReflectiveFastLearner(ScriptedReflector(["Work step by step."]), minibatch_size=3,
                                    proposals_per_round=1, seed=0, acceptance=EvidenceAcceptance(),
                                    minibatch_samples=4)
    population = ContextPopulation(dict(SEED), max_size=3)
    metrics = learner.round(population, env, [], KEYS)
    record = metrics["proposals"][0]
    assert record["accepted"] and "sign test" in record["reason"]
    # Each minibatch evaluation asked for 4 samples per problem.
    assert any(len(keys) == 12 and len(set(keys)) == 3 for _, keys in env.calls)


def _failed(feedback: str, verdict: str = "incorrect", hint: str | None = None) -> dict:
    record = {"Inputs": "q", "Generated Outputs": "a", "Feedback": format_feedback(0.0, verdict, feedback)}
    if hint is not None:
        record["Hint"] = hint
    return record


def test_notes_never_copy_an_expected_answer_into_the_context() -> None:
    records = {"notes": [_failed("Answer with Yes or No only. The expected answer is 'Yes'.", "format_error"),
                         _failed("Reply with one word. Correct answer: 'No'.", "format_error"),
                         _failed("Incorrect: your answer 12 does not match the expected answer 13.")] * 2}
    new = NotesProposer(min_count=1)({"notes": ""}, records, ["notes"])["notes"]
    assert "Format rule: Answer with Yes or No only." in new
    for leaked in ("'Yes'", "'No'", "expected", "13", "Correct answer"):
        assert leaked not in new


def test_notes_are_rules_without_quoted_errors_or_counts() -> None:
    records = [_failed(f"Incorrect: the move '{m}' is not on the board.") for m in ("a9", "z3", "k0")]
    notes = [n.text for n in NotesProposer(min_count=2).derive_notes(records)]
    assert notes == ["Avoid this recurring mistake: The move a value is not on the board."]
    assert all("'" not in n and '"' not in n and "<" not in n and "3x" not in n for n in notes)


def test_notes_dedupe_by_meaning_across_rounds() -> None:
    proposer = NotesProposer(min_count=2)
    first = [_failed(f"Incorrect: the move '{m}' is not on the board.") for m in ("a9", "z3")]
    parent = {"notes": proposer({"notes": ""}, {"notes": first}, ["notes"])["notes"]}
    # More occurrences, other values: the same lesson, so no new proposal.
    again = [_failed(f"Incorrect: the move '{m}' is not on the board.") for m in ("b1", "c2", "d3", "e4")]
    assert proposer(parent, {"notes": again}, ["notes"]) == {}


def test_notes_prefer_the_answer_free_hint_channel() -> None:
    records = [_failed("Incorrect: expected 42, got 41.", hint="Check the arithmetic of the last step.")] * 2
    notes = [n.text for n in NotesProposer(min_count=2).derive_notes(records)]
    assert notes == ["Avoid this recurring mistake: Check the arithmetic of the last step."]
    # The adapter passes a rollout's info["hint"] on as the record's "Hint".
    from fst_env.agents.fast import _RolloutAdapter

    adapter = _RolloutAdapter(lambda c, k: [], max_records_per_problem=2, max_field_chars=500)
    rollout = Rollout("toy/train/0", "q", 0, {}, "41", 0.0, "Incorrect: expected 42.", "incorrect",
                      info={"hint": "Check the arithmetic."})
    from gepa.core.adapter import EvaluationBatch

    dataset = adapter.make_reflective_dataset({}, EvaluationBatch(outputs=[["41"]], scores=[0.0],
                                                                trajectories=[[rollout]]), ["notes"])
    assert dataset["notes"][0]["Hint"] == "Check the arithmetic."


# ---------------------------------------------------------------------------------------------- reflection cache
class CountingLM:
    """A scripted reflection LM that always gives the small model's degenerate reply, counting its calls."""

    def __init__(self, deterministic: bool) -> None:
        self.deterministic = deterministic
        self.calls = 0

    def __call__(self, prompt: str) -> str:
        self.calls += 1
        return "I'm ready to assist you. " * 6


def test_rejected_greedy_reflection_is_not_asked_again() -> None:
    from fst_env.agents.fast import ReflectionProposer

    records = {"instructions": [{"Inputs": "q", "Generated Outputs": "a",
                                 "Feedback": format_feedback(0.0, "incorrect", "Wrong.")}]}
    greedy = CountingLM(deterministic=True)
    proposer = ReflectionProposer(greedy)
    for _ in range(3):
        proposal, _ = proposer.reflect(dict(SEED), records, ["instructions"])
        assert proposal.new_texts == {} and "instructions" in proposal.metadata["rejected_replies"]
    assert greedy.calls == 1 and proposer.lm_calls == 1 and proposer.cache_hits == 2
    # Another prompt (other records) is asked.
    other = {"instructions": [{"Inputs": "q2", "Generated Outputs": "b", "Feedback": "Score: 0. Wrong again."}]}
    proposer.reflect(dict(SEED), other, ["instructions"])
    assert greedy.calls == 2
    # A sampling LM may answer differently next time: it is asked every time.
    sampling = CountingLM(deterministic=False)
    sampled = ReflectionProposer(sampling)
    for _ in range(3):
        sampled.reflect(dict(SEED), records, ["instructions"])
    assert sampling.calls == 3


def test_rejected_reflection_cache_saves_calls_within_a_round() -> None:
    lm = CountingLM(deterministic=True)
    learner = ReflectiveFastLearner(lm, minibatch_size=1, proposals_per_round=3, max_iterations=3, seed=0)
    metrics = learner.round(ContextPopulation(SEED), KeywordEnv(base=0.0), [], KEYS[:1])
    # One parent, one problem, the same records each iteration: the identical greedy prompt is asked once.
    assert metrics["n_iterations"] == 3 and lm.calls == 1 and metrics["reflection_calls"] == 1
    assert metrics["reflection_cache_hits"] == 2


def test_notes_from_math_reasoning_hints_are_its_tip_and_the_recheck_rule_not_the_verdict() -> None:
    # The hint MathReasoning writes for a wrong unboxed answer: a verdict sentence, then the env's format tip.
    from fst_env.envs.math_reasoning import FORMAT_HELP

    records = [_failed(f"Incorrect: your answer {n} does not match the expected answer {n + 1}.",
                       hint=f"Your answer {n} (the last number in the response) is incorrect. Tip: {FORMAT_HELP}")
               for n in (3, 11, 40)]
    notes = [n.text for n in NotesProposer(min_count=2).derive_notes(records)]
    assert notes == [f"Tip: {FORMAT_HELP}",
                     "Final answers were often wrong: re-check each step and the final value before answering."]
    # A lone wrong answer is not "recurring"; the env's tip needs only min_count_format occurrences.
    assert [n.text for n in NotesProposer(min_count=2).derive_notes(records[:1])] == [f"Tip: {FORMAT_HELP}"]
