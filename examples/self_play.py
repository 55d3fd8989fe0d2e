"""Self-play on fst-env's multi-agent text games: every seat is driven by the same policy, which can train.

Play mode (the default): the policy is any ``Callable[[str], str]`` from a seat's observation to its move. By
default it is the scripted player shipped with the games (it reads its role from the observation), so this runs
anywhere in a second; pass ``--policy package.module:function`` to plug in your own.

Train mode (``--train N``): one LLM agent (the embedded SmolLM2-135M-Instruct by default, ``--model tiny`` for a
random tiny model that only checks the plumbing) plays every seat of G games per deal
(:func:`fst_env.agents.self_play.collect_self_play`; a seat's episodes on one deal form one group) and takes N
slow steps (CISPO on LoRA) on those episodes, printing the mean return per seat of each update, then a before /
after comparison on fixed held-out deals (validation split, the same deals and sampling seeds both times). The
fast channel is off: a fast round would score contexts on one seat against a scripted partner, not on
self-play.

    python examples/self_play.py --game bargain --games 3
    python examples/self_play.py --game word_guess --games 2 --verbose
    python examples/self_play.py --game bargain --train 4              # embedded model: minutes per update
    python examples/self_play.py --game word_guess --train 2 --model tiny
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from functools import partial
from typing import Any

from fst_env.envs.text_games import BargainGame, WordGuessGame, scripted_player
from fst_env.multiagent import TextAECEnv

GAMES: dict[str, Callable[..., TextAECEnv]] = {"word_guess": WordGuessGame, "bargain": BargainGame}
#: The single-seat gym id the agent is registered on (only names its task; self-play never plays it).
GAME_IDS = {"word_guess": "fst/WordGuess-v0", "bargain": "fst/Bargain-v0"}


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


def _seat_line(values: dict[str, float]) -> str:
    return ", ".join(f"{seat} {value:.3f}" for seat, value in values.items())


def train(args: argparse.Namespace) -> dict[str, Any]:
    """``--train N``: N self-play updates of one agent in every seat, then the held-out before/after comparison."""
    from fst_env.agents.fst_agent import FSTConfig, RLAgent
    from fst_env.agents.self_play import collect_self_play, returns_by_seat, self_play_evaluate
    from fst_env.models import load_policy as load_model
    from fst_env.models import tiny_policy

    tiny = args.model == "tiny"
    policy = tiny_policy(args.seed) if tiny else load_model(args.model)
    # The tiny model reads bytes, so its prompts are long: a smaller context guard keeps it inside its positions.
    config = FSTConfig(group_size=args.games, groups_per_step=args.deals, max_new_tokens=16 if tiny else 48,
                       max_context_tokens=1536 if tiny else 2048, temperature=args.temperature, seed=args.seed)
    agent = RLAgent(policy, GAME_IDS[args.game], config)
    make_train, make_eval = partial(GAMES[args.game], split="train"), partial(GAMES[args.game], split="validation")
    held_out = list(range(args.eval_deals))
    before = self_play_evaluate(agent, make_eval, held_out, samples=args.eval_samples, seed=args.seed)
    history = []
    for update in range(1, args.train + 1):
        deals = [agent.rng.randrange(2**31) for _ in range(args.deals)]
        episodes = collect_self_play(agent, make_train, deals)
        metrics = agent.slow_step(episodes)
        per_seat = returns_by_seat(episodes, config.return_rule)
        history.append({"update": update, "per_seat": per_seat, **metrics})
        print(f"update {update}: mean return per seat {_seat_line(per_seat)}  ({len(episodes)} episodes, "
              f"{int(metrics['slow/n_pieces'])} turns trained, {int(metrics['slow/n_zero_variance_groups'])} of "
              f"{int(metrics['slow/n_groups'])} groups without reward variance)")
    after = self_play_evaluate(agent, make_eval, held_out, samples=args.eval_samples, seed=args.seed)
    n = before["n_games"]
    print(f"held-out self-play (validation deals {held_out}, {args.eval_samples} games each, n={n} games per seat, "
          "same deals and sampling seeds before and after):")
    print(f"  before: mean return per seat {_seat_line(before['per_seat'])}")
    print(f"  after:  mean return per seat {_seat_line(after['per_seat'])}")
    return {"history": history, "before": before, "after": after}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", choices=sorted(GAMES), default="bargain")
    parser.add_argument("--games", type=int, default=3, help="games to play (train mode: games per deal, G)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first game (then +1 per game)")
    parser.add_argument("--policy", default=None, help="module:callable used for every seat (default: scripted)")
    parser.add_argument("--verbose", action="store_true", help="print every move and its feedback")
    parser.add_argument("--train", type=int, default=0, metavar="N", help="train by self-play for N updates")
    parser.add_argument("--model", default="embedded", help="train mode: 'embedded', 'tiny' or a model path")
    parser.add_argument("--deals", type=int, default=2, help="train mode: deals per update")
    parser.add_argument("--temperature", type=float, default=1.0, help="train mode: sampling temperature")
    parser.add_argument("--eval-deals", type=int, default=4, help="train mode: held-out deals compared")
    parser.add_argument("--eval-samples", type=int, default=2, help="train mode: games per held-out deal")
    args = parser.parse_args(argv)
    if args.train < 0:
        parser.error(f"--train must be >= 0, got {args.train}")
    if args.train:
        if args.policy is not None:
            parser.error("--policy is for play mode; --train trains the --model")
        return train(args)

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
