"""fst_env.harness on tiny models: the slow x fast quadrant table, checkpoint loading and the plasticity probe."""

import math

import numpy as np
import pytest
import torch

import fst_env
from fst_env.agents.fst_agent import FSTConfig, PromptAgent, RLAgent
from fst_env.harness import load_trained_policy, plasticity_probe, quadrant_eval
from fst_env.models import tiny_policy

TASK_A = "test/HarnessCodeSum-v0"
TASK_B = "test/HarnessLength-v0"


def _code_sum(response: str, problem: dict) -> tuple[float, str]:
    # Reward depends on every character, so any change in a completion changes the mean reward, and about half of
    # random completions are correct: a quadrant cell is sensitive to the weights and contexts behind it.
    total = sum(map(ord, response))
    if total % 2 == 0:
        return 1.0, "Correct: the code points of the answer sum to an even number."
    return (total % 7) / 10, f"Incorrect: the code points sum to {total}, which is odd."


def _length(response: str, problem: dict) -> tuple[float, str]:
    if len(response) % 3 == 0:
        return 1.0, "Correct: the answer length is a multiple of 3."
    # Partial credit from the code points: the mean reward sees every change in a completion.
    return (sum(map(ord, response)) % 5) / 10, f"Incorrect: the answer has {len(response)} characters, not a " \
                                               "multiple of 3."


def _problems(n_train: int, n_val: int, what: str) -> dict:
    return {"train": [{"prompt": f"Write {what} number {i}."} for i in range(n_train)],
            "validation": [{"prompt": f"Now write {what} number {i}."} for i in range(n_val)]}


fst_env.register_task(TASK_A, _problems(8, 6, "a word"), reward_fn=_code_sum,
                      summary="test task A: reward for an even code-point sum")
fst_env.register_task(TASK_B, _problems(8, 6, "a phrase"), reward_fn=_length,
                      summary="test task B: reward for a length that is a multiple of 3")


def config(**overrides) -> FSTConfig:
    base = dict(group_size=2, groups_per_step=1, max_new_tokens=8, fast_learner="notes", seed=0)
    return FSTConfig(**{**base, **overrides})


def perturb_adapter(model: torch.nn.Module, scale: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def logits_of(policy, text: str = "probe text") -> torch.Tensor:
    ids = torch.tensor([policy.tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        return policy.model(input_ids=ids).logits


# ------------------------------------------------------------------------------------------ quadrants
def test_quadrant_table_has_four_finite_cells_and_base_cells_ignore_the_adapter():
    agent = RLAgent(tiny_policy(0), TASK_A, config())
    agent.population.add({"instructions": "Reply with one short word."}, parent_id=0, scores={"p": 1.0})
    perturb_adapter(agent.policy.model, 0.3, seed=1)
    rng_state = agent.rng.getstate()
    first = quadrant_eval(agent, None, TASK_A, problems=6, k=2)

    assert set(first.cells) == {(w, c) for w in ("base", "trained") for c in ("seed", "evolved")}
    assert all(math.isfinite(m["accuracy"]) and math.isfinite(m["reward_mean"]) for m in first.cells.values())
    assert first.contexts["evolved"] == {"instructions": "Reply with one short word."}
    assert first.contexts["seed"] == agent.config.seed_context
    assert agent.rng.getstate() == rng_state, "the harness leaves the agent's sampling RNG as it found it"
    assert all(p.requires_grad for n, p in agent.policy.model.named_parameters() if "lora_" in n)

    perturb_adapter(agent.policy.model, 0.3, seed=2)
    second = quadrant_eval(agent, None, TASK_A, problems=6, k=2)
    for c in ("seed", "evolved"):
        assert second.cells[("base", c)] == first.cells[("base", c)], "base weights do not depend on the adapter"
    # The trained cells do move with the adapter (so the base cells above really ran with the adapter off).
    assert any(second.cells[("trained", c)]["reward_mean"] != first.cells[("trained", c)]["reward_mean"]
               for c in ("seed", "evolved"))
    # Base weights are the untouched tiny model: a fast-only agent on it gives the same cells.
    fresh = quadrant_eval(PromptAgent(tiny_policy(0), TASK_A, config()), None, TASK_A,
                          seed_context=first.contexts["seed"], problems=6, k=2)
    assert fresh.cells[("base", "seed")] == first.cells[("base", "seed")]

    flat = first.flat()
    assert len(flat) == 16 and flat["quadrant/base_weights+seed_context/accuracy"] == \
        first.cells[("base", "seed")]["accuracy"]
    table = first.markdown()
    assert table.count("%") == 4 and "| base weights |" in table and "| trained weights |" in table
    gain = first.paired(("trained", "evolved"), ("trained", "seed"))
    assert gain["n"] == 6 and gain["ci_low"] <= gain["mean"] <= gain["ci_high"]


def test_quadrant_adapter_is_back_on_after_the_table():
    agent = RLAgent(tiny_policy(0), TASK_A, config())
    perturb_adapter(agent.policy.model, 0.3, seed=1)
    before = logits_of(agent.policy)
    quadrant_eval(agent, None, problems=2)
    torch.testing.assert_close(logits_of(agent.policy), before, rtol=0, atol=0)
    generations = agent.backend.generate([agent.prompt_for("hi", {})], agent.sampling())
    with agent.policy.model.disable_adapter():
        base = agent.backend.generate([agent.prompt_for("hi", {})], agent.sampling())
    assert generations[0].logprobs != base[0].logprobs, "the backend serves the adapter again"


def test_quadrant_full_finetuning_needs_and_uses_a_base_factory():
    agent = RLAgent(tiny_policy(0), TASK_A, config(full_finetune=True))
    with pytest.raises(ValueError, match="base_policy_factory"):
        quadrant_eval(agent, None, problems=2)
    calls = []

    def factory():
        calls.append(1)
        return tiny_policy(0)

    # Nothing trained yet: base and trained weights are equal, so the two rows match cell for cell.
    table = quadrant_eval(agent, factory, problems=4, k=2)
    assert calls == [1]
    for c in ("seed", "evolved"):
        assert table.cells[("base", c)] == table.cells[("trained", c)]


# ------------------------------------------------------------------------------------------ checkpoints
def test_load_trained_policy_merges_the_adapter_of_a_saved_agent(tmp_path):
    agent = RLAgent(tiny_policy(0), TASK_A, config())
    perturb_adapter(agent.policy.model, 0.3, seed=1)
    agent.save(tmp_path / "ckpt")
    loaded = load_trained_policy(tmp_path / "ckpt", lambda: tiny_policy(0))
    assert not hasattr(loaded.model, "peft_config"), "a plain model: a fresh adapter can go on top"
    torch.testing.assert_close(logits_of(loaded), logits_of(agent.policy), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(logits_of(loaded), logits_of(tiny_policy(0)), atol=1e-3)
    # The learner's own directory works too.
    torch.testing.assert_close(logits_of(load_trained_policy(tmp_path / "ckpt" / "slow", lambda: tiny_policy(0))),
                               logits_of(loaded))


def test_load_trained_policy_full_finetune_and_bad_checkpoints(tmp_path):
    agent = RLAgent(tiny_policy(0), TASK_A, config(full_finetune=True))
    with torch.no_grad():
        agent.policy.model.model.layers[0].self_attn.q_proj.weight.add_(0.5)
    agent.save(tmp_path / "full")
    loaded = load_trained_policy(tmp_path / "full", lambda: tiny_policy(0))
    torch.testing.assert_close(logits_of(loaded), logits_of(agent.policy))

    PromptAgent(tiny_policy(0), TASK_A, config()).save(tmp_path / "prompt")
    with pytest.raises(ValueError, match="slow channel off"):
        load_trained_policy(tmp_path / "prompt", lambda: tiny_policy(0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an FSTAgent"):
        load_trained_policy(tmp_path / "empty", lambda: tiny_policy(0))


# ------------------------------------------------------------------------------------------ plasticity
def test_plasticity_probe_runs_both_arms_with_the_same_budget(tmp_path):
    task_a = RLAgent(tiny_policy(0), TASK_A, config())
    perturb_adapter(task_a.policy.model, 0.5, seed=3)
    task_a.save(tmp_path / "task_a")

    result = plasticity_probe(tmp_path / "task_a", lambda: tiny_policy(0), TASK_B, steps=2,
                              config=config(lr=1e-3), eval_problems=4, eval_every=1, k=2, seed=7)
    assert set(result.arms) == {"checkpoint", "base"} and result.env_id == TASK_B
    for arm in result.arms.values():
        assert arm.steps == [0, 1, 2]
        assert arm.samples == [0, 2, 4]  # group_size 2 x 1 group per step: the same budget in both arms
        assert len(arm.train) == 2 and all("slow/loss" in m for m in arm.train)
        assert all(0.0 <= a <= 1.0 for a in arm.accuracy) and len(arm.reward_mean) == 3
    final = result.final_accuracy()
    assert final == {name: arm.accuracy[-1] for name, arm in result.arms.items()}
    # The checkpoint arm starts from task A's weights: its first evaluation differs from the base arm's.
    checkpoint, base = result.arms["checkpoint"], result.arms["base"]
    assert checkpoint.reward_mean[0] != base.reward_mean[0]
    assert result.markdown().count("%") == 4

    # An in-memory source (a callable returning the task-A policy, still PEFT-wrapped: the probe merges it)
    # gives the same run as the checkpoint it was saved to.
    def from_memory():
        agent = RLAgent(tiny_policy(0), TASK_A, config())
        perturb_adapter(agent.policy.model, 0.5, seed=3)
        assert hasattr(agent.policy.model, "peft_config")
        return agent.policy

    again = plasticity_probe(from_memory, lambda: tiny_policy(0), TASK_B, steps=2, config=config(lr=1e-3),
                             eval_problems=4, eval_every=1, k=2, seed=7)
    np.testing.assert_allclose(again.arms["checkpoint"].reward_mean, checkpoint.reward_mean)


def test_plasticity_probe_bad_arguments():
    for bad in (dict(steps=0), dict(steps=1.5), dict(steps=1, eval_every=0)):
        with pytest.raises(ValueError):
            plasticity_probe(lambda: tiny_policy(0), lambda: tiny_policy(0), TASK_B, **bad)
