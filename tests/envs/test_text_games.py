"""Tests for the text games as a family: the PettingZoo API over both games, their gym ids, the re-export
module envs/text_games.py, scripted_player and the self-play example. Per-game rules are tested in
tests/envs/test_word_guess.py and tests/envs/test_bargain.py."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from pettingzoo.test import api_test
from text_game_helpers import BAD_ACTIONS, play_game

import fst_env
from fst_env.core import VERDICTS
from fst_env.envs import _games, bargain, text_games, word_guess
from fst_env.envs.text_games import (
    BargainConfig,
    BargainGame,
    ScriptedDescriber,
    WordGuessConfig,
    WordGuessGame,
    scripted_player,
)

GAME_IDS = ("fst/WordGuess-v0", "fst/WordDescribe-v0", "fst/Bargain-v0")


def test_text_games_re_exports_the_per_game_modules_objects():
    homes = (word_guess, bargain, _games)
    for name in text_games.__all__:
        obj = getattr(text_games, name)
        if name == "scripted_player":
            assert obj.__module__ == "fst_env.envs.text_games"
            continue
        owners = [m for m in homes if getattr(m, name, None) is obj]
        assert owners, f"text_games.{name} is not the object of any per-game module"
    assert {gym.spec(i).entry_point.split(":")[0] for i in GAME_IDS} == {
        "fst_env.envs.word_guess", "fst_env.envs.bargain"}


# ----------------------------------------------------------------------------------------------- configs
def test_configs_accept_defaults_and_objects_and_reject_unknown_fields():
    WordGuessConfig().validate()
    BargainConfig().validate()
    assert WordGuessGame(WordGuessConfig(max_rounds=5)).config.max_rounds == 5
    assert BargainGame(BargainConfig(), max_turns=8).config.max_turns == 8
    with pytest.raises(TypeError, match="no fields"):
        WordGuessGame(rounds=3)
    with pytest.raises(TypeError, match="BargainConfig"):
        BargainGame(config=WordGuessConfig())


# ----------------------------------------------------------------------------------------------- PettingZoo API
@pytest.mark.parametrize("make", [WordGuessGame, lambda: WordGuessGame(show_candidates=False, max_rounds=1),
                                  BargainGame, lambda: BargainGame(max_turns=2, num_item_types=5)])
def test_pettingzoo_api_test_passes(make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # api_test warns that text is not a NumPy array; that is by design
        api_test(make(), num_cycles=30)


@pytest.mark.parametrize("game_cls", [WordGuessGame, BargainGame])
def test_random_text_moves_end_the_game_with_zero_rewards_and_feedback(game_cls):
    env = game_cls()
    for seed in range(5):
        env.reset(seed=seed)
        for agent in env.agent_iter(200):
            _, reward, term, trunc, info = env.last()
            if term or trunc:
                assert reward == 0.0
                assert info["verdict"] in VERDICTS and info["feedback"].strip()
                env.step(None)
                continue
            env.step(env.action_space(agent).sample())
            assert env.infos[agent]["feedback"].strip()
            assert env.infos[agent]["verdict"] in VERDICTS
        assert env.agents == []


@pytest.mark.parametrize("game_cls", [WordGuessGame, BargainGame])
def test_non_str_actions_raise_type_error_naming_the_game(game_cls):
    env = game_cls()
    env.reset(seed=0)
    for bad in (None, 3, b"bytes", ["list"]):
        with pytest.raises(TypeError, match=f"{env.metadata['name']}.step expects a str"):
            env.step(bad)


def test_step_before_reset_and_after_the_end_raise_reset_needed():
    env = BargainGame()
    with pytest.raises(gym.error.ResetNeeded):
        env.step("accept")
    play_game(env, dict.fromkeys(env.possible_agents, scripted_player), seed=1)
    with pytest.raises(gym.error.ResetNeeded):
        env.step("accept")


@pytest.mark.parametrize("game_cls", [WordGuessGame, BargainGame])
def test_same_seed_and_moves_give_the_same_game(game_cls):
    def record(env, seed):
        env.reset(seed=seed)
        log = []
        for agent in env.agent_iter(100):
            obs, reward, term, trunc, info = env.last()
            log.append((agent, str(obs), reward, dict(info)))
            env.step(None if term or trunc else scripted_player(obs))
        return log

    a, b = game_cls(), game_cls()
    assert record(a, 7) == record(b, 7)
    assert record(a, 7) != record(a, 8)


def test_problem_id_option_and_its_errors():
    env = WordGuessGame()
    env.reset(options={"problem_id": 3})
    first = env.observe("describer")
    env.reset(seed=99, options={"problem_id": 3, "unrelated": True})
    assert env.observe("describer") == first and env.problem_id == 3
    with pytest.raises(ValueError, match="problem_id"):
        env.reset(options={"problem_id": 10**9})
    with pytest.raises(TypeError, match="problem_id"):
        env.reset(options={"problem_id": "3"})


@pytest.mark.parametrize("game_cls", [WordGuessGame, BargainGame])
def test_splits_are_disjoint(game_cls):
    sizes = {"train": 200, "validation": 200, "test": 200}
    prompts = {s: {game_cls(split=s, split_sizes=sizes).load_problem(k).prompt for k in range(200)} for s in sizes}
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]


def test_render_modes():
    env = BargainGame(render_mode="ansi")
    play_game(env, dict.fromkeys(env.possible_agents, scripted_player), seed=2)
    text = env.render()
    assert text.startswith("bargain: items") and "Result:" in text
    with pytest.raises(ValueError, match="render_mode"):
        WordGuessGame(render_mode="rgb_array")



def test_scripted_player_dispatches_on_the_role_header():
    with pytest.raises(ValueError, match="Role"):
        scripted_player("hello")
    env = WordGuessGame()
    env.reset(seed=0)
    assert scripted_player(env.observe("describer")) == ScriptedDescriber("strong")(env.observe("describer"))


# ----------------------------------------------------------------------------------------------- gym ids
@pytest.mark.parametrize("env_id", GAME_IDS)
def test_registered_ids_have_multi_turn_cards_and_pass_check_env(env_id):
    card = fst_env.card(env_id)
    assert card.turns == "multi" and card.reward_range == (0.0, 1.0) and card.splits["train"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(gym.make(env_id).unwrapped, skip_render_check=False)


@pytest.mark.parametrize("env_id", GAME_IDS)
def test_bad_input_to_a_seat_env_gives_zero_reward_and_feedback(env_id):
    env = gym.make(env_id)
    for action in BAD_ACTIONS:
        env.reset(seed=11)
        _, reward, _, _, info = env.step(action)
        assert reward == 0.0 and info["verdict"] in VERDICTS and info["feedback"].strip()
    env.reset(seed=11)
    with pytest.raises(TypeError, match=f"{env_id}.step expects a str"):
        env.step(42)


@pytest.mark.parametrize("env_id", GAME_IDS)
def test_make_vec_over_a_seat_id(env_id):
    envs = gym.make_vec(env_id, num_envs=3, vectorization_mode="sync")
    obs, infos = envs.reset(seed=[5, 5, 6])
    assert isinstance(obs, tuple) and obs[0] == obs[1] != obs[2]
    feedback = []
    for _ in range(4):  # with next-step autoreset, a step after a finished episode only resets that env
        obs, rewards, terms, _, infos = envs.step(tuple(scripted_player(o) for o in obs))
        assert rewards.shape == (3,) and np.all((rewards >= 0.0) & (rewards <= 1.0)) and terms.dtype == bool
        assert all(isinstance(o, str) for o in obs)
        if "feedback" in infos:
            feedback += list(infos["feedback"][infos["_feedback"]])
    assert feedback and all(isinstance(f, str) and f.strip() for f in feedback)
    envs.close()


# ----------------------------------------------------------------------------------------------- example
def test_self_play_example_runs_both_games(capsys):
    path = Path(__file__).resolve().parents[2] / "examples" / "self_play.py"
    spec = importlib.util.spec_from_file_location("self_play_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    means = example.main(["--game", "word_guess", "--games", "2"])
    assert means == {"describer": 1.0, "guesser": 1.0}
    means = example.main(["--game", "bargain", "--games", "2", "--verbose",
                          "--policy", "fst_env.envs.text_games:scripted_player"])
    assert set(means) == {"player_0", "player_1"} and all(0.0 <= m <= 1.0 for m in means.values())
    out = capsys.readouterr().out
    assert "mean return per seat" in out and "player_0 -> 'propose" in out

