"""Tests for envs/word_guess.py: the word-guess game's clue rules and play, its scripted players and seat ids."""

from __future__ import annotations

import math
import random

import gymnasium as gym
import pytest
from text_game_helpers import BAD_ACTIONS, play_game, run_seat, uninformative_clue

from fst_env.core import VERDICTS
from fst_env.envs.word_guess import (
    CATEGORIES,
    CLUE_TEMPLATES,
    ScriptedDescriber,
    ScriptedGuesser,
    WordGuessGame,
    feature_holds,
    leaked_piece,
    parse_features,
    word_features,
)


# ----------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("field, value", [("num_candidates", 1), ("num_candidates", 17), ("max_rounds", 0),
                                          ("min_leak_len", 1), ("max_clue_chars", 5), ("categories", ()),
                                          ("categories", ("planets",)), ("split_sizes", {"train": 5})])
def test_word_guess_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        WordGuessGame(**{field: value})


# ----------------------------------------------------------------------------------------------- clue rules
@pytest.mark.parametrize("clue, secret, leaks", [
    ("A long yellow fruit.", "banana", False),
    ("It is a BANANA.", "banana", True),
    ("Bánánas are great", "banana", True),           # accents and case are ignored
    ("It rhymes with nana", "banana", True),          # a 4-letter run of the word
    ("b a n a n a", "banana", True),                  # spelled out
    ("B - A - N - A - N - A!", "banana", True),
    ("a b c and a n a", "banana", False),
    ("ban-ana", "banana", True),                      # punctuation inside a word
    ("ban\u200bana", "banana", True),                 # zero-width space inside a word
    ("It has letters", "otter", True),                # 'tter' hides inside 'letters'
    ("A pod of green peas", "pea", True),             # short words: the whole word, even inside another
    ("keep a secret", "pea", False),                  # but not across separate words
    ("\ud800 \x00", "banana", False),
])
def test_leaked_piece(clue, secret, leaks):
    assert (leaked_piece(clue, secret, 4) is not None) is leaks


def test_every_clue_template_parses_back_to_its_feature():
    for word in (w for words in CATEGORIES.values() for w in words):
        for feature in word_features(word):
            assert feature_holds(word, feature)
            for template in CLUE_TEMPLATES[feature[0]]:
                assert parse_features(template.format(feature[1])) == [feature], template.format(feature[1])


def test_parse_features_reads_free_phrasings_and_ignores_others():
    assert set(parse_features("It's a five-letter word that begins with B and doesn't contain 'e'.")) == {
        ("length", 5), ("first", "b"), ("lacks", "e")}
    assert parse_features("Monkeys love it; it ends with an A and has 3 vowels") == [("last", "a"), ("vowels", 3)]
    assert parse_features("A yellow fruit, sweet and soft.") == []


# ----------------------------------------------------------------------------------------------- word game play
def test_strong_describer_and_scripted_guesser_always_win_and_never_leak():
    env = WordGuessGame()
    for pid in range(60):
        final = play_game(env, {"describer": ScriptedDescriber("strong"), "guesser": ScriptedGuesser()},
                          options={"problem_id": pid})
        assert final["guesser"][:2] == (1.0, "correct") and final["describer"][:2] == (1.0, "correct")
        assert "Both players get reward 1" in final["guesser"][2]
        assert "withheld" not in env.transcript()  # no clue of the scripted describer broke the rules


def test_weak_describer_never_wins_by_luck_and_loses_with_incorrect_verdicts():
    # The weak describer only names the category: no information, so the scripted guesser never guesses.
    env = WordGuessGame()
    results = [play_game(env, {"describer": ScriptedDescriber("weak"), "guesser": ScriptedGuesser()},
                         options={"problem_id": pid}) for pid in range(60)]
    for r in results:
        assert r["guesser"][0] == r["describer"][0] == 0.0
        assert r["guesser"][1] == r["describer"][1] == "incorrect"
        assert "the secret word was" in r["guesser"][2] and "did not find" in r["describer"][2]


def test_leaking_clue_is_withheld_with_feedback():
    env = WordGuessGame()
    env.reset(seed=3)
    secret = env.secret
    env.step(f"It sounds like {secret.upper()}S")
    info = env.infos["describer"]
    assert info["verdict"] == "incorrect" and "Clue rejected" in info["feedback"] and secret in info["feedback"]
    guesser_view = env.observe("guesser")
    assert "withheld" in guesser_view and secret.upper() not in guesser_view
    env.step(secret)  # the guesser still gets its turn and can win
    assert env.terminations["guesser"] and env.rewards == {"describer": 1.0, "guesser": 1.0}


def test_a_wrong_guess_tells_the_describer_what_its_clue_led_to():
    env = WordGuessGame()
    env.reset(seed=8)
    env.step("It is one of them.")
    assert env.infos["describer"]["verdict"] == "correct"  # accepted, result still open
    wrong = next(w for w in env.candidates if w != env.secret)
    env.step(wrong)
    info = env.infos["describer"]
    assert info["verdict"] == "incorrect" and f"the guesser guessed {wrong!r}, which is wrong" in info["feedback"]
    env.step(f"It sounds like {env.secret}")  # a leaking clue keeps its own verdict and reason
    env.step(wrong)
    info = env.infos["describer"]
    assert info["verdict"] == "incorrect" and "Clue rejected" in info["feedback"] and "Then" in info["feedback"]


def test_guess_parsing_takes_the_last_candidate_word():
    env = WordGuessGame()
    env.reset(seed=4)
    env.step("It is one of them.")
    wrong = next(w for w in env.candidates if w != env.secret)
    env.step(f"Not {env.secret}, I think it is {wrong}.")
    assert env.infos["guesser"]["verdict"] == "incorrect" and repr(wrong) in env.infos["guesser"]["feedback"]
    env.step("Still thinking.")
    env.step(f"My guess: **{env.secret.upper()}**")
    assert env.infos["guesser"]["verdict"] == "correct"


@pytest.mark.parametrize("action", BAD_ACTIONS)
def test_bad_text_in_either_word_seat_is_handled(action):
    env = WordGuessGame(max_rounds=1)
    env.reset(seed=5)
    env.step(action)
    d = env.infos["describer"]
    assert d["verdict"] in {"correct", "incorrect", "format_error"} and d["feedback"].strip()
    env.step(action)  # the guesser's only round: the game ends
    for agent in env.possible_agents:
        info = env.infos[agent]
        assert env.terminations[agent] and env.rewards[agent] == 0.0
        assert info["verdict"] == "incorrect" and info["feedback"].strip()
        info["feedback"].encode("utf-8")  # echoed text is escaped: no lone surrogates reach the feedback


def test_oversized_move_is_a_format_error_that_costs_the_turn():
    env = WordGuessGame(max_rounds=2)
    env.reset(seed=6)
    env.step("x" * (env.max_response_chars + 1))
    assert env.infos["describer"]["verdict"] == "format_error"
    assert "characters" in env.infos["describer"]["feedback"] and env.agent_selection == "guesser"



# ----------------------------------------------------------------------------------------------- seat ids
def test_word_guess_seat_with_strong_and_weak_describers():
    strong = gym.make("fst/WordGuess-v0", describer="strong")
    weak = gym.make("fst/WordGuess-v0", describer="weak")
    guesser = ScriptedGuesser()
    for seed in range(20):
        total, info = run_seat(strong, guesser, seed)
        assert (total, info["verdict"]) == (1.0, "correct") and "Correct" in info["feedback"]
    weak_results = [run_seat(weak, guesser, s) for s in range(20)]
    assert any(total == 0.0 and info["verdict"] == "incorrect" for total, info in weak_results)


def test_word_describe_seat_rewards_informative_clues():
    env = gym.make("fst/WordDescribe-v0")
    for seed in range(10):
        total, info = run_seat(env, ScriptedDescriber("strong"), seed)
        assert (total, info["verdict"]) == (1.0, "correct")
    vague = [run_seat(env, lambda obs: "It is something you might know.", s) for s in range(20)]
    assert any(total == 0.0 and info["verdict"] == "incorrect" for total, info in vague)


@pytest.mark.parametrize("env_id", ["fst/WordGuess-v0", "fst/WordDescribe-v0"])
def test_oracle_move_wins_in_one_step(env_id):
    env = gym.make(env_id, show_candidates=False)
    for seed in range(15):
        env.reset(seed=seed)
        oracle = env.unwrapped.oracle_response()
        _, reward, terminated, _, info = env.step(oracle)
        assert (reward, terminated, info["verdict"]) == (1.0, True, "correct"), info["feedback"]
        assert env.unwrapped.oracle_response() is None  # nothing to play between episodes


# ------------------------------------------------------------------------------------ no reward without information
def _binomial_upper(n: int, p: float, alpha: float = 1e-3) -> int:
    """The smallest k with P(Binomial(n, p) >= k) <= alpha: more wins than this are not chance."""
    tail = 1.0
    for k in range(n + 1):
        if tail <= alpha:
            return k
        tail -= math.comb(n, k) * p ** k * (1 - p) ** (n - k)
    return n + 1



class _EagerGuesser:
    """The old guesser: guesses the candidates in turn whatever the clues say (the free reward the fix removes)."""

    def __call__(self, observation: str) -> str:
        from fst_env.envs.word_guess import _word_state

        _, candidates, clues, guesses = _word_state(observation)
        known = [f for clue in clues for f in parse_features(clue)]
        fresh = [w for w in candidates if w not in guesses] or candidates
        fitting = [w for w in fresh if all(feature_holds(w, f) for f in known)]
        return (fitting or fresh)[0]


def test_uninformative_clues_win_no_more_than_chance_says():
    n = 240
    env = gym.make("fst/WordDescribe-v0")
    num_candidates = env.unwrapped.game.config.num_candidates
    bound = _binomial_upper(n, 1 / num_candidates)
    wins = 0
    for seed in range(n):
        rng = random.Random(seed)
        total, info = run_seat(env, lambda obs, rng=rng: uninformative_clue(rng, obs), seed)
        wins += total > 0
        assert info["verdict"] in VERDICTS
    # The documented rate is 0 (the guesser does not guess without evidence); far below chance over candidates.
    assert wins == 0 and wins < bound
    # The same statistic catches a guesser that guesses without evidence: it wins ~max_rounds/num_candidates.
    game = WordGuessGame()
    eager_wins = 0
    for pid in range(n):
        rng = random.Random(pid)
        final = play_game(game, {"describer": lambda obs, rng=rng: uninformative_clue(rng, obs),
                                 "guesser": _EagerGuesser()}, options={"problem_id": pid})
        eager_wins += final["describer"][0] > 0
    assert eager_wins >= bound, (eager_wins, bound)


def test_a_true_but_useless_feature_gets_no_guess():
    game = WordGuessGame()
    game.reset(options={"problem_id": 5})
    shared = [f for f in word_features(game.candidates[0]) if all(feature_holds(w, f) for w in game.candidates)]
    clue = {"lacks": "It does not contain the letter '{}'."}
    useless = [clue[k].format(v) for k, v in shared if k in clue]
    if not useless:
        pytest.skip("the candidates share no missing letter here")
    final = play_game(game, {"describer": lambda obs: useless[0], "guesser": ScriptedGuesser()},
                      options={"problem_id": 5})
    assert final["describer"][0] == 0.0 and "guesses: none" in final["describer"][2]


def test_guesser_views_never_state_the_secret_before_the_end():
    env = gym.make("fst/WordGuess-v0", describer="weak")
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            assert "secret word was" not in obs and "Secret word:" not in obs
            obs, _, term, trunc, _ = env.step("zzzz")
            done = term or trunc


def test_seat_envs_give_a_hint_that_never_names_the_secret_at_the_end():
    env = gym.make("fst/WordGuess-v0", describer="weak")
    for seed in range(10):
        env.reset(seed=seed)
        secret = env.unwrapped.game.secret
        done = False
        while not done:
            obs, _, term, trunc, info = env.step("zzzz")
            done = term or trunc
            assert info["hint"].strip()
            if done:
                assert secret in info["feedback"] and secret not in info["hint"]
            else:
                assert info["hint"] == info["feedback"] and info["feedback"] in obs
