"""fst_env.metrics: mean@k, running max, sample efficiency, continual-learning matrices, sigmoid fits, KL/entropy."""

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
from fst_env.metrics import (
    RunningMax,
    accuracy_with_interval,
    continual_metrics,
    fit_sigmoid,
    mean_at_k,
    paired_difference,
    policy_kl_and_entropy,
    running_max,
    sample_efficiency_ratio,
    samples_to_reach,
    score_tokens,
    wilson_interval,
)
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


# ------------------------------------------------------------------------------------------ mean@k, running max
def test_mean_at_k_hand_example_and_bad_input():
    assert mean_at_k([[1, 0, 1, 1], [0, 0, 0, 1]]) == pytest.approx(0.5)
    assert mean_at_k(np.array([[True, False], [True, True]])) == pytest.approx(0.75)
    assert mean_at_k([[0.25], [0.75], [0.5]]) == pytest.approx(0.5)
    for bad in ([1, 0, 1], [[]], [[1.0, math.nan]], np.zeros((0, 4))):
        with pytest.raises(ValueError):
            mean_at_k(bad)


def test_running_max_ignores_nan_and_keeps_first_step_of_peak():
    np.testing.assert_allclose(running_max([math.nan, 0.1, math.nan, 0.3, 0.2, 0.3]),
                               [math.nan, 0.1, 0.1, 0.3, 0.3, 0.3])
    tracker = RunningMax()
    assert math.isnan(tracker.value) and tracker.step is None
    seen = [tracker.update(v, step=s) for s, v in zip((0, 50, 100, 150, 200), (0.1, math.nan, 0.3, 0.2, 0.3),
                                                                       strict=True)]
    assert seen == [0.1, 0.1, 0.3, 0.3, 0.3]
    assert tracker.value == 0.3 and tracker.step == 100
    assert RunningMax().update(0.4) == 0.4
    with pytest.raises(ValueError):
        tracker.update(math.inf)


def test_samples_to_reach_and_sample_efficiency_ratio():
    base_samples, base_values = [0, 10, 20, 30, 40], [0.1, 0.2, 0.4, 0.42, 0.42]
    assert samples_to_reach(base_samples, base_values, 0.42) == 30
    assert samples_to_reach(base_samples, base_values, 0.5) != samples_to_reach(base_samples, base_values, 0.5)
    # The method reaches the baseline's peak 0.42 at 10 samples; the baseline itself at 30: 3x.
    assert sample_efficiency_ratio(base_samples, base_values, [0, 10, 20], [0.1, 0.45, 0.5]) == pytest.approx(3.0)
    assert math.isnan(sample_efficiency_ratio(base_samples, base_values, [0, 10], [0.1, 0.3]))
    assert sample_efficiency_ratio(base_samples, base_values, [0, 10], [0.5, 0.6]) == math.inf
    with pytest.raises(ValueError, match="non-decreasing"):
        samples_to_reach([0, 20, 10], [0.1, 0.2, 0.3], 0.2)
    with pytest.raises(ValueError, match="equal length"):
        samples_to_reach([0, 10], [0.1], 0.1)


# ------------------------------------------------------------------------------------------ continual learning
# R[i, j]: accuracy on task j after stage i. Task 1 is better *before* its own stage (0.75) than after it (0.7),
# so Chaudhry forgetting (max over all earlier stages) and -BWT (vs the diagonal) differ.
R = [[0.8, 0.75, 0.2],
     [0.6, 0.7, 0.3],
     [0.5, 0.5, 0.9]]
B = [0.1, 0.2, 0.25]


def test_continual_metrics_hand_computed():
    m = continual_metrics(R, B)
    assert m.average_accuracy == pytest.approx((0.5 + 0.5 + 0.9) / 3)
    # forgetting: task 0: max(0.8, 0.6) - 0.5 = 0.3; task 1: max(0.75, 0.7) - 0.5 = 0.25.
    assert m.forgetting == pytest.approx(0.275)
    # BWT: task 0: 0.5 - 0.8 = -0.3; task 1: 0.5 - 0.7 = -0.2.
    assert m.backward_transfer == pytest.approx(-0.25)
    # FWT: task 1: R[0,1] - b1 = 0.55; task 2: R[1,2] - b2 = 0.05.
    assert m.forward_transfer == pytest.approx(0.3)
    assert (m.n_average_accuracy, m.n_forgetting, m.n_backward_transfer, m.n_forward_transfer) == (3, 2, 2, 2)
    np.testing.assert_allclose(m.forgetting_per_task, [0.3, 0.25, math.nan])
    np.testing.assert_allclose(m.forward_transfer_per_task, [math.nan, 0.55, 0.05])
    assert set(m.as_dict()) == {"average_accuracy", "forgetting", "backward_transfer", "forward_transfer",
                                "n_average_accuracy", "n_forgetting", "n_backward_transfer", "n_forward_transfer"}


def test_continual_metrics_nan_entries_drop_only_their_terms():
    r = np.array(R, dtype=float)
    r[1, 0] = math.nan   # task 0 not evaluated after stage 1: forgetting's max runs over stage 0 only
    r[1, 2] = math.nan   # task 2 not evaluated before its stage: its FWT term is undefined
    m = continual_metrics(r, B)
    assert m.forgetting == pytest.approx((0.3 + 0.25) / 2)
    assert m.forward_transfer == pytest.approx(0.55) and m.n_forward_transfer == 1
    assert m.backward_transfer == pytest.approx(-0.25)

    r = np.array(R, dtype=float)
    r[2, 1] = math.nan   # final accuracy on task 1 missing: its ACC, forgetting and BWT terms go
    m = continual_metrics(r)
    assert m.average_accuracy == pytest.approx(0.7) and m.n_average_accuracy == 2
    assert m.forgetting == pytest.approx(0.3) and m.n_forgetting == 1
    assert m.backward_transfer == pytest.approx(-0.3) and m.n_backward_transfer == 1
    assert math.isnan(m.forward_transfer) and m.n_forward_transfer == 0  # no baseline given

    r = np.array(R, dtype=float)
    r[:, 0] = math.nan
    r[2, :] = math.nan
    m = continual_metrics(r, B)
    assert math.isnan(m.average_accuracy) and m.n_average_accuracy == 0
    assert math.isnan(m.forgetting) and math.isnan(m.backward_transfer)


def test_continual_metrics_single_task_and_bad_input():
    m = continual_metrics([[0.4]], [0.1])
    assert m.average_accuracy == pytest.approx(0.4)
    assert all(math.isnan(v) for v in (m.forgetting, m.backward_transfer, m.forward_transfer))
    for bad in ([[0.1, 0.2]], [], [[0.1, math.inf], [0.2, 0.3]], [0.1, 0.2]):
        with pytest.raises(ValueError):
            continual_metrics(bad)
    with pytest.raises(ValueError, match="baseline"):
        continual_metrics(R, [0.1, 0.2])


# ------------------------------------------------------------------------------------------ sigmoid fits
def curve(c: np.ndarray, a: float, b: float, c_mid: float, r0: float) -> np.ndarray:
    return r0 + (a - r0) / (1 + (c_mid / c) ** b)


TRUE = dict(a=0.6, b=1.5, c_mid=2000.0, r0=0.1)


def test_fit_sigmoid_recovers_noise_free_parameters():
    c = np.geomspace(100, 50000, 20)
    y = curve(c, **TRUE)
    for fit in (fit_sigmoid(c, y), fit_sigmoid(c, y, r0=0.1)):
        a, b, c_mid, r0 = fit.A, fit.B, fit.C_mid, fit.R0
        assert a == pytest.approx(0.6, abs=1e-4) and b == pytest.approx(1.5, rel=1e-3)
        assert c_mid == pytest.approx(2000.0, rel=1e-3) and r0 == pytest.approx(0.1, abs=1e-4)
        assert fit.r2 > 0.99999 and fit.n_points == 20
    assert fit_sigmoid(c, y, r0=0.1).r0_fixed and not fit_sigmoid(c, y).r0_fixed
    fit = fit_sigmoid(np.concatenate([[0.0], c]), np.concatenate([[0.1], y]))  # C = 0 is the start value
    assert fit.predict(0.0) == pytest.approx(0.1, abs=1e-4)
    assert isinstance(fit.predict(2000.0), float) and fit.predict(2000.0) == pytest.approx(0.35, abs=1e-3)
    np.testing.assert_allclose(fit.predict(c), y, atol=1e-4)
    assert fit.predict(1e12) == pytest.approx(0.6, abs=1e-3)  # extrapolates to the asymptote


def test_fit_sigmoid_recovers_parameters_from_noisy_data():
    rng = np.random.default_rng(0)
    c = np.geomspace(100, 50000, 30)
    y = np.clip(curve(c, **TRUE) + rng.normal(0, 0.01, c.size), 0, 1)
    fit = fit_sigmoid(c, y)
    a, b, c_mid = fit.A, fit.B, fit.C_mid
    assert a == pytest.approx(0.6, abs=0.03) and b == pytest.approx(1.5, rel=0.3)
    assert c_mid == pytest.approx(2000, rel=0.25) and fit.r2 > 0.98
    fixed = fit_sigmoid(c, y, r0=0.1)
    a_fixed, r0_fixed = fixed.A, fixed.R0
    assert a_fixed == pytest.approx(0.6, abs=0.02) and r0_fixed == 0.1


def test_fit_sigmoid_respects_bounds_and_rejects_bad_input():
    # A curve still climbing past 1 would want A > 1: the bound holds it at 1.
    c = np.array([10.0, 20, 40, 80, 160])
    fit = fit_sigmoid(c, np.array([0.1, 0.3, 0.6, 0.85, 0.99]))
    assert 0 <= fit.A <= 1 and fit.B > 0 and fit.C_mid > 0 and 0 <= fit.R0 <= 1
    with pytest.raises(ValueError, match="at least 4"):
        fit_sigmoid([10, 20, 30], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least 4"):
        fit_sigmoid([10, 20, 30, 40], [0.1, 0.2, math.nan, 0.3])
    with pytest.raises(ValueError, match="fractions"):
        fit_sigmoid([10, 20, 30, 40], [10, 20, 30, 40])
    with pytest.raises(ValueError, match="distinct"):
        fit_sigmoid([0, 0, 0, 5], [0.1, 0.1, 0.1, 0.2])
    with pytest.raises(ValueError, match=">= 0"):
        fit_sigmoid([-1, 20, 30, 40], [0.1, 0.2, 0.3, 0.3])
    with pytest.raises(ValueError, match="r0"):
        fit_sigmoid(c, np.array([0.1, 0.3, 0.6, 0.85, 0.99]), r0=1.5)


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


# ------------------------------------------------------------------------------------------ intervals
def test_wilson_interval_matches_known_values():
    # Reference values (z = 1.959964): 0/10 -> (0, 0.2775), 5/10 -> (0.2366, 0.7634), 10/10 -> (0.7225, 1).
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    low, high = wilson_interval(1, 1)
    assert 0 < low < 1 and high == 1.0
    for bad in ((11, 10), (-1, 10), (0, 0)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_accuracy_with_interval_uses_problems_as_the_unit():
    correct = [[1, 1], [0, 0], [1, 0], [0, 0]]  # mean@2 = 0.375 over n = 4 problems
    result = accuracy_with_interval(correct)
    assert result["accuracy"] == 0.375 and result["n"] == 4 and result["k"] == 2
    assert result["per_problem"] == [1.0, 0.0, 0.5, 0.0]
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(wilson_interval(1.5, 4))
    # Eight independent samples would give a narrower interval: problems, not samples, are the unit.
    wide = result["ci_high"] - result["ci_low"]
    narrow = np.subtract(*wilson_interval(3, 8)[::-1])
    assert wide > narrow
    with pytest.raises(ValueError):
        accuracy_with_interval([[2.0]])


def test_paired_difference_t_and_bootstrap_on_hand_counts():
    a = [1, 1, 1, 0, 1, 0, 1, 1]
    b = [0, 1, 0, 0, 1, 0, 0, 1]
    d = np.subtract(a, b)  # [1, 0, 1, 0, 0, 0, 1, 0]: mean 0.375, sd 0.5175, n 8
    t = paired_difference(a, b)
    half = 2.364624 * d.std(ddof=1) / math.sqrt(8)  # t_{0.975, 7}
    assert t.mean == 0.375 and t.n == 8
    assert (t.ci_low, t.ci_high) == pytest.approx((0.375 - half, 0.375 + half), abs=1e-6)
    boot = paired_difference(a, b, method="bootstrap", seed=1)
    assert boot.mean == 0.375 and 0.0 <= boot.ci_low < 0.375 < boot.ci_high <= 0.75
    same = paired_difference([0.5, 1.0, 0.0], [0.5, 1.0, 0.0])
    assert (same.mean, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired_difference([1.0], [0.0])
    with pytest.raises(ValueError):
        paired_difference([1.0, 0.0], [0.0, 1.0], method="z")


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
