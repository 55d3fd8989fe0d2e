"""Every registered fst/ env meets the env contract (parametrized over the registry)."""

import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env

import fst_env
from fst_env.core import VERDICTS

ROOT = Path(__file__).resolve().parents[1]

BAD_ACTIONS = {
    "empty": "",
    "whitespace": " \n\t  ",
    "one_megabyte": "7" * (1 << 20),
    "control_chars": "\x00\x01\x1b[31m\x7f answer \x07",
    "lone_surrogate": "\ud800 \udfff",
    "other_scripts": "答案是 四十二 — الجواب ٤٢ — ответ: сорок два",
    "emoji": "🤖🔢 = 🧮",
}


def test_registry_is_not_empty():
    assert "fst/MathReasoning-v0" in fst_env.registered_ids()


def test_check_env(fst_id):
    env = gym.make(fst_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_card_is_readable_from_the_spec(fst_id):
    card = gym.spec(fst_id).card
    card.validate()
    assert fst_id in fst_env.describe(fst_id)
    assert card.splits, "the card names its splits"


@pytest.mark.parametrize("name", sorted(BAD_ACTIONS))
def test_bad_actions_get_zero_reward_and_feedback(fst_id, name):
    env = gym.make(fst_id)
    env.reset(seed=3)
    _, reward, _, _, info = env.step(BAD_ACTIONS[name])
    low, _ = gym.spec(fst_id).card.reward_range
    assert reward <= max(low, 0.0)
    assert isinstance(info["feedback"], str) and info["feedback"].strip()
    assert info["verdict"] in VERDICTS and info["verdict"] != "correct"


def test_non_str_action_is_a_type_error_naming_env_and_type(fst_id):
    env = gym.make(fst_id)
    env.reset(seed=0)
    with pytest.raises(TypeError, match=r"(?s)(fst/|Env).*int"):
        env.step(42)


def test_step_before_reset_is_a_clear_error(fst_id):
    env = gym.make(fst_id, disable_env_checker=True).unwrapped
    with pytest.raises(ResetNeeded, match="reset"):
        env.step("1")


def test_same_seed_same_problem_and_judgement(fst_id):
    a, b = gym.make(fst_id), gym.make(fst_id)
    obs_a, _ = a.reset(seed=11)
    obs_b, _ = b.reset(seed=11)
    assert obs_a == obs_b
    step_a, step_b = a.step("Answer: 1"), b.step("Answer: 1")
    assert step_a[1] == step_b[1] and step_a[4]["feedback"] == step_b[4]["feedback"]


def test_readme_names_only_registered_ids():
    text = (ROOT / "README.md").read_text()
    named = set(re.findall(r"\bfst/[A-Za-z]+-v\d+", text))
    assert named, "README names at least one env id"
    unregistered = named - set(fst_env.registered_ids())
    assert not unregistered, f"unregistered ids in README: {unregistered}"


def test_readme_env_table_is_current():
    text = (ROOT / "README.md").read_text()
    start, end = "<!-- env-table:start -->", "<!-- env-table:end -->"
    assert start in text and end in text
    table = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert table == fst_env.markdown_table(), "README env table is stale: run python -m fst_env.readme_table"


def test_make_without_prior_import_and_make_vec():
    code = (
        "import gymnasium as gym, sys\n"
        "env = gym.make('fst_env:fst/MathReasoning-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "assert isinstance(obs, str) and obs\n"
        "vec = gym.make_vec('fst/MathReasoning-v0', num_envs=8)\n"
        "obs, infos = vec.reset(seed=0, options={'problem_id': 5})\n"
        "assert len(set(obs)) == 1 and len(obs) == 8, obs\n"
        "_, rewards, term, trunc, infos = vec.step(tuple(['\\\\boxed{1}'] * 8))\n"
        "assert len(rewards) == 8 and all(term)\n"
        "assert 'torch' not in sys.modules, 'making envs must not import torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT / "tests", timeout=300)


def test_oracle_response_scores_full_reward_where_known(fst_id):
    env = gym.make(fst_id)
    _, high = gym.spec(fst_id).card.reward_range
    env.reset(seed=5)
    oracle = env.unwrapped.oracle_response()
    if oracle is None:
        pytest.skip(f"{fst_id} knows no oracle response")
    _, reward, _, _, info = env.step(oracle)
    assert reward == high and info["verdict"] == "correct", info["feedback"]


def test_async_vector_env_carries_any_text_through_shared_memory():
    envs = gym.make_vec("fst/MathReasoning-v0", num_envs=2, vectorization_mode="async",
                        families=("chain_sum",))
    try:
        obs, _ = envs.reset(seed=0, options={"problem_id": 3})
        direct = gym.make("fst/MathReasoning-v0", families=("chain_sum",)).reset(options={"problem_id": 3})[0]
        assert obs == (direct, direct)
        obs, _, _, _, infos = envs.step(("\\ud800 ключ 答案 \\x00", "\\\\boxed{0}"))
        assert obs[0] == infos["feedback"][0] and obs[0].strip()
    finally:
        envs.close()
