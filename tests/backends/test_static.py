"""StaticCacheBackend ("fast"): parity with HFBackend in float32, log-probs, seeds, stops, LoRA re-merge, ratios."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch

from fst_env.agents.rollout import Rollout
from fst_env.agents.slow import SlowLearner
from fst_env.backends import GenerationBackend, HFBackend, SamplingParams, StaticCacheBackend, make_backend
from fst_env.backends.static import _Decoder, sample_tokens, unsupported_reason
from fst_env.models import (
    THREADS_ENV,
    Policy,
    configure_threads,
    cpu_supports_bf16,
    sampling_dtype,
    seeded,
    tiny_policy,
    tiny_tokenizer,
)

#: Untied, so a random model's greedy text depends on the prompt (tied embeddings repeat the last token).
MODEL = {"tie_word_embeddings": False}
MESSAGES = ["hi", "what is 2+2?", "a longer question with more words in it, to force left padding", "okay",
            "Ünïcødé ✓ and digits 12345", "x"]


@pytest.fixture()
def policy() -> Policy:
    return tiny_policy(0, **MODEL)


@pytest.fixture(autouse=True)
def _same_global_rng_in_every_test() -> Iterator[None]:
    """Each test starts from the same global torch RNG state, whatever ran before it in this process.

    Random initialisations here (a LoRA adapter, the slow learner's adapter) draw from the global RNG; without
    this, every test order drew different weights, so a comparison could pass alone and fail after other files.
    """
    with seeded(1234):
        yield


def _random_lora(policy: Policy) -> None:
    """Wrap ``policy.model`` in a random (non-zero) LoRA adapter "default" on every linear layer, scale 1.

    Scale 1 (lora_alpha == r) makes the merged delta about twice the size of the random base weights (std ~0.04
    vs 0.02), larger than a trained adapter's usually is; the greedy log-probs still move by ~0.1 or more
    (measured), far past the 1e-3 the tests ask. Why not a larger scale: the backend's merged
    ``(W + s*B*A) x`` and PEFT's unmerged ``W x + s*B*(A x)`` agree only up to float32 rounding, and a rounding
    error of u = 2**-24 relative to an attention score becomes an absolute error of u * |score| in the softmax
    input, so the log-prob error grows with the scores' size. Measured on 60 adapter draws each: lora_alpha=64
    (scale 16, scores up to ~600) gave log-prob differences up to 2e-5, over the 1e-5 parity tolerance;
    scale 1 (scores ~1-3) gave at most 1e-6, so 1e-5 holds with a tenfold margin.
    """
    from peft import LoraConfig, get_peft_model

    policy.model = get_peft_model(policy.model, LoraConfig(r=4, lora_alpha=4, target_modules="all-linear",
                                                           init_lora_weights=False))


def _prompts(backend: GenerationBackend) -> list[str]:
    return [backend.apply_chat_template([{"role": "user", "content": m}]) for m in MESSAGES]


def _fast(policy: Policy, **kwargs: object) -> StaticCacheBackend:
    return StaticCacheBackend(policy, dtype=torch.float32, **kwargs)  # type: ignore[arg-type]


def _reference_logprobs(policy: Policy, prompt_ids: list[int], completion_ids: list[int],
                        temperature: float) -> list[float]:
    """Log-probs from one unpadded, uncached forward pass of the policy's own module over prompt + completion."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = policy.model(ids).logits[0].float() / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(prompt_ids) - 1
    return [logprobs[start + i, token].item() for i, token in enumerate(completion_ids)]


def _flat(generations: list) -> list[float]:
    """All log-probs of a generate call in one list (pytest.approx compares flat sequences only)."""
    return [value for generation in generations for value in generation.logprobs]


def test_make_backend_builds_it_and_it_satisfies_the_protocol(policy: Policy) -> None:
    backend = make_backend("fast", policy, batch_size=4)
    assert isinstance(backend, StaticCacheBackend) and isinstance(backend, GenerationBackend)
    assert backend.batch_size == 4 and backend.dtype == sampling_dtype("cpu") and backend.trainable
    backend.update_weights()
    assert backend.merge_seconds >= 0


def test_unsupported_models_fall_back_to_hf_with_a_warning() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from fst_env.models import _finish_policy

    tokenizer = tiny_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=128))
    gpt2 = _finish_policy(model, tokenizer, torch.device("cpu"), torch.float32, "tiny-gpt2")
    assert "model_type 'gpt2'" in (unsupported_reason(gpt2.model) or "")
    with pytest.warns(UserWarning, match="using 'hf'"):
        backend = make_backend("fast", gpt2, batch_size=2)
    assert isinstance(backend, HFBackend) and backend.batch_size == 2
    with pytest.raises(ValueError, match="cannot run"):
        StaticCacheBackend(gpt2)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_greedy_matches_hf_with_left_padding(policy: Policy, batch_size: int) -> None:
    hf = HFBackend(policy)
    prompts = _prompts(hf)
    assert len({len(policy.tokenizer(p).input_ids) for p in prompts}) == len(prompts)  # all lengths differ
    greedy = SamplingParams(max_new_tokens=16, temperature=0)
    expected = hf.generate(prompts, greedy)
    got = _fast(policy, batch_size=batch_size).generate(prompts, greedy)
    assert len({tuple(g.completion_ids) for g in expected}) > 1  # the prompts really steer the output
    for e, g in zip(expected, got, strict=True):
        assert g.prompt_ids == e.prompt_ids and g.completion_ids == e.completion_ids and g.text == e.text
        assert g.finish_reason == e.finish_reason == "length"
        assert g.logprobs == pytest.approx(e.logprobs, abs=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_are_the_temperature_scaled_policy(policy: Policy, temperature: float) -> None:
    backend = _fast(policy)
    generations = backend.generate(_prompts(backend), SamplingParams(max_new_tokens=12, temperature=temperature,
                                                                     seed=3))
    for generation in generations:
        assert len(generation.logprobs) == len(generation.completion_ids) == 12
        assert generation.logprobs == pytest.approx(
            _reference_logprobs(policy, generation.prompt_ids, generation.completion_ids, temperature), abs=1e-5)


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng(policy: Policy) -> None:
    backend = _fast(policy)
    prompts = _prompts(backend)
    params = SamplingParams(max_new_tokens=12, seed=7)
    state = torch.get_rng_state()
    first, second = backend.generate(prompts, params), backend.generate(prompts, params)
    assert torch.equal(torch.get_rng_state(), state)
    assert [g.completion_ids for g in first] == [g.completion_ids for g in second]
    assert [g.logprobs for g in first] == [g.logprobs for g in second]
    other = backend.generate(prompts, SamplingParams(max_new_tokens=12, seed=8))
    assert [g.completion_ids for g in other] != [g.completion_ids for g in first]
    # Sampling really samples: not the greedy completions.
    greedy = backend.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0))
    assert [g.completion_ids for g in first] != [g.completion_ids for g in greedy]


def test_stop_strings_match_hf(policy: Policy) -> None:
    hf, fast = HFBackend(policy), _fast(policy)
    prompts = _prompts(hf)
    free = hf.generate(prompts[:1], SamplingParams(max_new_tokens=30, temperature=0))[0]
    stop = free.text[6:8]  # byte-level tokens: a string the first prompt's greedy run certainly produces
    for include in (True, False):
        params = SamplingParams(max_new_tokens=30, temperature=0, stop=[stop, "never-seen"], include_stop=include)
        expected, got = hf.generate(prompts, params), fast.generate(prompts, params)
        assert expected[0].finish_reason == "stop" and expected[0].stop == stop
        for e, g in zip(expected, got, strict=True):
            assert (g.text, g.completion_ids, g.finish_reason, g.stop) == (e.text, e.completion_ids,
                                                                            e.finish_reason, e.stop)
    assert got[0].text == free.text[:free.text.find(stop)]


@pytest.mark.parametrize("compact_at", [0.25, 1.0])
def test_eos_endings_at_different_steps_match_hf(policy: Policy, compact_at: float) -> None:
    hf = HFBackend(policy)
    prompts = _prompts(hf)
    greedy = SamplingParams(max_new_tokens=20, temperature=0)
    free = hf.generate(prompts, greedy)
    # Declare a token the greedy runs emit as an extra eos id: rows then stop at different steps (or never).
    eos = free[0].completion_ids[4]
    policy.model.generation_config.eos_token_id = [policy.tokenizer.eos_token_id, eos]
    expected = hf.generate(prompts, greedy)
    got = _fast(policy, compact_at=compact_at).generate(prompts, greedy)
    lengths = {len(e.completion_ids) for e in expected}
    assert expected[0].finish_reason == "stop" and expected[0].completion_ids[-1] == eos and len(lengths) > 1
    for e, g in zip(expected, got, strict=True):
        assert (g.completion_ids, g.finish_reason, g.text) == (e.completion_ids, e.finish_reason, e.text)
        assert g.logprobs == pytest.approx(e.logprobs, abs=1e-5)


def test_length_cap(policy: Policy) -> None:
    backend = _fast(policy)
    for generation in backend.generate(_prompts(backend), SamplingParams(max_new_tokens=5, seed=0)):
        assert generation.finish_reason == "length" and len(generation.completion_ids) == 5
        assert generation.text == policy.tokenizer.decode(generation.completion_ids, skip_special_tokens=True)
    with pytest.raises(ValueError, match="exceeds the model's"):
        backend.generate(["hi"], SamplingParams(max_new_tokens=5000))


def test_top_k_one_and_tiny_top_p_are_greedy(policy: Policy) -> None:
    backend = _fast(policy)
    prompts = _prompts(backend)
    greedy = [g.completion_ids for g in backend.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0))]
    top_k = backend.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.5, top_k=1, seed=4))
    top_p = backend.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.5, top_p=1e-6, seed=4))
    assert [g.completion_ids for g in top_k] == greedy
    assert [g.completion_ids for g in top_p] == greedy


def test_sample_tokens_draws_the_truncated_distribution() -> None:
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05])
    scaled = probs.clamp(min=1e-30).log().expand(20000, -1).contiguous()
    scaled[:, 1] = float("-inf")
    generator = torch.Generator().manual_seed(0)
    tokens, logprobs = sample_tokens(scaled, SamplingParams(), generator)
    counts = torch.bincount(tokens, minlength=5) / 20000
    assert counts[1] == 0 and torch.allclose(counts, probs, atol=0.015)
    top_k, top_k_logprobs = sample_tokens(scaled, SamplingParams(top_k=2), generator)
    assert set(top_k.tolist()) == {0, 2} and (top_k == 0).float().mean() == pytest.approx(0.5 / 0.8, abs=0.02)
    top_p, _ = sample_tokens(scaled, SamplingParams(top_p=0.7), generator)  # keeps 0.5 and 0.3
    assert set(top_p.tolist()) == {0, 2}
    # The log-probs are the untruncated distribution's, with or without truncation.
    full = torch.log_softmax(scaled, -1)
    assert torch.allclose(logprobs, full.gather(-1, tokens[:, None])[:, 0], atol=1e-6)
    assert torch.allclose(top_k_logprobs, full.gather(-1, top_k[:, None])[:, 0], atol=1e-6)


def test_sample_tokens_spans_blocks_and_a_ragged_vocabulary() -> None:
    # 700 tokens: two full blocks and a padded third; the mass sits in all three, around the block edges.
    vocab = 700
    probs = torch.zeros(vocab)
    probs[[0, 255, 256, 511, 512, 699]] = torch.tensor([0.1, 0.2, 0.15, 0.25, 0.1, 0.2])
    scaled = probs.clamp(min=1e-30).log().where(probs > 0, torch.tensor(float("-inf")))
    scaled = scaled.expand(30000, -1).contiguous()
    tokens, logprobs = sample_tokens(scaled, SamplingParams(), torch.Generator().manual_seed(1))
    counts = torch.bincount(tokens, minlength=vocab) / 30000
    assert counts[probs == 0].sum() == 0 and torch.allclose(counts, probs, atol=0.012)
    assert torch.allclose(logprobs, probs.log()[tokens], atol=1e-6)


def test_sample_tokens_never_draws_zero_mass_at_the_top_of_the_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    # A uniform draw just below 1 with the last block (and the padding) empty after top-k: the draw must land on
    # the last token with mass, not past it.
    vocab = 600
    scaled = torch.linspace(2.0, -2.0, vocab).expand(3, -1).contiguous()  # token 0 most likely, then descending
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.full(shape[0], 1 - 2 ** -24, dtype=kw["dtype"]))
    tokens, _ = sample_tokens(scaled, SamplingParams(top_k=300), torch.Generator())
    assert tokens.tolist() == [299, 299, 299]
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.zeros(shape[0], dtype=kw["dtype"]))
    scaled[:, :3] = float("-inf")  # a zero draw skips the leading zero-mass tokens
    tokens, _ = sample_tokens(scaled, SamplingParams(), torch.Generator())
    assert tokens.tolist() == [3, 3, 3]


def _rollouts(backend: GenerationBackend, params: SamplingParams) -> list[Rollout]:
    generations = backend.generate(_prompts(backend), params)
    rollouts = [Rollout(group=f"p{i // 3}", problem="", context_id=0, context={}, completion=g.text,
                        reward=float(i % 3 == 0), prompt_ids=g.prompt_ids, completion_ids=g.completion_ids,
                        old_logprobs=g.logprobs) for i, g in enumerate(generations)]
    assert all(r.completion_ids for r in rollouts)
    return rollouts


def test_first_slow_step_ratio_is_one_in_float32(policy: Policy) -> None:
    learner = SlowLearner(policy, temperature=0.8)
    backend = _fast(policy)
    metrics = learner.step(_rollouts(backend, SamplingParams(max_new_tokens=10, temperature=0.8, seed=1)))
    assert metrics["skipped"] == 0.0
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["ratio_min"] == pytest.approx(1.0, abs=1e-4) and metrics["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["logprob_diff_mean"] < 1e-5


def test_a_slow_step_changes_the_next_generation(policy: Policy) -> None:
    learner = SlowLearner(policy, lr=0.05, temperature=1.0)
    backend = _fast(policy)
    params = SamplingParams(max_new_tokens=10, seed=2)
    rollouts = _rollouts(backend, params)
    before = backend.generate(_prompts(backend), SamplingParams(max_new_tokens=10, temperature=0))
    learner.step(rollouts)
    # No update_weights() call: the in-place optimizer step is detected and the copy re-merged.
    after = backend.generate(_prompts(backend), SamplingParams(max_new_tokens=10, temperature=0))
    assert _flat(after) != pytest.approx(_flat(before), abs=1e-3)
    expected = HFBackend(policy).generate(_prompts(backend), SamplingParams(max_new_tokens=10, temperature=0))
    for e, g in zip(expected, after, strict=True):
        assert g.completion_ids == e.completion_ids and g.logprobs == pytest.approx(e.logprobs, abs=1e-5)
    # The second step's ratio (sampler = the re-merged weights, learner = the same weights) is 1 again.
    metrics = learner.step(_rollouts(backend, params))
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and metrics["logprob_diff_mean"] < 1e-5
    backend.update_weights()
    assert backend.merge_seconds >= 0


def test_set_adapter_none_serves_the_base_weights(policy: Policy) -> None:
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    prompts = _prompts(HFBackend(policy))[:2]
    base = _fast(policy).generate(prompts, greedy)
    _random_lora(policy)
    backend = _fast(policy)
    adapted = backend.generate(prompts, greedy)
    reference = HFBackend(policy).generate(prompts, greedy)
    assert _flat(adapted) == pytest.approx(_flat(reference), abs=1e-5)
    assert _flat(adapted) != pytest.approx(_flat(base), abs=1e-3)
    backend.set_adapter(None)
    assert _flat(backend.generate(prompts, greedy)) == pytest.approx(_flat(base), abs=1e-5)
    backend.set_adapter("default")
    assert _flat(backend.generate(prompts, greedy)) == pytest.approx(_flat(adapted), abs=1e-5)
    with pytest.raises(ValueError, match="unknown adapter"):
        backend.set_adapter("nope")


@pytest.mark.parametrize("float32_head", [False, True])
def test_bfloat16_copy_stays_close_to_the_float32_policy(policy: Policy, float32_head: bool) -> None:
    backend = StaticCacheBackend(policy, dtype=torch.bfloat16, float32_head=float32_head)
    weights = backend._current_weights()
    assert weights.embed.dtype == torch.bfloat16 and weights.layers[0].wqkv.dtype == torch.bfloat16
    assert weights.lm_head.dtype == (torch.float32 if float32_head else torch.bfloat16)
    assert policy.model.dtype == torch.float32  # the learner's weights are untouched
    for generation in backend.generate(_prompts(backend), SamplingParams(max_new_tokens=12, seed=5)):
        reference = _reference_logprobs(policy, generation.prompt_ids, generation.completion_ids, 1.0)
        diffs = [abs(a - b) for a, b in zip(generation.logprobs, reference, strict=True)]
        assert max(diffs) < 0.1 and sum(diffs) / len(diffs) < 0.03


def test_bad_inputs(policy: Policy) -> None:
    backend = _fast(policy)
    assert backend.generate([], SamplingParams()) == []
    with pytest.raises(TypeError, match="list of str"):
        backend.generate("a prompt", SamplingParams())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prompt 1 must be str"):
        backend.generate(["ok", 3], SamplingParams())  # type: ignore[list-item]
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        backend.generate([""], SamplingParams())
    with pytest.raises(ValueError, match="no LoRA adapters"):
        backend.set_adapter("default")
    with pytest.raises(ValueError, match="batch_size"):
        StaticCacheBackend(policy, batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        StaticCacheBackend(policy, dtype="int8")
    assert StaticCacheBackend(policy, dtype="float32").dtype == torch.float32


def test_thread_and_dtype_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(THREADS_ENV, "1")
        assert configure_threads() == 1 and torch.get_num_threads() == 1
        assert configure_threads(2) == 2 and torch.get_num_threads() == 2  # an explicit count wins
        monkeypatch.setenv(THREADS_ENV, "many")
        with pytest.raises(ValueError, match=THREADS_ENV):
            configure_threads()
        monkeypatch.delenv(THREADS_ENV)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert configure_threads() == 1  # an explicit OMP_NUM_THREADS is left alone
    finally:
        torch.set_num_threads(before)
    expected = torch.bfloat16 if cpu_supports_bf16() else torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sampling_dtype("cpu") == expected


def test_disable_adapter_context_is_seen(policy: Policy) -> None:
    _random_lora(policy)
    backend = _fast(policy)
    greedy = SamplingParams(max_new_tokens=6, temperature=0)
    prompts = _prompts(backend)[:2]
    adapted = backend.generate(prompts, greedy)
    with policy.model.disable_adapter():
        base = backend.generate(prompts, greedy)
        reference = HFBackend(policy).generate(prompts, greedy)
    assert _flat(base) == pytest.approx(_flat(reference), abs=1e-5)
    assert _flat(base) != pytest.approx(_flat(adapted), abs=1e-3)
    assert _flat(backend.generate(prompts, greedy)) == pytest.approx(_flat(adapted), abs=1e-5)


def test_bf16_autocast_learner_keeps_float32_lora_and_a_ratio_near_one(policy: Policy) -> None:
    learner = SlowLearner(policy, temperature=1.0, autocast=True, lr=1e-2)
    rollouts = _rollouts(StaticCacheBackend(policy, dtype=torch.bfloat16),
                         SamplingParams(max_new_tokens=10, seed=1))
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    metrics = learner.step(rollouts)
    assert all(p.dtype == torch.float32 for p in learner.model.parameters())
    after = {n: p.detach() for n, p in learner.model.named_parameters() if p.requires_grad}
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the float32 LoRA weights moved
    assert 0.9 < metrics["ratio_min"] <= metrics["ratio_mean"] <= metrics["ratio_max"] < 1.1
    assert 0 < metrics["logprob_diff_mean"] < 0.03  # both bf16, but not the same numerics: close, not equal


def test_repeated_prompts_are_prefilled_once_and_sample_as_alone(policy: Policy,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _fast(policy)
    distinct = _prompts(backend)[:3]
    prompts = [distinct[i] for i in (0, 1, 0, 2, 0, 1)]  # one prompt three times, one twice
    seeds = [11, 12, 13, 14, 15, 16]
    prefilled: list[int] = []
    prefill = _Decoder.prefill

    def spy(self: _Decoder, input_ids: torch.Tensor, *args: object) -> torch.Tensor:
        prefilled.append(input_ids.shape[0])
        return prefill(self, input_ids, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(_Decoder, "prefill", spy)
    together = backend.generate(prompts, SamplingParams(max_new_tokens=10, row_seeds=seeds))
    assert prefilled == [3]  # three distinct prompts, six rows
    for prompt, seed, generation in zip(prompts, seeds, together, strict=True):
        alone = backend.generate([prompt], SamplingParams(max_new_tokens=10, row_seeds=[seed]))[0]
        assert generation.completion_ids == alone.completion_ids
        assert generation.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
        assert generation.logprobs == pytest.approx(
            _reference_logprobs(policy, generation.prompt_ids, generation.completion_ids, 1.0), abs=1e-4)
    assert prefilled[1:] == [1] * len(prompts)
