"""FSTAgent end to end on a tiny random model: both channels, group contexts, checkpoint and resume."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import fst_env
from fst_env.agents.bookkeeping import BudgetCounters, EpisodeBuffer
from fst_env.agents.fst_agent import FSTAgent, FSTConfig, PromptAgent, RLAgent
from fst_env.models import tiny_policy

ENV_ID = "test/EvenLength-v0"


def _even_length(response: str, problem: dict) -> tuple[float, str]:
    # Random text from a random model has a random length, so groups have reward variance to learn from.
    if len(response) % 2 == 0:
        return 1.0, "Correct: the answer has an even number of characters."
    return 0.0, f"Format error: the answer must have an even number of characters; it had {len(response)}."


fst_env.register_task(ENV_ID, [{"prompt": f"Write word number {i}.", "answer": "even"} for i in range(20)],
                      reward_fn=_even_length, summary="test task: reward for an even-length answer")


def small_config(**overrides) -> FSTConfig:
    base = dict(group_size=4, groups_per_step=2, fast_every=2, fast_learner="notes", max_new_tokens=12,
                fast_problems=3, fast_budget=40, proposals_per_round=1, population_size=3, seed=0)
    return FSTConfig(**{**base, **overrides})


def run_updates(agent: FSTAgent, updates: int, seed: int = 0) -> list[dict]:
    envs = gym.make_vec(ENV_ID, num_envs=agent.config.group_size)
    rng = np.random.default_rng(seed)
    history = []
    while len(history) < updates:
        obs, infos = envs.reset(options={"problem_id": int(rng.integers(20))})
        actions = agent.act(obs, infos)
        _, rewards, _, _, infos = envs.step(actions)
        agent.observe(rewards, infos)
        metrics = agent.update()
        if metrics:
            history.append(metrics)
    return history


def adapter_and_base(agent: FSTAgent) -> tuple[dict, dict]:
    named = dict(agent.policy.model.named_parameters())
    lora = {k: v.detach().clone() for k, v in named.items() if "lora_" in k}
    base = {k: v.detach().clone() for k, v in named.items() if "lora_" not in k}
    return lora, base


def test_config_validation():
    for bad in (dict(slow=False, fast=False), dict(group_size=1), dict(fast_learner="gepa"), dict(fast_every=0),
                dict(seed_context={"notes": "x"})):
        with pytest.raises(ValueError):
            small_config(**bad).validate()


def test_both_channels_learn_and_only_the_adapter_moves():
    agent = FSTAgent(tiny_policy(0), ENV_ID, small_config())
    lora_before, base_before = adapter_and_base(agent)
    history = run_updates(agent, 4)
    lora_after, base_after = adapter_and_base(agent)
    assert any(not torch.equal(lora_before[k], lora_after[k]) for k in lora_before), "LoRA weights moved"
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before), "base weights frozen"
    assert agent.counters["slow_steps"] == 4 and agent.counters["fast_rounds"] == 2
    assert agent.counters["rl_samples"] == 4 * 2 * 4
    assert agent.counters["fast_rollouts"] > 0
    assert "fast/n_proposals" in history[1] and "slow/loss" in history[0]
    assert all(np.isfinite(h["slow/loss"]) for h in history)


def test_contexts_are_mixed_within_a_group_and_advantage_is_per_problem():
    agent = FSTAgent(tiny_policy(0), ENV_ID, small_config(group_size=6))
    agent.population.add({"instructions": "Answer in one word."}, parent_id=0, scores={})
    agent.population.add({"instructions": "Answer briefly."}, parent_id=0, scores={})
    envs = gym.make_vec(ENV_ID, num_envs=6)
    obs, infos = envs.reset(options={"problem_id": 3})
    agent.act(obs, infos)
    pending = agent.pending
    assert len({r.group for r in pending}) == 1
    assert sorted(r.context_id for r in pending) == sorted(agent.population.ids * 2)
    turns = [r.turns[0] for r in pending]  # each act is the first turn of a one-turn episode
    assert all(t.prompt_ids and t.completion_ids and len(t.old_logprobs) == len(t.completion_ids) for t in turns)


def test_rl_and_prompt_agents_differ_in_one_channel():
    rl = RLAgent(tiny_policy(0), ENV_ID, small_config())
    prompt = PromptAgent(tiny_policy(0), ENV_ID, small_config())
    assert rl.slow is not None and rl.fast is None
    assert prompt.slow is None and prompt.fast is not None
    assert rl.config.group_size == prompt.config.group_size == 4
    history = run_updates(prompt, 2)
    assert "slow/loss" not in history[0] and "fast/n_proposals" in history[1]


def test_resume_from_checkpoint_reproduces_the_next_update(tmp_path):
    agent = FSTAgent(tiny_policy(0), ENV_ID, small_config())
    run_updates(agent, 2, seed=1)
    agent.save(tmp_path / "ckpt")
    expected = run_updates(agent, 1, seed=2)[0]
    expected_lora, _ = adapter_and_base(agent)

    resumed = FSTAgent(tiny_policy(0), ENV_ID, small_config())
    resumed.load(tmp_path / "ckpt")
    got = run_updates(resumed, 1, seed=2)[0]
    got_lora, _ = adapter_and_base(resumed)
    assert got["slow/loss"] == pytest.approx(expected["slow/loss"], abs=1e-6)
    assert all(torch.allclose(expected_lora[k], got_lora[k], atol=1e-6) for k in expected_lora)
    assert resumed.population.state_dict() == agent.population.state_dict()
    assert resumed.counters["update"] == agent.counters["update"]


def test_a_checkpoint_from_before_the_shared_buffer_loads(tmp_path):
    # Before agents/bookkeeping: "recent" was a bare list of episode dicts, and no rollouts_reused counter.
    agent = FSTAgent(tiny_policy(0), ENV_ID, small_config())
    run_updates(agent, 1, seed=1)
    assert isinstance(agent.recent, EpisodeBuffer) and isinstance(agent.counters, BudgetCounters)
    agent.save(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "agent.json"
    state = json.loads(path.read_text())
    assert state["recent"]["total_added"] == len(agent.recent) > 0
    state["recent"] = state["recent"]["records"]
    del state["counters"]["rollouts_reused"]
    path.write_text(json.dumps(state))
    resumed = FSTAgent(tiny_policy(0), ENV_ID, small_config())
    resumed.load(tmp_path / "ckpt")
    assert [e.to_dict() for e in resumed.recent] == [e.to_dict() for e in agent.recent]
    assert resumed.recent.max_records == agent.recent.max_records
    assert resumed.counters == {**agent.counters, "rollouts_reused": 0}

def test_observe_checks_lengths_and_act_requires_observe():
    agent = FSTAgent(tiny_policy(0), ENV_ID, small_config(fast=False))
    envs = gym.make_vec(ENV_ID, num_envs=4)
    obs, infos = envs.reset(options={"problem_id": 0})
    agent.act(obs, infos)
    with pytest.raises(RuntimeError, match="observe"):
        agent.act(obs, infos)
    with pytest.raises(ValueError, match="rewards"):
        agent.observe([1.0], infos)


def test_evaluate_reports_mean_at_k():
    agent = FSTAgent(tiny_policy(0), ENV_ID, small_config(fast=False))
    result = agent.evaluate(ENV_ID, split="train", problems=3, k=2)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["k"] == 2 and result["problems"] == 3


def test_evaluation_uses_common_random_numbers_whatever_the_training_rng_did():
    plain = FSTAgent(tiny_policy(0), ENV_ID, small_config(fast=False))
    busy = FSTAgent(tiny_policy(0), ENV_ID, small_config(fast=False))
    busy.rng.random()
    busy.sampling()  # training draws from the agent's RNG: evaluation must not depend on it
    busy.rng.getrandbits(64)
    first = plain.evaluate(ENV_ID, split="train", problems=4, k=2)
    second = busy.evaluate(ENV_ID, split="train", problems=4, k=2)
    assert first == second
    assert first["n"] == 4 and first["k"] == 2 and len(first["per_problem"]) == 4
    assert 0.0 <= first["ci_low"] <= first["accuracy"] <= first["ci_high"] <= 1.0
    # Evaluating again (after the first evaluation) gives the same samples too: nothing is consumed.
    assert plain.evaluate(ENV_ID, split="train", problems=4, k=2) == first
    greedy = plain.evaluate(ENV_ID, split="train", problems=4, k=3, greedy=True)
    assert greedy["k"] == 1 and greedy["greedy"] is True


def test_skipped_slow_steps_are_counted_apart():
    agent = FSTAgent(tiny_policy(0), ENV_ID, small_config(fast=False))
    original = agent.slow.step
    agent.slow.step = lambda batch: {**original(batch), "skipped": 1}
    run_updates(agent, 1)
    assert agent.counters["slow_steps"] == 0 and agent.counters["skipped_steps"] == 1
    assert agent.counters["wall_time_s"] > 0


def _evidence_at_fast_rounds(agent: FSTAgent, updates: int) -> list[int]:
    """How many recent rollouts the agent offered as evidence at each fast round of ``updates`` updates."""
    offered, round_fn = [], agent.fast.round

    def spy(*args, evidence=None, **kwargs):
        offered.append(len(evidence))
        return round_fn(*args, evidence=evidence, **kwargs)

    agent.fast.round = spy
    run_updates(agent, updates)
    return offered


def test_fst_whose_fast_rounds_accept_nothing_trains_exactly_like_rl_only():
    # Fast rounds sample from their own stream: until a context is accepted, FST's episodes, slow steps and
    # adapter are RL-only's, so an FST-minus-RL difference measures what accepted contexts did, not sampling luck.
    from fst_env.agents.fast import ScoreAcceptance
    from fst_env.loop import update

    config = small_config(fast_every=2, max_new_tokens=6)
    fst, rl = FSTAgent(tiny_policy(0), ENV_ID, config), RLAgent(tiny_policy(0), ENV_ID, config)
    fst.fast.acceptance = ScoreAcceptance(lambda parent, child: False, name="never")
    rounds = []
    for step in range(1, 5):
        problems = [step, step + 8]
        (got, fast_round), (expected, _) = update(fst, problems, step), update(rl, problems, step)
        slow = {k: v for k, v in got.items() if k.startswith(("slow/", "rollout/")) and "time" not in k}
        assert _same(slow, {k: v for k, v in expected.items() if k in slow})
        rounds += [fast_round] if fast_round is not None else []
    assert len(rounds) == 2 and sum(r["metric_calls"] for r in rounds) > 0
    assert sum(r["n_proposals"] for r in rounds) >= 1 and sum(r["n_accepted"] for r in rounds) == 0
    lora_fst, _ = adapter_and_base(fst)
    lora_rl, _ = adapter_and_base(rl)
    assert all(torch.equal(lora_fst[k], lora_rl[k]) for k in lora_fst)


def test_fast_round_reuses_only_episodes_sampled_under_the_current_weights():
    # Each update trains (random lengths give every group reward variance), so at the fast round every recent
    # episode predates the last slow step: none may stand in for the parent's samples. A fast-only agent's weights
    # never change, so its recent episodes are all evidence; so are the last collect's after a skipped step.
    trained = FSTAgent(tiny_policy(0), ENV_ID, small_config())
    assert _evidence_at_fast_rounds(trained, 2) == [0]
    assert trained.counters["slow_steps"] == 2
    assert [e.info["weights_version"] for e in trained.recent] == [0] * 8 + [1] * 8
    assert _evidence_at_fast_rounds(PromptAgent(tiny_policy(0), ENV_ID, small_config()), 2) == [16]
    skipped = FSTAgent(tiny_policy(0), ENV_ID, small_config())
    original = skipped.slow.step
    skipped.slow.step = lambda batch: {**original(batch), "skipped": 1}  # the weights stay as they were
    assert _evidence_at_fast_rounds(skipped, 2) == [16]


def test_learner_autocast_reaches_the_slow_learner_and_trains():
    agent = RLAgent(tiny_policy(0), ENV_ID, small_config(learner_autocast=True))
    assert agent.slow.settings.autocast
    lora_before, _ = adapter_and_base(agent)
    history = run_updates(agent, 1)
    lora_after, _ = adapter_and_base(agent)
    assert np.isfinite(history[0]["slow/loss"]) and history[0]["slow/skipped"] == 0
    assert all(v.dtype == torch.float32 for v in lora_after.values())  # float32 master weights
    assert any(not torch.equal(lora_before[k], lora_after[k]) for k in lora_after)


def test_demonstrations_fast_learner_is_selectable_and_runs():
    from fst_env.agents.demonstrations import DemonstrationFastLearner

    agent = PromptAgent(tiny_policy(0), ENV_ID, small_config(fast_learner="demonstrations"))
    assert isinstance(agent.fast, DemonstrationFastLearner)
    history = run_updates(agent, 2)
    assert history[1]["fast/demonstration_pool"] >= 1  # random lengths: about half the rollouts are correct


def _same(a: dict, b: dict) -> bool:
    """Equal metric dicts, NaN equal to NaN (a skipped step's token metrics)."""
    return a.keys() == b.keys() and all(x == y or (x != x and y != y) for x, y in ((a[k], b[k]) for k in a))


@pytest.mark.parametrize("env_id", [ENV_ID, "fst/WordGuess-v0"])
def test_fst_and_rl_only_are_identical_until_the_first_fast_round(env_id):
    # The fast channel adds nothing before its first round: same episodes, same slow steps, same adapter. Checked
    # on a single-turn task and on a multi-turn game (whole episodes, one batched generate call per turn).
    from fst_env.loop import update

    config = small_config(fast_every=2, max_new_tokens=6, max_context_tokens=1900)
    fst, rl = FSTAgent(tiny_policy(0), env_id, config), RLAgent(tiny_policy(0), env_id, config)
    for step in (1, 2):
        problems = [step, step + 4]
        (got, fast_round), (expected, none) = update(fst, problems, step), update(rl, problems, step)
        slow = {k: v for k, v in got.items() if k.startswith(("slow/", "rollout/")) and "time" not in k}
        assert _same(slow, {k: v for k, v in expected.items() if k in slow}) and none is None
        assert (fast_round is not None) == (step == 2)
    assert [e.to_dict() for e in fst.recent] == [e.to_dict() for e in rl.recent]
    if env_id != ENV_ID:
        assert all(len(e.turns) > 1 for e in fst.recent)
    lora_fst, _ = adapter_and_base(fst)
    lora_rl, _ = adapter_and_base(rl)
    assert all(torch.equal(lora_fst[k], lora_rl[k]) for k in lora_fst)
    assert fst.counters["fast_rounds"] == 1 and rl.counters["fast_rounds"] == 0


def test_collect_trials_are_sampled_by_the_next_collect_and_judged_without_generating(tmp_path):
    # fast_trials="collect": the fast round proposes a trial context and generates nothing; the next collect
    # samples the trial beside its parent (G/K each), and the round after judges it on those paired episodes.
    from fst_env.loop import update

    with pytest.raises(ValueError, match="fast_trials"):
        small_config(fast_trials="lazy").validate()
    agent = FSTAgent(tiny_policy(0), ENV_ID, small_config(fast_trials="collect", fast_every=1, max_new_tokens=6))
    _, first = update(agent, [1, 9], 1)
    assert first["metric_calls"] == 0 and first["n_proposals"] == 1 and first["n_trials_judged"] == 0
    trial = agent.population.trial_ids[0]
    assert agent.population.member_ids == [0] and agent.population.best().id == 0
    agent.save(tmp_path / "ckpt")
    resumed = FSTAgent(tiny_policy(0), ENV_ID, small_config(fast_trials="collect", fast_every=1, max_new_tokens=6))
    resumed.load(tmp_path / "ckpt")
    assert resumed.population.trial_ids == [trial]
    _, second = update(agent, [2, 10], 2)
    latest = list(agent.recent)[-8:]  # the second collect's episodes
    by_context = {cid: sum(e.context_id == cid for e in latest) for cid in (0, trial)}
    assert by_context == {0: 4, trial: 4}  # G=4 per problem split 2/2, two problems
    assert second["metric_calls"] == 0 and second["n_trials_judged"] == 1
    record = second["proposals"][0]
    assert record["trial_id"] == trial and record["pairs"] == 4 and isinstance(record["accepted"], bool)
    assert (trial in agent.population.member_ids) == record["accepted"]
