"""Helpers the text-game tests share: play a PettingZoo game or a single-seat episode, and hostile moves.

Not a test module (no ``test_`` prefix); the game tests import it from this folder.
"""

from __future__ import annotations

import random
import string

BAD_ACTIONS = ("", "   \n\t ", "x" * (1 << 20), "\ud800\udfff lone surrogates \ud800", "\x00\x1b[31m\x07",
               "猫 はどこ? Ünïcödé ✓", "propose", "accept accept accept " * 50)


def play_game(env, policies: dict, **reset_kwargs) -> dict:
    """Play one game to the end; returns each agent's final (return, verdict, feedback)."""
    env.reset(**reset_kwargs)
    totals = {a: 0.0 for a in env.possible_agents}
    final = {}
    for agent in env.agent_iter(1000):
        _, reward, term, trunc, info = env.last()
        totals[agent] += reward
        if term or trunc:
            final[agent] = (totals[agent], info["verdict"], info["feedback"])
            env.step(None)
        else:
            env.step(policies[agent](env.observe(agent)))
    return final


def run_seat(env, policy, seed) -> tuple[float, dict]:
    """Play one episode of a single-seat gym env with ``policy``; returns the total reward and the last info."""
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs, reward, term, trunc, info = env.step(policy(obs))
        total += reward
        done = term or trunc
    return total, info


def uninformative_clue(rng: random.Random, observation: str) -> str:
    """A move that carries no information about any secret: empty, garbage, off-topic or vacuous text."""
    kind = rng.randrange(5)
    if kind == 0:
        return ""
    if kind == 1:
        return "".join(rng.choice(string.ascii_letters + string.punctuation + " ") for _ in range(rng.randrange(1, 60)))
    if kind == 2:
        return rng.choice(["The weather is nice today.", "I like trains.", "Please guess well!", "42", "ok",
                           "Think of the category.", "You will know it when you see it."])
    if kind == 3:
        return "It is a word. It has letters. It is one of the candidates."
    return " ".join(rng.choice(["zq", "xv", "lorem", "ipsum", "###", "...", "0"]) for _ in range(8))
