"""TextEpisodeStatistics: Gymnasium's episode statistics plus verdict counts and response lengths."""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
from gymnasium.wrappers import RecordEpisodeStatistics

import fst_env
from fst_env.wrappers import MultiTurnRetry, TextEpisodeStatistics

ENV_ID = "test/EchoStats-v0"
WORDS = ["apple", "river", "stone"]
ALL_KEYS = {"correct", "incorrect", "format_error", "error", "timeout", "unknown"}


def _reward(response: str, problem: dict) -> float:
    if response == "boom":
        raise RuntimeError("judge exploded")
    return float(response.strip() == problem["answer"])


@pytest.fixture(autouse=True)
def _echo_env() -> None:
    fst_env.register_task(ENV_ID, problems=[{"prompt": f"Repeat the word {w}.", "answer": w} for w in WORDS],
                          reward_fn=_reward)


def test_is_a_record_episode_statistics() -> None:
    env = TextEpisodeStatistics(gym.make(ENV_ID))
    assert isinstance(env, RecordEpisodeStatistics)


def test_single_turn_episode_stats() -> None:
    env = TextEpisodeStatistics(gym.make(ENV_ID))
    _, info = env.reset(options={"problem_id": 0})
    assert "episode" not in info
    _, _, terminated, _, info = env.step("apple")
    assert terminated
    stats = info["episode"]
    assert stats["r"] == 1.0 and stats["l"] == 1 and stats["t"] >= 0.0
    assert stats["verdicts"] == {**dict.fromkeys(ALL_KEYS, 0), "correct": 1}
    assert stats["response_chars"] == 5 and stats["mean_response_chars"] == 5.0


def test_multi_turn_episode_counts_every_verdict_and_char() -> None:
    env = TextEpisodeStatistics(MultiTurnRetry(gym.make(ENV_ID), max_attempts=4))
    env.reset(options={"problem_id": 1})
    actions = ["", "boom", "pear", "river"]
    for action in actions:
        _, _, terminated, _, info = env.step(action)
        assert ("episode" in info) == terminated
    stats = info["episode"]
    assert stats["verdicts"] == {**dict.fromkeys(ALL_KEYS, 0), "format_error": 1, "error": 1, "incorrect": 1,
                                 "correct": 1}
    assert stats["l"] == 4 and stats["r"] == 1.0
    assert stats["response_chars"] == sum(map(len, actions)) == 13
    assert stats["mean_response_chars"] == pytest.approx(13 / 4)


def test_step_without_verdict_counts_as_unknown() -> None:
    env = TextEpisodeStatistics(gym.make("CartPole-v1"))
    env.reset(seed=0)
    terminated = truncated = False
    steps = 0
    while not (terminated or truncated):
        _, _, terminated, truncated, info = env.step(0)
        steps += 1
    assert info["episode"]["verdicts"]["unknown"] == steps
    assert info["episode"]["response_chars"] == 0, "non-text actions add no characters"


def test_counters_reset_between_episodes() -> None:
    env = TextEpisodeStatistics(MultiTurnRetry(gym.make(ENV_ID), max_attempts=3))
    env.reset(options={"problem_id": 0})
    env.step("wrong answer")  # abandon this episode mid-way
    env.reset(options={"problem_id": 0})
    *_, info = env.step("apple")
    stats = info["episode"]
    assert stats["l"] == 1 and stats["response_chars"] == 5
    assert stats["verdicts"]["incorrect"] == 0 and stats["verdicts"]["correct"] == 1
    assert list(env.return_queue) == [1.0]


def test_non_str_action_raises_type_error_naming_env() -> None:
    env = TextEpisodeStatistics(gym.make(ENV_ID))
    env.reset(seed=0)
    with pytest.raises(TypeError, match=ENV_ID):
        env.step(b"apple")


def test_deterministic_apart_from_wall_clock_time() -> None:
    # check_env's determinism check cannot pass on any RecordEpisodeStatistics: "t" is wall-clock time.
    # Everything else in the step must repeat for the same seed and action.
    results = []
    for _ in range(2):
        env = TextEpisodeStatistics(gym.make(ENV_ID).unwrapped)
        obs, _ = env.reset(seed=123)
        obs2, reward, terminated, truncated, info = env.step("river")
        info["episode"].pop("t")
        results.append((obs, obs2, reward, terminated, truncated, info))
    assert results[0] == results[1]


def test_check_env_reset_checks_pass() -> None:
    from gymnasium.utils.env_checker import check_reset_options, check_reset_return_type, check_reset_seed_determinism

    env = TextEpisodeStatistics(gym.make(ENV_ID).unwrapped)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_reset_return_type(env)
        check_reset_seed_determinism(env)
        check_reset_options(env)
    assert not [str(w.message) for w in caught]


def test_make_vec_reports_per_env_stats() -> None:
    envs = gym.make_vec(ENV_ID, num_envs=4, vectorization_mode="sync", wrappers=[TextEpisodeStatistics])
    try:
        envs.reset(seed=0, options={"problem_id": 2})
        _, _, terminated, _, infos = envs.step(("stone", "pear", "", "stone!"))
        assert terminated.all() and infos["_episode"].all()
        assert infos["episode"]["r"].tolist() == [1.0, 0.0, 0.0, 0.0]
        assert infos["episode"]["response_chars"].tolist() == [5, 4, 0, 6]
        assert infos["episode"]["verdicts"]["correct"].tolist() == [1, 0, 0, 0]
        assert infos["episode"]["verdicts"]["format_error"].tolist() == [0, 0, 1, 0]
    finally:
        envs.close()
