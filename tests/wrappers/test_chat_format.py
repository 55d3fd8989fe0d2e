"""ChatFormat: observations rendered with a real transformers tokenizer's chat template, per-episode history."""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import fst_env
from fst_env.wrappers import ChatFormat, ContextInjection, MultiTurnRetry

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

ENV_ID = "test/EchoChat-v0"
WORDS = ["apple", "river", "stone"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(autouse=True)
def _echo_env() -> None:
    fst_env.register_task(ENV_ID, problems=[{"prompt": f"Repeat the word {w}.", "answer": w} for w in WORDS],
                          reward_fn=lambda response, problem: float(response.strip() == problem["answer"]))


def _tokenizer(chat_template: str | None = TEMPLATE):
    """A real PreTrainedTokenizerFast built in memory (a one-word WordLevel model): no download, milliseconds."""
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=model, unk_token="[UNK]",
                                                chat_template=chat_template)


@pytest.fixture(scope="module")
def tokenizer():
    return _tokenizer()


def test_reset_renders_prompt_with_template(tokenizer) -> None:
    env = ChatFormat(gym.make(ENV_ID), tokenizer)
    obs, info = env.reset(options={"problem_id": 0})
    assert obs == "<|user|>Repeat the word apple.<|end|>\n<|assistant|>"
    assert info["messages"] == [{"role": "user", "content": "Repeat the word apple."}]
    assert info["problem_id"] == 0


def test_fixed_system_prompt_and_no_generation_prompt(tokenizer) -> None:
    env = ChatFormat(gym.make(ENV_ID), tokenizer, system_prompt="You repeat words.", add_generation_prompt=False)
    obs, _ = env.reset(options={"problem_id": 1})
    assert obs == "<|system|>You repeat words.<|end|>\n<|user|>Repeat the word river.<|end|>\n"


def test_system_prompt_from_context_injection_joins_fixed_one(tokenizer) -> None:
    inner = ContextInjection(gym.make(ENV_ID), {"instructions": "Be exact."}, mode="system")
    env = ChatFormat(inner, tokenizer, system_prompt="You repeat words.")
    obs, info = env.reset(options={"problem_id": 2})
    assert info["messages"][0] == {"role": "system", "content": "You repeat words.\n\nBe exact."}
    assert obs.startswith("<|system|>You repeat words.\n\nBe exact.<|end|>\n<|user|>Repeat the word stone.")
    assert obs.count("Be exact.") == 1, "system-mode context must not also be prepended to the user turn"


def test_step_appends_assistant_action_and_feedback(tokenizer) -> None:
    env = ChatFormat(gym.make(ENV_ID), tokenizer)
    env.reset(options={"problem_id": 0})
    obs, reward, terminated, _, info = env.step("pear")
    assert reward == 0.0 and terminated
    roles = [m["role"] for m in info["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert info["messages"][1]["content"] == "pear"
    assert info["messages"][2]["content"] == info["feedback"]
    assert obs == ("<|user|>Repeat the word apple.<|end|>\n<|assistant|>pear<|end|>\n"
                   f"<|user|>{info['feedback']}<|end|>\n<|assistant|>")


def test_multi_turn_conversation_grows_then_reset_clears_it(tokenizer) -> None:
    env = ChatFormat(MultiTurnRetry(gym.make(ENV_ID), max_attempts=3), tokenizer)
    env.reset(options={"problem_id": 1})
    obs, reward, terminated, _, info = env.step("rover")
    assert not terminated and reward == 0.0
    assert [m["role"] for m in info["messages"]] == ["user", "assistant", "user"]
    assert "Your previous answer was judged:" in info["messages"][-1]["content"]
    obs, reward, terminated, _, info = env.step("river")
    assert terminated and reward == 1.0
    assert [m["role"] for m in info["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert obs.count("<|assistant|>") == 3  # two answers plus the generation prompt
    obs, info = env.reset(options={"problem_id": 1})
    assert info["messages"] == [{"role": "user", "content": "Repeat the word river."}]
    assert env.messages == info["messages"]
    assert "rover" not in obs


def test_info_messages_is_a_copy(tokenizer) -> None:
    env = ChatFormat(gym.make(ENV_ID), tokenizer)
    _, info = env.reset(options={"problem_id": 0})
    info["messages"][0]["content"] = "tampered"
    info["messages"].append({"role": "user", "content": "extra"})
    obs, *_ = env.step("apple")
    assert "tampered" not in obs and "extra" not in obs


def test_tokenizer_without_chat_template_is_refused() -> None:
    with pytest.raises(ValueError, match="no chat template"):
        ChatFormat(gym.make(ENV_ID), _tokenizer(chat_template=None))


def test_object_without_apply_chat_template_is_refused() -> None:
    with pytest.raises(TypeError, match="apply_chat_template"):
        ChatFormat(gym.make(ENV_ID), object())


def test_non_str_action_raises_type_error_naming_env(tokenizer) -> None:
    env = ChatFormat(gym.make(ENV_ID), tokenizer)
    env.reset(seed=0)
    with pytest.raises(TypeError, match=ENV_ID):
        env.step(["apple"])
    assert len(env.messages) == 1, "a rejected action must not enter the conversation"


def test_same_seed_same_rendering(tokenizer) -> None:
    env = ChatFormat(gym.make(ENV_ID), tokenizer)
    first = env.reset(seed=4)
    env.step("x")
    assert env.reset(seed=4) == first


def test_check_env_passes_on_wrapped_env(tokenizer) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(ChatFormat(gym.make(ENV_ID).unwrapped, tokenizer, system_prompt="S"), skip_render_check=True)
    unexpected = [str(w.message) for w in caught if "different from the unwrapped" not in str(w.message)]
    assert not unexpected, unexpected


def test_make_vec_with_chat_format(tokenizer) -> None:
    envs = gym.make_vec(ENV_ID, num_envs=4, vectorization_mode="sync",
                        wrappers=[lambda e: ChatFormat(e, tokenizer)])
    try:
        obs, _ = envs.reset(seed=1)
        assert all(o.startswith("<|user|>Repeat the word ") and o.endswith("<|assistant|>") for o in obs)
        answers = tuple(o.split("Repeat the word ", 1)[1].split(".", 1)[0] for o in obs)
        _, rewards, terminated, _, infos = envs.step(answers)
        assert terminated.all() and rewards.tolist() == [1.0] * 4
        assert all(len(m) == 3 for m in infos["messages"])
    finally:
        envs.close()
