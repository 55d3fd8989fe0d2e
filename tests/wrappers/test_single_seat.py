"""Tests for wrappers/single_seat.py: one seat of an AEC text game as a single-agent Gymnasium env."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import gymnasium as gym
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env
from pettingzoo import AECEnv
from pettingzoo.test import api_test

from fst_env.core import Problem, TextSpace, Verdict
from fst_env.envs.text_games import BargainGame, ConcedingBargainer, ScriptedDescriber, ScriptedGuesser, WordGuessGame
from fst_env.multiagent import MoveResult, TextAECEnv
from fst_env.wrappers.single_seat import SingleSeat


class GiftGame(TextAECEnv):
    """A tiny test game: the giver moves first ("gift" pays the taker 0.5 now, "stop" ends the game at once),
    then the taker names a number; the game ends after the taker's move with reward 1 for "7", else 0."""

    metadata: ClassVar[dict[str, Any]] = {**TextAECEnv.metadata, "name": "gift_v0"}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(("giver", "taker"), **kwargs)

    def num_problems(self) -> int:
        return 5

    def load_problem(self, problem_id: int) -> Problem:
        return Problem(prompt=f"gift game {problem_id}", answer="7")

    def start_game(self, problem: Problem) -> None:
        self.log = [problem.prompt]

    def view(self, agent: str) -> str:
        return "\n".join([f"You are the {agent}.", *self.log])

    def play(self, agent: str, action: str) -> MoveResult:
        self.log.append(f"{agent}: {action[:20]!r}")
        if agent == "giver":
            if action == "stop":
                return MoveResult({"giver": "You stopped the game.", "taker": "The giver stopped the game."},
                                  {"giver": Verdict.CORRECT, "taker": Verdict.TIMEOUT},
                                  {"giver": 0.25, "taker": 0.25}, game_over=True)
            gift = 0.5 if action == "gift" else 0.0
            return MoveResult({"giver": f"You gave {gift}."}, {"giver": Verdict.CORRECT}, {"taker": gift})
        if action == "boom":
            raise RuntimeError("the taker's move broke the game")
        won = action.strip() == "7"
        verdict = Verdict.CORRECT if won else Verdict.INCORRECT
        return MoveResult({"giver": "The taker moved.", "taker": f"You said {action[:20]!r}: {verdict.value}."},
                          {"giver": Verdict.CORRECT, "taker": verdict}, {"taker": float(won)}, game_over=True)

    def wasted_move(self, agent: str, verdict: Verdict, reason: str) -> MoveResult:
        if agent == "giver":
            return MoveResult({"giver": reason}, {"giver": verdict})
        return MoveResult({"giver": "The taker's move was unusable.", "taker": reason},
                          {"giver": Verdict.CORRECT, "taker": verdict}, game_over=True)


class PlainAEC(AECEnv):
    """A bare PettingZoo game with text spaces and no feedback in its infos: both agents say a word, and each
    gets reward 1 if the words match."""

    metadata: ClassVar[dict[str, Any]] = {"name": "plain_v0", "render_modes": []}

    def __init__(self) -> None:
        super().__init__()
        self.possible_agents = ["a_0", "a_1"]
        self._spaces = {a: TextSpace(100) for a in self.possible_agents}

    def observation_space(self, agent):
        return self._spaces[agent]

    def action_space(self, agent):
        return self._spaces[agent]

    def reset(self, seed=None, options=None):
        self.agents = list(self.possible_agents)
        self.rewards = dict.fromkeys(self.agents, 0.0)
        self._cumulative_rewards = dict.fromkeys(self.agents, 0.0)
        self.terminations = dict.fromkeys(self.agents, False)
        self.truncations = dict.fromkeys(self.agents, False)
        self.infos = {a: {} for a in self.agents}
        self.said = {}
        self.agent_selection = "a_0"

    def observe(self, agent):
        return f"{agent} sees {sorted(self.said.items())}"

    def step(self, action):
        agent = self.agent_selection
        if self.terminations[agent]:
            self._was_dead_step(action)
            return
        self._cumulative_rewards[agent] = 0.0
        self.said[agent] = action
        if agent == "a_0":
            self.rewards = dict.fromkeys(self.agents, 0.0)
            self.agent_selection = "a_1"
        else:
            match = float(self.said["a_0"] == action)
            self.rewards = dict.fromkeys(self.agents, match)
            self.terminations = dict.fromkeys(self.agents, True)
        self._accumulate_rewards()


def test_the_test_games_pass_api_test():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api_test(GiftGame(), num_cycles=10)


def test_rewards_before_the_first_move_arrive_with_the_first_step():
    env = SingleSeat(GiftGame(), seat="taker", others={"giver": lambda obs: "gift"})
    obs, info = env.reset(seed=0)
    assert "giver: 'gift'" in obs and "feedback" not in info
    _, reward, terminated, truncated, info = env.step("7")
    assert (reward, terminated, truncated) == (1.5, True, False)
    assert info["verdict"] == "correct" and info["feedback"] == "You said '7': correct." and info["seat"] == "taker"


def test_episode_rewards_sum_to_the_seat_return_in_a_longer_game():
    tough, soft = ConcedingBargainer.preset("tough"), ConcedingBargainer.preset("soft")
    env = SingleSeat(BargainGame(), seat="player_1", others={"player_0": tough})
    for seed in range(10):
        game = BargainGame()  # the same game played on the bare AEC env with the same two policies
        game.reset(seed=seed)
        returns = dict.fromkeys(game.possible_agents, 0.0)
        for agent in game.agent_iter():
            _, reward, terminated, truncated, _ = game.last()
            returns[agent] += reward
            game.step(None if terminated or truncated else {"player_0": tough, "player_1": soft}[agent](
                game.observe(agent)))
        obs, _ = env.reset(seed=seed)
        assert env.game.problem_id == game.problem_id  # a seed means the same game with or without the seat
        total, done, steps = 0.0, False, 0
        while not done:
            obs, reward, terminated, truncated, info = env.step(soft(obs))
            total += reward
            steps += 1
            done = terminated or truncated
        assert total == returns["player_1"] and info["verdict"] in {"correct", "timeout"}
        assert steps == len([line for line in env.game.log if ", player_1:" in line])


def test_game_over_before_the_seats_turn_is_reported_on_the_next_step():
    env = SingleSeat(GiftGame(), seat="taker", others={"giver": lambda obs: "stop"})
    obs, _ = env.reset(seed=1)
    assert "giver: 'stop'" in obs
    _, reward, terminated, _, info = env.step("7")
    assert terminated and reward == 0.25 and info["verdict"] == "timeout"
    assert info["feedback"].startswith("The game ended before your turn") and "giver stopped" in info["feedback"]
    with pytest.raises(ResetNeeded, match="reset"):
        env.step("7")


def test_a_game_that_raises_costs_the_move_not_the_run():
    env = SingleSeat(GiftGame(), seat="taker", others={"giver": lambda obs: "hello"})
    env.reset(seed=2)
    _, reward, terminated, _, info = env.step("boom")
    assert terminated and reward == 0.0 and info["verdict"] == "error"
    assert "RuntimeError" in info["feedback"] and "broke the game" in info["feedback"]


def test_a_plain_aec_game_still_gets_feedback_and_verdicts():
    env = SingleSeat(PlainAEC(), seat="a_1", others={"a_0": lambda obs: "same"})
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("same")
    assert (reward, terminated, info["verdict"]) == (1.0, True, "correct") and "reward 1" in info["feedback"]
    env.reset(seed=0)
    _, reward, _, _, info = env.step("other")
    assert (reward, info["verdict"]) == (0.0, "incorrect") and info["feedback"].strip()


def test_check_env_on_hand_built_seats():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(SingleSeat(GiftGame(), "taker", {"giver": lambda obs: "gift"}))
        check_env(SingleSeat(WordGuessGame(), "guesser", {"describer": ScriptedDescriber("terse")}))
        check_env(SingleSeat(BargainGame(), "player_1", {"player_0": ConcedingBargainer()}))


def test_constructor_validation():
    game = WordGuessGame()
    with pytest.raises(ValueError, match="seat 'judge'"):
        SingleSeat(game, "judge", {"describer": ScriptedDescriber()})
    with pytest.raises(ValueError, match=r"missing \['describer'\]"):
        SingleSeat(game, "guesser", {})
    with pytest.raises(ValueError, match=r"not expected \['guesser'\]"):
        SingleSeat(game, "guesser", {"describer": ScriptedDescriber(), "guesser": ScriptedGuesser()})
    with pytest.raises(TypeError, match="must be callable"):
        SingleSeat(game, "guesser", {"describer": "strong"})
    with pytest.raises(TypeError, match=r"pettingzoo\.AECEnv"):
        SingleSeat(gym.make("fst/WordGuess-v0"), "guesser", {})
    with pytest.raises(ValueError, match="render_mode"):
        SingleSeat(game, "guesser", {"describer": ScriptedDescriber()}, render_mode="rgb_array")


def test_type_errors_for_the_seat_and_for_a_partner_policy():
    env = SingleSeat(GiftGame(), "taker", {"giver": lambda obs: "gift"})
    env.reset(seed=0)
    with pytest.raises(TypeError, match=r"SingleSeat\(gift_v0, seat='taker'\)\.step expects a str.*int"):
        env.step(7)
    broken = SingleSeat(GiftGame(), "taker", {"giver": lambda obs: 7})
    with pytest.raises(TypeError, match="policy for seat 'giver' returned int"):
        broken.reset(seed=0)


def test_step_before_reset_raises():
    env = SingleSeat(GiftGame(), "taker", {"giver": lambda obs: "gift"})
    with pytest.raises(ResetNeeded, match="not started"):
        env.step("7")


def test_a_stuck_game_is_reported():
    class Endless(GiftGame):
        def next_agent(self, agent: str) -> str:
            return "giver"  # the taker never gets a turn

    env = SingleSeat(Endless(), "taker", {"giver": lambda obs: "gift"})
    env.max_partner_moves = 50
    with pytest.raises(RuntimeError, match="50 moves in a row"):
        env.reset(seed=0)


def test_same_seed_same_episode_and_seedless_resets_are_reproducible():
    def episode(env, seed):
        obs, _ = env.reset(seed=seed)
        out = [obs]
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step("apple")
            out.append((obs, reward, info["feedback"]))
            done = terminated or truncated
        return out

    make = lambda: SingleSeat(WordGuessGame(), "guesser", {"describer": ScriptedDescriber("weak")})  # noqa: E731
    a, b = make(), make()
    assert episode(a, 3) == episode(b, 3)
    assert [a.reset()[0] for _ in range(3)] == [b.reset()[0] for _ in range(3)]


def test_render_ansi_shows_the_seats_view():
    env = SingleSeat(GiftGame(), "taker", {"giver": lambda obs: "gift"}, render_mode="ansi")
    obs, _ = env.reset(seed=0)
    assert env.render() == obs
    env.close()


def test_oracle_response_is_none_when_the_game_knows_none():
    env = SingleSeat(GiftGame(), "taker", {"giver": lambda obs: "gift"})
    assert env.oracle_response() is None  # before reset
    env.reset(seed=0)
    assert env.oracle_response() is None  # TextAECEnv.oracle_move's default
    assert SingleSeat(PlainAEC(), "a_1", {"a_0": lambda obs: "x"}).oracle_response() is None
