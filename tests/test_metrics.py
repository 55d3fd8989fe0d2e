"""fst_env.metrics: KL drift and entropy against the base weights (the statistics are tested in test_stats.py)."""

import copy
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fst_env
from fst_env.agents.fst_agent import FSTConfig, PromptAgent, RLAgent
from fst_env.agents.slow import TokenBatch
from fst_env.backends.base import SamplingParams
from fst_env.metrics import policy_kl_and_entropy, score_tokens
from fst_env.models import tiny_policy

ENV_ID = "test/MetricsEcho-v0"
fst_env.register_task(ENV_ID, [{"prompt": f"Say something about {i}."} for i in range(6)],
                      reward_fn=lambda response, problem: float(len(response) % 2 == 0),
                      summary="test task for metrics: reward for an even-length answer")
PROMPTS = ["Name a colour.", "Count to three."]


def config(**overrides) -> FSTConfig:
    return FSTConfig(**{**dict(group_size=2, groups_per_step=1, max_new_tokens=8, fast_learner="notes"), **overrides})


def perturb(model: torch.nn.Module, name_part: str, scale: float, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name_part in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


# ------------------------------------------------------------------------------------------ KL and entropy
class FixedLogits(torch.nn.Module):
    """A stand-in causal LM over a 3-token vocabulary that predicts the same logits at every position."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0, **_: object) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits.expand(input_ids.shape[0], logits_to_keep, 3).clone())


def test_entropy_and_logprobs_match_hand_computation_on_a_three_token_vocab():
    # softmax([0, ln 2, 0]) = [1/4, 1/2, 1/4]: entropy = 2 * (1/4) ln 4 + (1/2) ln 2 = 1.5 ln 2.
    model = FixedLogits([0.0, math.log(2), 0.0])
    batch = TokenBatch.collate([[0, 1]], [[1, 2]], pad_id=0, device="cpu")
    logprobs, entropy = score_tokens(model, batch)
    np.testing.assert_allclose(entropy[0].numpy(), [1.5 * math.log(2)] * 2, rtol=1e-6)
    np.testing.assert_allclose(logprobs[0].numpy(), [math.log(0.5), math.log(0.25)], rtol=1e-6)
    # At temperature 2 the logits halve: p = [1, sqrt 2, 1] / (2 + sqrt 2).
    p = np.array([1, math.sqrt(2), 1]) / (2 + math.sqrt(2))
    _, entropy = score_tokens(model, batch, temperature=2.0)
    np.testing.assert_allclose(entropy[0].numpy(), [-(p * np.log(p)).sum()] * 2, rtol=1e-6)


def test_entropy_matches_a_direct_computation_on_the_tiny_model():
    agent = RLAgent(tiny_policy(0), ENV_ID, config())
    perturb(agent.policy.model, "lora_B", 0.2)
    result = policy_kl_and_entropy(agent, PROMPTS[:1], max_new_tokens=6, seed=3)
    # Same prompt, context and seed: the same sample. Score it alone (no padding), in float64, by hand.
    prompt = agent.prompt_for(PROMPTS[0], agent.population.best().context)
    from fst_env.backends.base import SamplingParams

    generation = agent.backend.generate([prompt], SamplingParams(max_new_tokens=6, seed=3))[0]
    ids = torch.tensor([generation.prompt_ids + generation.completion_ids])
    with torch.no_grad():
        logits = agent.policy.model(input_ids=ids).logits[0].double()
    n = len(generation.completion_ids)
    positions = logits[len(generation.prompt_ids) - 1: len(generation.prompt_ids) - 1 + n]
    probs = torch.softmax(positions, dim=-1)
    by_hand = float((-(probs * torch.log(probs)).sum(-1)).mean())
    assert result["n_tokens"] == n
    assert result["entropy"] == pytest.approx(by_hand, rel=1e-4)


def test_kl_is_exactly_zero_for_a_fresh_adapter_and_positive_after_perturbing_it():
    agent = RLAgent(tiny_policy(0), ENV_ID, config())
    fresh = policy_kl_and_entropy(agent, PROMPTS, max_new_tokens=8, samples=2)
    assert fresh["kl"] == 0.0 and fresh["kl_k3"] == 0.0  # LoRA B starts at 0: the adapter adds exactly nothing
    assert fresh["entropy"] > 0 and fresh["n_sequences"] == 4 and fresh["n_tokens"] == 4 * fresh["mean_length"]
    perturb(agent.policy.model, "lora_B", 0.2)
    drifted = policy_kl_and_entropy(agent, PROMPTS, max_new_tokens=8, samples=2)
    assert drifted["kl_k3"] > 1e-4 and drifted["kl"] != 0.0
    # The adapter is back on afterwards: a second call gives the same numbers (same seed).
    assert policy_kl_and_entropy(agent, PROMPTS, max_new_tokens=8, samples=2) == drifted


def test_kl_uses_no_second_model_copy(monkeypatch):
    agent = RLAgent(tiny_policy(0), ENV_ID, config())
    perturb(agent.policy.model, "lora_B", 0.2)
    count_before = sum(p.numel() for p in agent.policy.model.parameters())
    # A copy of the model (deepcopy, from_pretrained, a fresh module) creates Parameters: count them.
    created = []
    original_new = torch.nn.Parameter.__new__

    def counting_new(cls, *args, **kwargs):
        created.append(cls.__name__)
        return original_new(cls, *args, **kwargs)

    def no_deepcopy(*args, **kwargs):
        raise AssertionError("policy_kl_and_entropy must not copy the model")

    monkeypatch.setattr(torch.nn.Parameter, "__new__", counting_new)
    monkeypatch.setattr(copy, "deepcopy", no_deepcopy)
    result = policy_kl_and_entropy(agent, PROMPTS, max_new_tokens=8)
    monkeypatch.undo()
    assert result["kl_k3"] > 0
    assert created == [], f"{len(created)} parameters were created during the KL computation"
    assert sum(p.numel() for p in agent.policy.model.parameters()) == count_before


def test_prompt_agent_has_exactly_zero_kl():
    agent = PromptAgent(tiny_policy(0), ENV_ID, config())
    result = policy_kl_and_entropy(agent, PROMPTS, max_new_tokens=8, context={})
    assert result["kl"] == 0.0 and result["kl_k3"] == 0.0 and result["entropy"] > 0


def test_full_finetuning_kl_uses_the_learners_reference():
    agent = RLAgent(tiny_policy(0), ENV_ID, config(full_finetune=True, kl_coef=0.01))
    assert policy_kl_and_entropy(agent, PROMPTS, max_new_tokens=8)["kl_k3"] == 0.0
    perturb(agent.policy.model, "q_proj", 0.3)
    assert policy_kl_and_entropy(agent, PROMPTS, max_new_tokens=8)["kl_k3"] > 1e-5


def test_policy_kl_and_entropy_bad_input():
    agent = PromptAgent(tiny_policy(0), ENV_ID, config())
    for bad in ("one prompt", []):
        with pytest.raises(ValueError, match="prompts"):
            policy_kl_and_entropy(agent, bad)
    with pytest.raises(ValueError, match="samples"):
        policy_kl_and_entropy(agent, PROMPTS, samples=0)


def test_importing_metrics_does_not_import_torch():
    code = "import sys, fst_env.metrics; assert 'torch' not in sys.modules and 'scipy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_exact_kl_is_non_negative_and_at_least_its_sampled_noise_floor():
    agent = RLAgent(tiny_policy(0), ENV_ID, config())
    perturb(agent.policy.model, "lora_B", 0.05, seed=3)
    result = policy_kl_and_entropy(agent, PROMPTS, max_new_tokens=4, samples=1)
    assert result["kl_exact"] == 1.0 and result["kl"] > 0 and result["kl_k3"] > 0
    assert "kl_sampled" in result  # the old Monte-Carlo estimate, which may be negative, is kept apart


def test_exact_kl_matches_a_direct_computation_over_the_vocabulary():
    agent = RLAgent(tiny_policy(0), ENV_ID, config())
    perturb(agent.policy.model, "lora_B", 0.1, seed=4)
    result = policy_kl_and_entropy(agent, PROMPTS[:1], max_new_tokens=5, seed=2)
    generation = agent.backend.generate([agent.prompt_for(PROMPTS[0], agent.population.best().context)],
                                        SamplingParams(max_new_tokens=5, temperature=1.0, seed=2))[0]
    ids = torch.tensor([generation.prompt_ids + generation.completion_ids])
    model = agent.policy.model
    with torch.no_grad():
        current = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        with model.disable_adapter():
            base = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    start, n = len(generation.prompt_ids) - 1, len(generation.completion_ids)
    p, q = current[start:start + n], base[start:start + n]
    by_hand = float((p.exp() * (p - q)).sum(-1).mean())
    assert result["n_tokens"] == n and result["kl"] == pytest.approx(by_hand, rel=1e-3)
