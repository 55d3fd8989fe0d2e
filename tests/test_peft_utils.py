"""fst_env.peft_utils: PEFT wrappers, transformers models with adapters and plain models are told apart."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fst_env.peft_utils import core_model, has_adapters, is_peft


@pytest.fixture(scope="module")
def tiny():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


def test_plain_model_is_not_peft(tiny):
    assert not is_peft(tiny) and not has_adapters(tiny) and core_model(tiny) is tiny


def test_peft_wrapper_is_peft_and_its_core_is_the_base_model(tiny):
    import copy

    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(copy.deepcopy(tiny), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert is_peft(wrapped) and has_adapters(wrapped)
    assert core_model(wrapped) is wrapped.get_base_model() and core_model(wrapped) is not wrapped
    merged = wrapped.merge_and_unload()
    assert not is_peft(merged) and core_model(merged) is merged


def test_transformers_integrated_adapters_have_adapters_but_no_peft_wrapper(tiny):
    import copy

    peft = pytest.importorskip("peft")
    model = copy.deepcopy(tiny)
    model.add_adapter(peft.LoraConfig(r=2, target_modules=["q_proj"]), adapter_name="a")
    assert has_adapters(model) and not is_peft(model) and core_model(model) is model


def test_importing_it_loads_neither_torch_nor_peft():
    code = "import sys, fst_env.peft_utils; print('torch' in sys.modules, 'peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
