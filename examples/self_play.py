"""Self-play on fst-env's multi-agent text games: every seat is driven by the same policy callable.

The policy is any ``Callable[[str], str]`` from a seat's observation to its move. By default it is the scripted
player shipped with the games (it reads its role from the observation), so this runs anywhere in a second; pass
``--policy package.module:function`` to plug in your own (an LLM wrapper, for example
``lambda obs: agent.act([obs])[0]``).

    python examples/self_play.py --game bargain --games 3
    python examples/self_play.py --game word_guess --games 2 --verbose
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from fst_env.envs.text_games import BargainGame, WordGuessGame, scripted_player
from fst_env.multiagent import TextAECEnv

GAMES: dict[str, Callable[[], TextAECEnv]] = {"word_guess": WordGuessGame, "bargain": BargainGame}


def load_policy(spec: str | None) -> Callable[[str], str]:
    """The scripted player, or the callable named by ``module:attribute``."""
    if spec is None:
        return scripted_player
    module, _, attribute = spec.partition(":")
    policy = getattr(importlib.import_module(module), attribute)
    if not callable(policy):
        raise TypeError(f"--policy {spec} is not callable")
    return policy


def self_play(game: TextAECEnv, policy: Callable[[str], str], seed: int, verbose: bool = False) -> dict[str, float]:
    """Play one game with ``policy`` in every seat (PettingZoo's AEC loop); returns each seat's return."""
    game.reset(seed=seed)
    returns = dict.fromkeys(game.possible_agents, 0.0)
    for agent in game.agent_iter():
        observation, reward, terminated, truncated, info = game.last()
        returns[agent] += reward  # last() gives what the seat earned since its previous move
        if terminated or truncated:
            print(f"  {agent:<10} return {returns[agent]:.2f}  [{info['verdict']}] {info['feedback']}")
            game.step(None)  # a finished seat leaves the game with a None move
            continue
        move = policy(observation)
        game.step(move)
        if verbose:
            print(f"  {agent} -> {move!r}\n    [{game.infos[agent]['verdict']}] {game.infos[agent]['feedback']}")
    return returns


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", choices=sorted(GAMES), default="bargain")
    parser.add_argument("--games", type=int, default=3, help="how many games to play")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first game (then +1 per game)")
    parser.add_argument("--policy", default=None, help="module:callable used for every seat (default: scripted)")
    parser.add_argument("--verbose", action="store_true", help="print every move and its feedback")
    args = parser.parse_args(argv)

    policy = load_policy(args.policy)
    game = GAMES[args.game](render_mode="ansi")
    totals = dict.fromkeys(game.possible_agents, 0.0)
    for i in range(args.games):
        print(f"game {i + 1} (seed {args.seed + i})")
        for agent, value in self_play(game, policy, args.seed + i, args.verbose).items():
            totals[agent] += value
        print("  " + game.render().replace("\n", "\n  "))
    means = {agent: total / max(args.games, 1) for agent, total in totals.items()}
    print("mean return per seat: " + ", ".join(f"{a} {m:.2f}" for a, m in means.items()))
    return means


if __name__ == "__main__":
    main()
