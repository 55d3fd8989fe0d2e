"""ContextInjection: fast-weight text in every observation (prepend) or in info["system_prompt"] (system)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import fst_env
from fst_env.context import render_context
from fst_env.wrappers import ContextInjection

ENV_ID = "test/EchoContext-v0"
WORDS = ["apple", "river", "stone", "cloud", "amber"]


def _register() -> str:
    return fst_env.register_task(
        ENV_ID, problems=[{"prompt": f"Repeat the word {w}.", "answer": w} for w in WORDS],
        reward_fn=lambda response, problem: float(response.strip() == problem["answer"]))


@pytest.fixture(autouse=True)
def _echo_env() -> None:
    _register()


def _check_env_quietly(env: gym.Env) -> None:
    """check_env, failing on any warning except the one about checking a wrapped env."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    unexpected = [str(w.message) for w in caught if "different from the unwrapped" not in str(w.message)]
    assert not unexpected, unexpected


def test_prepend_str_context_on_reset_and_step() -> None:
    env = ContextInjection(gym.make(ENV_ID), "Answer with one word.")
    obs, info = env.reset(options={"problem_id": 1})
    assert obs == "Answer with one word.\n\nRepeat the word river."
    assert "system_prompt" not in info
    obs, reward, terminated, _, info = env.step("river")
    assert reward == 1.0 and terminated and info["verdict"] == "correct"
    assert obs.startswith("Answer with one word.\n\n") and obs.endswith(info["feedback"])


def test_dict_context_uses_documented_rendering_and_custom_separator() -> None:
    ctx = {"notes": "Words are lower case.", "instructions": "Be exact.", "style": "terse"}
    env = ContextInjection(gym.make(ENV_ID), ctx, separator="\n---\n")
    obs, _ = env.reset(options={"problem_id": 0})
    # instructions first, then notes, then other components by name, each after instructions headed by its name
    expected_ctx = "Be exact.\n\nNotes:\nWords are lower case.\n\nStyle:\nterse"
    assert render_context(ctx) == expected_ctx
    assert obs == f"{expected_ctx}\n---\nRepeat the word apple."
    assert env.context == ctx and env.rendered_context == expected_ctx


def test_system_mode_leaves_observation_and_fills_info() -> None:
    env = ContextInjection(gym.make(ENV_ID), {"instructions": "Be exact."}, mode="system")
    obs, info = env.reset(options={"problem_id": 2})
    assert obs == "Repeat the word stone."
    assert info["system_prompt"] == "Be exact."
    obs, _, _, _, info = env.step("pebble")
    assert info["system_prompt"] == "Be exact."
    assert "system_prompt" not in obs and obs == info["feedback"]
    assert "'stone'" in info["feedback"]


def test_stacked_system_contexts_keep_inner_first() -> None:
    env = ContextInjection(ContextInjection(gym.make(ENV_ID), "inner rules", mode="system"), "outer notes",
                           mode="system")
    _, info = env.reset(options={"problem_id": 0})
    assert info["system_prompt"] == "inner rules\n\nouter notes"


@pytest.mark.parametrize("empty", ["", "   ", {}, {"instructions": "  ", "notes": ""}])
@pytest.mark.parametrize("mode", ["prepend", "system"])
def test_empty_context_is_identity(empty: object, mode: str) -> None:
    plain = gym.make(ENV_ID)
    wrapped = ContextInjection(gym.make(ENV_ID), empty, mode=mode)
    assert wrapped.reset(seed=3) == plain.reset(seed=3)
    assert wrapped.step("nope") == plain.step("nope")


def test_set_context_takes_effect_at_next_reset_only() -> None:
    env = ContextInjection(gym.make(ENV_ID), "old")
    obs, _ = env.reset(options={"problem_id": 0})
    assert obs.startswith("old\n\n")
    env.set_context({"instructions": "new"})
    obs, *_ = env.step("wrong")
    assert obs.startswith("old\n\n"), "a running episode keeps the context it started with"
    obs, _ = env.reset(options={"problem_id": 0})
    assert obs == "new\n\nRepeat the word apple."
    env.set_context("")
    obs, _ = env.reset(options={"problem_id": 0})
    assert obs == "Repeat the word apple."


def test_no_state_across_resets_same_seed_same_observation() -> None:
    env = ContextInjection(gym.make(ENV_ID), "ctx")
    first = env.reset(seed=11)
    env.step("anything")
    env.reset(seed=5)
    env.step("more")
    assert env.reset(seed=11) == first


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"context": 42}, TypeError),
    ({"context": {"instructions": 3}}, TypeError),
    ({"context": "x", "mode": "user"}, ValueError),
    ({"context": "x", "separator": None}, TypeError),
])
def test_bad_arguments_are_refused(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error, match="ContextInjection"):
        ContextInjection(gym.make(ENV_ID), **kwargs)


def test_non_str_action_still_raises_type_error_naming_env() -> None:
    env = ContextInjection(gym.make(ENV_ID), "ctx")
    env.reset(seed=0)
    with pytest.raises(TypeError, match=ENV_ID):
        env.step(123)


@pytest.mark.parametrize("mode", ["prepend", "system"])
def test_check_env_passes_on_wrapped_env(mode: str) -> None:
    _check_env_quietly(ContextInjection(gym.make(ENV_ID).unwrapped, {"instructions": "Be exact."}, mode=mode))


def test_make_vec_with_wrapper_and_set_context_through_call() -> None:
    envs = gym.make_vec(ENV_ID, num_envs=4, vectorization_mode="sync",
                        wrappers=[lambda e: ContextInjection(e, "Be exact.")])
    try:
        obs, _ = envs.reset(seed=0)
        assert len(obs) == 4 and all(o.startswith("Be exact.\n\nRepeat the word ") for o in obs)
        envs.call("set_context", {"instructions": "Swapped."})
        obs, _ = envs.reset(seed=0)
        assert all(o.startswith("Swapped.\n\nRepeat the word ") for o in obs)
        answers = tuple(o.rsplit(" ", 1)[-1].rstrip(".") for o in obs)
        _, rewards, terminated, _, infos = envs.step(answers)
        assert rewards.tolist() == [1.0] * 4 and terminated.all()
        assert list(infos["verdict"]) == ["correct"] * 4
    finally:
        envs.close()
