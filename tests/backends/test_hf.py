"""HFBackend: batched left-padded sampling, stop handling, determinism and log-probs (tiny model, CPU)."""

from __future__ import annotations

import pytest
import torch

from fst_env.backends import Generation, GenerationBackend, HFBackend, SamplingParams
from fst_env.models import Policy, tiny_policy

MESSAGES = ["hi", "what is 2+2?", "a longer question with more words in it, to force left padding", "ok"]


@pytest.fixture()
def policy() -> Policy:
    return tiny_policy(seed=0)


@pytest.fixture()
def backend(policy: Policy) -> HFBackend:
    return HFBackend(policy)


def _prompts(backend: HFBackend) -> list[str]:
    return [backend.apply_chat_template([{"role": "user", "content": m}]) for m in MESSAGES]


def _reference_logprobs(policy: Policy, generation: Generation, temperature: float) -> list[float]:
    """Log-probs from one unpadded, uncached forward pass over prompt + completion."""
    ids = torch.tensor([generation.prompt_ids + generation.completion_ids])
    with torch.no_grad():
        logits = policy.model(ids).logits[0].float() / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(generation.prompt_ids) - 1
    return [logprobs[start + i, token].item() for i, token in enumerate(generation.completion_ids)]


@pytest.mark.parametrize("bad", [
    {"max_new_tokens": 0}, {"max_new_tokens": 2.5}, {"temperature": -0.1}, {"temperature": float("nan")},
    {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"stop": "</answer>"}, {"stop": [""]}, {"seed": "1"},
])
def test_sampling_params_reject_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError, match="SamplingParams"):
        SamplingParams(**bad).validate()


def test_sampling_params_defaults_are_valid() -> None:
    params = SamplingParams().validate()
    assert params.logprob_temperature == 1.0 and not params.greedy
    assert SamplingParams(temperature=0).logprob_temperature == 1.0  # greedy reports the T=1 policy
    assert SamplingParams(temperature=0.5).logprob_temperature == 0.5


def test_backend_satisfies_the_protocol(backend: HFBackend) -> None:
    assert isinstance(backend, GenerationBackend)
    backend.update_weights()  # in-process: a no-op that must not fail


def test_same_seed_same_output_and_order_preserved(backend: HFBackend) -> None:
    prompts = _prompts(backend)
    params = SamplingParams(max_new_tokens=12, seed=7)
    first, second = backend.generate(prompts, params), backend.generate(prompts, params)
    assert [g.completion_ids for g in first] == [g.completion_ids for g in second]
    assert [g.logprobs for g in first] == [g.logprobs for g in second]
    other = backend.generate(prompts, SamplingParams(max_new_tokens=12, seed=8))
    assert [g.completion_ids for g in other] != [g.completion_ids for g in first]
    tokenizer = backend.policy.tokenizer
    for prompt, generation in zip(prompts, first, strict=True):
        assert generation.prompt_ids == tokenizer(prompt, add_special_tokens=False).input_ids


def test_sampling_does_not_touch_the_global_rng(backend: HFBackend) -> None:
    state = torch.get_rng_state()
    backend.generate(_prompts(backend), SamplingParams(max_new_tokens=4, seed=1))
    assert torch.equal(torch.get_rng_state(), state)


def test_left_padded_batches_match_single_prompt_runs(policy: Policy, backend: HFBackend) -> None:
    prompts = _prompts(backend)
    greedy = SamplingParams(max_new_tokens=10, temperature=0)
    batched = backend.generate(prompts, greedy)
    singles = [backend.generate([p], greedy)[0] for p in prompts]
    small_chunks = HFBackend(policy, batch_size=1).generate(prompts, greedy)
    for b, s, c in zip(batched, singles, small_chunks, strict=True):
        assert b.completion_ids == s.completion_ids == c.completion_ids
        assert b.logprobs == pytest.approx(s.logprobs, abs=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_are_the_temperature_scaled_policy(policy: Policy, backend: HFBackend, temperature: float) -> None:
    generations = backend.generate(_prompts(backend), SamplingParams(max_new_tokens=12, temperature=temperature,
                                                                    seed=3))
    for generation in generations:
        assert len(generation.logprobs) == len(generation.completion_ids)
        assert generation.logprobs == pytest.approx(_reference_logprobs(policy, generation, temperature), abs=1e-5)


def test_length_limit(backend: HFBackend) -> None:
    for generation in backend.generate(_prompts(backend), SamplingParams(max_new_tokens=5, seed=0)):
        assert generation.finish_reason == "length" and len(generation.completion_ids) == 5
        assert generation.stop is None
        assert generation.text == backend.policy.tokenizer.decode(generation.completion_ids, skip_special_tokens=True)


def test_stop_string_truncates_text_and_tokens(backend: HFBackend) -> None:
    prompt = _prompts(backend)[:1]
    tokenizer = backend.policy.tokenizer
    free = backend.generate(prompt, SamplingParams(max_new_tokens=30, temperature=0))[0]
    # Byte-level tokens: the greedy text's characters 6..7 are produced by known tokens; use them as the stop.
    text = tokenizer.decode(free.completion_ids, skip_special_tokens=True)
    stop = text[6:8]
    cut = text.find(stop)
    stopped = backend.generate(prompt, SamplingParams(max_new_tokens=30, temperature=0, stop=[stop, "never-seen"]))[0]
    assert stopped.finish_reason == "stop" and stopped.stop == stop
    assert stopped.text == text[:cut + len(stop)]
    # Token ids end with the token that completed the stop string, and are a prefix of the free run.
    n = len(stopped.completion_ids)
    assert stopped.completion_ids == free.completion_ids[:n] and n < len(free.completion_ids)
    assert stop in tokenizer.decode(stopped.completion_ids) and stop not in tokenizer.decode(
        stopped.completion_ids[:-1])
    assert stopped.logprobs == pytest.approx(free.logprobs[:n], abs=1e-6)
    excluded = backend.generate(prompt, SamplingParams(max_new_tokens=30, temperature=0, stop=[stop],
                                                       include_stop=False))[0]
    assert excluded.text == text[:cut] and excluded.completion_ids == stopped.completion_ids


def test_eos_ends_a_completion(policy: Policy, backend: HFBackend) -> None:
    eos = policy.tokenizer.eos_token_id
    bias = torch.zeros(policy.model.config.vocab_size)
    bias[eos] = 100.0  # make eos overwhelmingly likely on every step
    handle = policy.model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)
    try:
        generations = backend.generate(_prompts(backend), SamplingParams(max_new_tokens=8, seed=0))
    finally:
        handle.remove()
    for generation in generations:
        assert generation.completion_ids == [eos] and generation.finish_reason == "stop"
        assert generation.text == "" and generation.logprobs[0] == pytest.approx(0.0, abs=1e-6)


def test_top_k_one_and_tiny_top_p_are_greedy(backend: HFBackend) -> None:
    prompts = _prompts(backend)
    greedy = [g.completion_ids for g in backend.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0))]
    top_k = backend.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.5, top_k=1, seed=4))
    top_p = backend.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.5, top_p=1e-6, seed=4))
    assert [g.completion_ids for g in top_k] == greedy
    assert [g.completion_ids for g in top_p] == greedy


def test_train_mode_is_restored(policy: Policy, backend: HFBackend) -> None:
    policy.model.train()
    backend.generate(_prompts(backend)[:1], SamplingParams(max_new_tokens=2, seed=0))
    assert policy.model.training


def test_bad_inputs(backend: HFBackend) -> None:
    assert backend.generate([], SamplingParams()) == []
    with pytest.raises(TypeError, match="list of str"):
        backend.generate("a prompt", SamplingParams())
    with pytest.raises(TypeError, match="prompt 1 must be str"):
        backend.generate(["ok", 3], SamplingParams())  # type: ignore[list-item]
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        backend.generate([""], SamplingParams())
    with pytest.raises(ValueError, match="no LoRA adapters"):
        backend.set_adapter("default")


def test_set_adapter_switches_between_lora_and_base_weights(policy: Policy) -> None:
    from peft import LoraConfig, get_peft_model

    prompts = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    base = HFBackend(policy).generate(prompts, greedy)[0]
    # init_lora_weights=False draws both LoRA matrices at random, so the adapter changes the output at once.
    policy.model = get_peft_model(policy.model, LoraConfig(r=4, lora_alpha=64, target_modules="all-linear",
                                                           init_lora_weights=False))
    backend = HFBackend(policy)
    adapted = backend.generate(prompts, greedy)[0]
    assert adapted.logprobs != pytest.approx(base.logprobs, abs=1e-3)
    backend.set_adapter(None)
    assert backend.generate(prompts, greedy)[0].logprobs == pytest.approx(base.logprobs, abs=1e-5)
    backend.set_adapter("default")
    assert backend.generate(prompts, greedy)[0].logprobs == pytest.approx(adapted.logprobs, abs=1e-5)
    with pytest.raises(ValueError, match="unknown adapter"):
        backend.set_adapter("nope")
