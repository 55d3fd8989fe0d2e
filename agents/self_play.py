"""Self-play: one FSTAgent's policy plays every seat of a PettingZoo text game, and each seat's play is an Episode.

:func:`collect_self_play` plays ``games_per_deal`` games (G) of each deal (a deal is a game reset seed, so the G
games of a deal start from the same problem) with the agent's one policy in every seat. Each seat plays under
its own chat conversation: the agent's context as the system message, the seat's own observations
(``game.observe(seat)``: what the game shows that seat, never another seat's private view) as user turns and its
moves as assistant turns. ``infos[seat]["feedback"]`` is kept on the seat's turns for the learners and never put
into a prompt (a game's view may include hint-level text about the seat's last move; that is the game showing
it, as :class:`fst_env.wrappers.single_seat.SingleSeat` does). Each seat's trajectory becomes one
:class:`~fst_env.agents.episodes.Episode` with every turn's exact prompt ids, completion ids and sampler
log-probs, and the rewards the seat earned (what PettingZoo credits it after each move) on the turn they follow.

Group rule: the episodes of the same deal and the same seat form one group (G per seat and deal, group key
``"<game>/deal=<seed>/<seat>"``), so the advantage compares a seat's play with the same seat's play on the same
deal; seats are never normalised against each other (their rewards need not share a scale, and in a
competitive game one seat's gain is the other's loss).

Generation is batched: each round, every game's seat to move (all deals, all games, whatever seat it is)
answers in one ``backend.generate`` call. Training is the agent's ordinary ``agent.slow_step(episodes)``.

Fast rounds are not part of self-play: a fast round scores a context by playing the agent's ``env_id`` (one seat
against a scripted partner), which is not the self-play objective, and its problem keys are env ids, not deals.
So the collected episodes are not added to the agent's recent episodes; run self-play with the fast channel off.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fst_env.agents.episodes import Episode, Turn, turn_seed
from fst_env.backends.base import SamplingParams
from fst_env.multiagent import TextAECEnv

if TYPE_CHECKING:
    from fst_env.agents.fst_agent import FSTAgent

#: Makes one fresh game (all games of a collection must be the same game with the same config and split).
GameFactory = Callable[[], TextAECEnv]


def group_key(game_name: str, deal: int, seat: str) -> str:
    """The group of a seat's episode: one per (game, deal, seat)."""
    return f"{game_name}/deal={int(deal)}/{seat}"


@dataclass
class _Table:
    """One game being played: the game, its deal, and each seat's episode and not-yet-credited reward."""

    game: TextAECEnv
    deal: int
    seed: int | None
    episodes: dict[str, Episode]
    unpaid: dict[str, float] = field(default_factory=dict)  # reward earned before the seat's first move
    over: bool = False


def collect_self_play(agent: FSTAgent, make_game: GameFactory, deals: Sequence[int], *,
                      games_per_deal: int | None = None, sampling: SamplingParams | None = None,
                      seeds: Sequence[int] | None = None, count_budget: bool = True) -> list[Episode]:
    """Play ``games_per_deal`` (default ``agent.config.group_size``) games of every deal in ``deals`` with the
    agent's policy in every seat; returns one episode per (game, seat), ordered by deal, game, then seat as in
    ``possible_agents``.

    Each game is reset with ``seed=deal``; the games of one deal share one context drawn per game from the
    agent's population (``assign_group``, as ``FSTAgent.collect`` does), and both seats of a game play under
    the same context. ``sampling`` (default: ``agent.sampling()``, drawn once per generate call) sets the
    sampling parameters. ``seeds`` (one per game, deal-major) fixes the noise for evaluation: each row's seed is
    :func:`~fst_env.agents.episodes.turn_seed` of its game's seed and the seat's turn number (per-row seeds
    where the backend supports them; otherwise each call is seeded from the first game's seed and the round,
    which is deterministic for the same deals). The agent's episode limits apply per seat: a seat due to move
    after ``max_turns`` turns, or whose prompt is over ``max_context_tokens`` (never on its first turn), ends
    the whole game, every seat's episode ``truncated`` with ``info["stopped"]`` saying why. ``count_budget``
    adds the episodes to the agent's ``rl_samples`` / ``rl_turns`` / ``wall_time_s`` counters (off for
    evaluation).
    """
    c = agent.config
    g = int(c.group_size if games_per_deal is None else games_per_deal)
    if g < 1:
        raise ValueError(f"collect_self_play: games_per_deal must be >= 1, got {g}")
    deals = [int(d) for d in deals]
    if not deals:
        raise ValueError("collect_self_play: no deals")
    if seeds is not None and len(seeds) != g * len(deals):
        raise ValueError(f"collect_self_play: {len(seeds)} seeds for {g * len(deals)} games")
    start = time.perf_counter()
    tables: list[_Table] = []
    for deal in deals:
        contexts = agent.population.assign_group(g, agent.rng)
        for cid in contexts:
            game = make_game()
            if not isinstance(game, TextAECEnv):
                raise TypeError(f"collect_self_play: make_game must return a TextAECEnv, got {type(game).__name__}")
            game.reset(seed=deal)
            name = str(game.metadata.get("name", type(game).__name__))
            episodes = {seat: Episode(group=group_key(name, deal, seat), context_id=int(cid),
                                      context=dict(agent.population.context(cid)),
                                      info={"deal": deal, "seat": seat, "game": len(tables), "problem_id":
                                            game.problem_id, "split": game.split})
                        for seat in game.possible_agents}
            seed = None if seeds is None else int(seeds[len(tables)])
            tables.append(_Table(game, deal, seed, episodes, dict.fromkeys(game.possible_agents, 0.0)))
    tokenizer = agent.policy.tokenizer
    backend = agent.backend
    for round_index in range(10_000):
        movers: list[tuple[_Table, str, str, str]] = []  # (table, seat, observation, prompt)
        for table in tables:
            seat = _advance(table)
            if seat is None:
                continue
            episode = table.episodes[seat]
            observation = str(table.game.observe(seat))
            if len(episode.turns) >= c.max_turns:
                _truncate(table, "max_turns")
                continue
            prompt = backend.apply_chat_template(episode.messages(observation))
            if episode.turns and len(tokenizer(prompt, add_special_tokens=False).input_ids) > c.max_context_tokens:
                _truncate(table, "max_context")
                continue
            movers.append((table, seat, observation, prompt))
        if not movers:
            break
        params = sampling if sampling is not None else agent.sampling()
        if seeds is not None:
            if getattr(backend, "supports_row_seeds", False):
                params = dataclasses.replace(params, seed=None, row_seeds=tuple(
                    turn_seed(t.seed, len(t.episodes[s].turns)) for t, s, _, _ in movers))
            else:
                params = dataclasses.replace(params, seed=turn_seed(int(seeds[0]), round_index), row_seeds=None)
        generations = backend.generate([m[3] for m in movers], params)
        for (table, seat, observation, _), generation in zip(movers, generations, strict=True):
            episode = table.episodes[seat]
            episode.turns.append(Turn(observation=observation, completion=generation.text,
                                      prompt_ids=list(generation.prompt_ids),
                                      completion_ids=list(generation.completion_ids),
                                      old_logprobs=list(generation.logprobs),
                                      info={"deal": table.deal, "seat": seat}))
            if len(episode.turns) == 1:  # reward earned before the seat's first move arrives with it
                episode.turns[0].reward += table.unpaid.pop(seat, 0.0)
            table.game.step(generation.text)
            _credit(table)
            _note(table, seat)
    else:
        raise RuntimeError("collect_self_play: games did not end within 10,000 rounds")
    result = [e for t in tables for e in t.episodes.values()]
    if count_budget:
        agent.counters["rl_samples"] += len(result)
        agent.counters["rl_turns"] += sum(len(e.turns) for e in result)
        agent.counters["wall_time_s"] += time.perf_counter() - start
    return result


def _advance(table: _Table) -> str | None:
    """Remove finished seats (recording their end) until a live seat is to move; that seat, or None at the end."""
    game = table.game
    while game.agents and not table.over:
        seat = game.agent_selection
        _, _, terminated, truncated, _ = game.last(observe=False)
        if not (terminated or truncated):
            _note(table, seat)  # the seat's last move's feedback may have been updated by later moves
            return seat
        episode = table.episodes[seat]
        _note(table, seat)
        episode.terminated, episode.truncated = bool(terminated), bool(truncated)
        game.step(None)  # PettingZoo removes a finished seat with a None move
    table.over = True
    return None


def _credit(table: _Table) -> None:
    """Add what each seat earned by the last move to its last turn (or keep it for its first turn)."""
    for seat, reward in table.game.rewards.items():
        if not reward:
            continue
        turns = table.episodes[seat].turns
        if turns:
            turns[-1].reward += float(reward)
        else:
            table.unpaid[seat] = table.unpaid.get(seat, 0.0) + float(reward)


def _note(table: _Table, seat: str) -> None:
    """Copy the game's current feedback and verdict for ``seat`` onto its last turn (learners only)."""
    turns = table.episodes[seat].turns
    info = table.game.infos.get(seat, {})
    if turns and "feedback" in info:
        turns[-1].feedback = str(info["feedback"])
        turns[-1].verdict = str(info.get("verdict", ""))


def _truncate(table: _Table, why: str) -> None:
    """End a game at an episode limit: every seat's episode is truncated (the game cannot go on without it)."""
    for episode in table.episodes.values():
        episode.truncated = True
        episode.info["stopped"] = why
    table.over = True


def returns_by_seat(episodes: Sequence[Episode], rule: str = "sum") -> dict[str, float]:
    """Mean return per seat over self-play episodes (seat order as first seen)."""
    by_seat: dict[str, list[float]] = {}
    for episode in episodes:
        by_seat.setdefault(str(episode.info["seat"]), []).append(episode.episode_return(rule))
    return {seat: float(np.mean(values)) for seat, values in by_seat.items()}


def self_play_evaluate(agent: FSTAgent, make_game: GameFactory, deals: Sequence[int], *, samples: int = 2,
                       seed: int = 0, sampling: SamplingParams | None = None) -> dict[str, Any]:
    """Mean return per seat of the agent's current policy in self-play on fixed ``deals``, ``samples`` games each,
    with fixed sampling seeds (derived from ``seed``, the deal and the sample), so two calls with the same
    arguments compare policies on the same deals with the same noise. Counts no budget. Returns ``per_seat``
    (mean return), ``correct_frac`` per seat (last verdict ``correct``), ``n_games`` and ``deals``."""
    c = agent.config
    params = sampling if sampling is not None else SamplingParams(max_new_tokens=c.max_new_tokens,
                                                                  temperature=c.temperature, top_p=c.top_p)
    seeds = [turn_seed(seed * 1_000_003 + int(d), 1 + s) for d in deals for s in range(samples)]
    episodes = collect_self_play(agent, make_game, deals, games_per_deal=samples, sampling=params, seeds=seeds,
                                 count_budget=False)
    correct: dict[str, list[float]] = {}
    for episode in episodes:
        correct.setdefault(str(episode.info["seat"]), []).append(float(episode.verdict == "correct"))
    return {"per_seat": returns_by_seat(episodes, c.return_rule),
            "correct_frac": {s: float(np.mean(v)) for s, v in correct.items()},
            "n_games": len(deals) * samples, "deals": [int(d) for d in deals]}


__all__ = ["GameFactory", "collect_self_play", "group_key", "returns_by_seat", "self_play_evaluate"]
