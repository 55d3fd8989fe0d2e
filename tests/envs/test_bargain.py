"""Tests for envs/bargain.py: the bargaining game's moves and payoffs, the conceding bargainer and fst/Bargain-v0."""

from __future__ import annotations

import random

import gymnasium as gym
import pytest
from text_game_helpers import play_game, run_seat, uninformative_clue

from fst_env.envs.bargain import BargainGame, ConcedingBargainer


# ----------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("field, value", [("num_item_types", 1), ("num_item_types", 13), ("max_count", 0),
                                          ("total_value", 3), ("max_turns", 1),
                                          ("split_sizes", {"train": 1, "validation": 0, "test": 1})])
def test_bargain_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        BargainGame(**{field: value})


# ----------------------------------------------------------------------------------------------- bargaining play
def _bargain(seed: int = 0, **kw) -> BargainGame:
    env = BargainGame(**kw)
    env.reset(seed=seed)
    return env


def _offer(env: BargainGame, keep: list[int]) -> str:
    return "propose " + " ".join(f"{i}={k}" for i, k in zip(env.items, keep, strict=True))


def test_deal_pays_each_player_its_share_worth():
    env = _bargain()
    keep = [n // 2 for n in env.counts]
    env.step(f"Let me think.\n**{_offer(env, keep)}**")
    assert env.infos["player_0"]["verdict"] == "correct" and "Offer recorded" in env.infos["player_0"]["feedback"]
    assert "Standing offer: from player_0" in env.observe("player_1")
    env.step("That seems fine.\naccept")
    rest = [n - k for n, k in zip(env.counts, keep, strict=True)]
    total = env.config.total_value
    assert env.rewards == {"player_0": env.worth("player_0", keep) / total,
                           "player_1": env.worth("player_1", rest) / total}
    for agent in env.possible_agents:
        assert env.terminations[agent] and env.infos[agent]["verdict"] == "correct"
        assert "Deal" in env.infos[agent]["feedback"] and 0.0 <= env.rewards[agent] <= 1.0


INVALID_BARGAIN_MOVES = {
    "unreadable": (lambda env: "I would like a fair split.", "format_error", "neither 'accept' nor 'propose"),
    "nothing to accept": (lambda env: "accept", "incorrect", "no standing offer"),
    "unknown item": (lambda env: "propose dragon=1", "incorrect", "no item 'dragon'"),
    "missing item": (lambda env: f"propose {env.items[0]}=1", "incorrect", "no count for"),
    "too many": (lambda env: _offer(env, [99] * len(env.items)), "incorrect", "but there"),
    "twice": (lambda env: _offer(env, [0] * len(env.items)) + f" {env.items[0]}=0", "incorrect", "given twice"),
}


@pytest.mark.parametrize("case", INVALID_BARGAIN_MOVES)
def test_invalid_moves_name_the_problem_and_lose_the_turn(case):
    build, verdict, says = INVALID_BARGAIN_MOVES[case]
    env = _bargain(seed=1)
    env.step(build(env))
    info = env.infos["player_0"]
    assert info["verdict"] == verdict and says in info["feedback"], info["feedback"]
    assert env.agent_selection == "player_1" and env.offer is None and env.rewards["player_0"] == 0.0
    assert "invalid move, turn lost" in env.observe("player_1")


def test_a_counter_offer_rejects_the_standing_offer_with_feedback():
    env = _bargain(seed=4)
    env.step(_offer(env, env.counts))
    assert env.infos["player_0"]["verdict"] == "correct"
    env.step(_offer(env, [0] * len(env.items)))
    info = env.infos["player_0"]
    assert info["verdict"] == "incorrect" and "player_1 rejected your offer" in info["feedback"]
    assert f"worth {env.worth('player_0', env.counts)} of your" in info["feedback"]


def test_accepting_your_own_offer_is_invalid():
    env = _bargain(seed=2)
    env.step(_offer(env, env.counts))
    env.step("no idea")
    env.step("accept")
    assert env.infos["player_0"]["verdict"] == "incorrect" and "your own" in env.infos["player_0"]["feedback"]


def test_no_deal_by_the_deadline_is_a_timeout_with_zero_payoffs():
    env = _bargain(seed=3, max_turns=3)
    env.step(_offer(env, env.counts))
    env.step(_offer(env, env.counts))
    env.step(_offer(env, env.counts))  # a proposal on the last move cannot be accepted
    assert "last move" in env.infos["player_0"]["feedback"]
    for agent in env.possible_agents:
        assert env.terminations[agent] and env.rewards[agent] == 0.0
        assert env.infos[agent]["verdict"] == "timeout" and "No deal" in env.infos[agent]["feedback"]


def test_conceding_bargainers_reach_deals_and_stay_in_range():
    env = BargainGame()
    results = [play_game(env, {"player_0": ConcedingBargainer.preset("fair"),
                               "player_1": ConcedingBargainer.preset("soft")}, options={"problem_id": pid})
               for pid in range(40)]
    assert sum(r["player_0"][1] == "correct" for r in results) >= 35
    for r in results:
        for ret, verdict, _ in r.values():
            assert 0.0 <= ret <= 1.0 and verdict in {"correct", "timeout"}
    with pytest.raises(ValueError, match="preset"):
        ConcedingBargainer.preset("greedy")
    with pytest.raises(ValueError, match="floor"):
        ConcedingBargainer(start=0.2, floor=0.5)


# ----------------------------------------------------------------------------------------------- seat id
def test_bargain_seat_accepting_and_babbling_learners():
    env = gym.make("fst/Bargain-v0", seat="player_1", opponent="fair")
    total, info = run_seat(env, lambda obs: "accept", 0)  # the opponent proposes first, so there is an offer
    assert info["verdict"] == "correct" and total > 0.0 and "Deal" in info["feedback"]
    total, info = run_seat(env, lambda obs: "hmm", 0)
    assert (total, info["verdict"]) == (0.0, "timeout") and "No deal" in info["feedback"]


def test_bargain_knows_no_oracle():
    env = gym.make("fst/Bargain-v0")
    env.reset(seed=0)
    assert env.unwrapped.oracle_response() is None


def test_garbage_bargaining_earns_nothing_and_views_hide_the_other_side():
    env = gym.make("fst/Bargain-v0")
    for seed in range(40):
        rng = random.Random(seed)
        obs, _ = env.reset(seed=seed)
        game = env.unwrapped.game
        from fst_env.envs.bargain import _counts_text

        other = game.other("player_0")
        hidden = _counts_text(game.items, game.values[other])  # the other side's private valuation
        total, done = 0.0, False
        while not done:
            if game.values[other] != game.values["player_0"]:
                assert f"values {hidden}" not in obs and f"values: {hidden}" not in obs, obs
            assert "Your values" in obs
            obs, reward, term, trunc, info = env.step(uninformative_clue(rng, obs))
            total += reward
            done = term or trunc
        assert total == 0.0, (seed, info["feedback"])
