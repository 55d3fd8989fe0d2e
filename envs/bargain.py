"""The competitive bargaining game on PettingZoo's AEC API, its scripted player and its single-seat gym id.

:class:`BargainGame`: two players split a pool of items they value privately, by alternating offers under a
deadline. Each player's payoff is the worth of its share to it, in [0, 1]; no deal pays 0.

The scripted :class:`ConcedingBargainer` reads nothing but its observation, so either seat can be played by a
script, an LLM or a person. ``fst/Bargain-v0`` puts the learner in one seat (``player_0`` by default) against a
conceding preset through :class:`fst_env.wrappers.single_seat.SingleSeat`.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fst_env.cards import EnvCard, register_env
from fst_env.core import DEFAULT_MAX_RESPONSE_CHARS, Problem, Verdict
from fst_env.envs._games import SPLIT_SIZES, DrawnGame, fold, observation_line, printable, validate_split_sizes
from fst_env.multiagent import MoveResult, TextAECEnv
from fst_env.wrappers.single_seat import SingleSeat

ITEM_TYPES: tuple[str, ...] = ("book", "hat", "ball", "apple", "coin", "lamp", "pen", "cup", "shell", "key",
                               "card", "kite")


@dataclass
class BargainConfig:
    """Which bargaining games are drawn and their rules (the difficulty knobs of fst/Bargain-v0)."""

    num_item_types: int = 3
    max_count: int = 3
    total_value: int = 10
    max_turns: int = 6
    data_seed: int = 0
    split_sizes: dict[str, int] = field(default_factory=lambda: dict(SPLIT_SIZES))

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not 2 <= self.num_item_types <= len(ITEM_TYPES):
            raise ValueError(f"BargainConfig.num_item_types must be in [2, {len(ITEM_TYPES)}], "
                             f"got {self.num_item_types}")
        if not 1 <= self.max_count <= 9:
            raise ValueError(f"BargainConfig.max_count must be in [1, 9], got {self.max_count}")
        if not 4 <= self.total_value <= 100:
            raise ValueError(f"BargainConfig.total_value must be in [4, 100], got {self.total_value}")
        if not 2 <= self.max_turns <= 40:
            raise ValueError(f"BargainConfig.max_turns must be in [2, 40], got {self.max_turns}")
        validate_split_sizes("BargainConfig", self.split_sizes)


def _counts_text(items: list[str], counts: list[int] | tuple[int, ...]) -> str:
    return " ".join(f"{item}={n}" for item, n in zip(items, counts, strict=True))


class BargainGame(DrawnGame[BargainConfig]):
    """Competitive bargaining: two players split items they value privately by alternating offers.

    ``player_0`` moves first; there are at most ``max_turns`` moves. A move is the reply's last non-empty line:
    ``propose book=2 hat=0 ball=1`` (the counts the proposer keeps; the other player gets the rest) or
    ``accept`` (take the other player's standing offer, which ends the game with a deal). A player's payoff is
    the worth of its share under its own values divided by ``total_value`` (every player's values add up to
    ``total_value`` over all items), so payoffs lie in [0, 1]; no deal by the last move pays both 0. An
    unreadable move is a ``format_error`` and an impossible one (bad counts, unknown items, nothing to accept)
    is ``incorrect``: either way the turn is lost and the standing offer stays. A legal proposal is
    ``correct`` until the other player answers it with a proposal of its own, which rejects it: then its
    proposer gets ``incorrect`` and feedback naming the counter-offer. At the end both get ``correct`` (deal) or
    ``timeout`` (no deal).
    """

    metadata: ClassVar[dict[str, Any]] = {**TextAECEnv.metadata, "name": "bargain_v0"}
    roles = ("player_0", "player_1")
    config_class = BargainConfig

    # ----------------------------------------------------------------- problems
    def _generate(self, index: int) -> Problem:
        c = self.config
        rng = random.Random(index)
        for _ in range(2_000):
            items = rng.sample(ITEM_TYPES, c.num_item_types)
            counts = [rng.randint(1, c.max_count) for _ in items]
            values = [self._valuation(rng, counts) for _ in self.roles]
            # Rejection sampling: both valuations must exist and differ, or there is nothing to trade.
            if values[0] is not None and values[1] is not None and values[0] != values[1]:
                break
        else:
            raise RuntimeError(f"BargainGame: no valuation found for problem index {index} under {c}")
        valuations = dict(zip(self.roles, values, strict=True))
        prompt = (f"bargain | items: {_counts_text(items, counts)} | "
                  + " | ".join(f"{r} values: {_counts_text(items, v)}" for r, v in valuations.items()))
        return Problem(prompt=prompt, answer=None, metadata={"items": items, "counts": counts, "values": valuations})

    def _valuation(self, rng: random.Random, counts: list[int]) -> list[int] | None:
        total = self.config.total_value
        for _ in range(200):
            values = [rng.randint(0, total // n) for n in counts]
            if sum(v * n for v, n in zip(values, counts, strict=True)) == total and sum(v > 0 for v in values) >= 2:
                return values
        return None

    # ----------------------------------------------------------------- game
    def start_game(self, problem: Problem) -> None:
        self.items: list[str] = list(problem.metadata["items"])
        self.counts: list[int] = list(problem.metadata["counts"])
        self.values: dict[str, list[int]] = {r: list(v) for r, v in problem.metadata["values"].items()}
        self.offer: tuple[str, tuple[int, ...]] | None = None  # (proposer, counts the proposer keeps)
        self.log: list[str] = []
        self.feedback: dict[str, str] = {}
        self.outcome: str | None = None

    def other(self, agent: str) -> str:
        """The opponent of ``agent``."""
        return self.roles[1 - self.roles.index(agent)]

    def worth(self, agent: str, share: tuple[int, ...] | list[int]) -> int:
        """What ``share`` (counts per item) is worth to ``agent``."""
        return sum(v * n for v, n in zip(self.values[agent], share, strict=True))

    def play(self, agent: str, action: str) -> MoveResult:
        lines = [line for line in action.splitlines() if line.strip()]
        last = fold(lines[-1]) if lines else ""
        match = re.search(r"\b(accept|propose)\b", last)
        if match is None:
            return self.wasted_move(agent, Verdict.FORMAT_ERROR,
                                    f"Format error: the last line of your reply ({printable(last, 80)!r}) is "
                                    f"neither 'accept' nor 'propose {self._template()}'. Put exactly one move on "
                                    "the last line.")
        if match.group(1) == "accept":
            if self.offer is None:
                return self.wasted_move(agent, Verdict.INCORRECT, "Invalid move: there is no standing offer to "
                                        f"accept yet. Propose a split instead: propose {self._template()}.")
            if self.offer[0] == agent:
                return self.wasted_move(agent, Verdict.INCORRECT, "Invalid move: the standing offer is your own, "
                                        f"so only {self.other(agent)} can accept it. Propose again or wait.")
            return self._deal(agent)
        keep, problem = self._parse_offer(last[match.end():])
        if keep is None:
            return self.wasted_move(agent, Verdict.INCORRECT,
                                    f"Invalid offer {printable(last, 80)!r}: {problem}. Write the counts you keep "
                                    f"for every item, e.g. propose {self._template()}.")
        rejected = self.offer if self.offer is not None and self.offer[0] != agent else None
        self.offer = (agent, keep)
        rest = tuple(n - k for n, k in zip(self.counts, keep, strict=True))
        self.log.append(f"- Move {self.moves + 1}, {agent}: proposed to keep {_counts_text(self.items, keep)}, "
                        f"leaving {_counts_text(self.items, rest)} to {self.other(agent)}")
        feedback = (f"Offer recorded: you keep {_counts_text(self.items, keep)} (worth {self.worth(agent, keep)} "
                    f"of your {self.config.total_value} points) and {self.other(agent)} would get "
                    f"{_counts_text(self.items, rest)}.")
        if self.moves + 1 >= self.config.max_turns:
            return self._no_deal(agent, feedback + " But this was the last move, so nobody can "
                                 "accept it.")
        notes, verdicts = {agent: feedback}, {agent: Verdict.CORRECT}
        if rejected is not None:
            # Proposing instead of accepting rejects the standing offer; its proposer hears how.
            other = self.other(agent)
            notes[other] = (f"{agent} rejected your offer (you keep {_counts_text(self.items, rejected[1])}) and "
                            f"proposed that you get {_counts_text(self.items, rest)}, worth "
                            f"{self.worth(other, rest)} of your {self.config.total_value} points.")
            verdicts[other] = Verdict.INCORRECT
        self.feedback.update(notes)
        return MoveResult(notes, verdicts)

    def _parse_offer(self, text: str) -> tuple[tuple[int, ...] | None, str]:
        given: dict[str, int] = {}
        for name, number in re.findall(r"([^\W\d_]+)\s*[=:]\s*(\d+)", text):
            item = name if name in self.items else name[:-1] if name.endswith("s") and name[:-1] in self.items \
                else None
            if item is None:
                return None, f"there is no item {name!r} (items: {', '.join(self.items)})"
            if item in given:
                return None, f"{item!r} is given twice"
            given[item] = int(number)
        missing = [i for i in self.items if i not in given]
        if missing:
            return None, f"no count for {', '.join(missing)}"
        for item, n in zip(self.items, self.counts, strict=True):
            if given[item] > n:
                return None, f"you keep {given[item]} {item}, but there {'is' if n == 1 else 'are'} only {n}"
        return tuple(given[i] for i in self.items), ""

    def wasted_move(self, agent: str, verdict: Verdict, reason: str) -> MoveResult:
        self.log.append(f"- Move {self.moves + 1}, {agent}: invalid move, turn lost")
        if self.moves + 1 >= self.config.max_turns:
            return self._no_deal(agent, reason)
        self.feedback[agent] = reason
        return MoveResult({agent: reason}, {agent: verdict})

    def _deal(self, agent: str) -> MoveResult:
        proposer, keep = self.offer
        rest = tuple(n - k for n, k in zip(self.counts, keep, strict=True))
        shares = {proposer: keep, agent: rest}
        self.log.append(f"- Move {self.moves + 1}, {agent}: accepted")
        total = self.config.total_value
        rewards = {r: self.worth(r, shares[r]) / total for r in self.roles}
        self.outcome = (f"deal: {proposer} keeps {_counts_text(self.items, keep)}, {agent} gets "
                        f"{_counts_text(self.items, rest)}")
        feedback = {r: (f"Deal: {agent} accepted {proposer}'s offer. You get {_counts_text(self.items, shares[r])}, "
                        f"worth {self.worth(r, shares[r])} of your {total} points: reward {rewards[r]:.2f}.")
                    for r in self.roles}
        self.feedback.update(feedback)
        return MoveResult(feedback, dict.fromkeys(self.roles, Verdict.CORRECT), rewards, game_over=True)

    def _no_deal(self, agent: str, move_feedback: str) -> MoveResult:
        self.outcome = f"no deal after {self.config.max_turns} moves"
        end = f"No deal after {self.config.max_turns} moves: both players get reward 0."
        feedback = {r: end for r in self.roles}
        feedback[agent] = f"{move_feedback} {end}"
        self.feedback.update(feedback)
        return MoveResult(feedback, dict.fromkeys(self.roles, Verdict.TIMEOUT), dict.fromkeys(self.roles, 0.0),
                          game_over=True)

    def _template(self) -> str:
        return " ".join(f"{item}=<n>" for item in self.items)

    # ----------------------------------------------------------------- views
    def view(self, agent: str) -> str:
        c, other = self.config, self.other(agent)
        lines = [f"Game: bargain. Role: {agent}.",
                 f"You are {agent} in a two-player bargaining game against {other}. You split the items below by "
                 f"alternating moves ({self.roles[0]} moves first, at most {c.max_turns} moves in all). A deal "
                 "happens only when a player accepts the other's standing offer; with no deal by the last move, "
                 "both players get 0.",
                 f"Items: {_counts_text(self.items, self.counts)}",
                 f"Your values: {_counts_text(self.items, self.values[agent])} (all items together are worth "
                 f"{c.total_value} points to you; {other} values them differently and you cannot see how)",
                 f"Your reward is the worth of the items you get divided by {c.total_value}."]
        lines += ["Moves so far:", *self.log] if self.log else ["Moves so far: none."]
        if self.offer is None:
            lines.append("Standing offer: none")
        else:
            proposer, keep = self.offer
            mine = keep if proposer == agent else tuple(n - k for n, k in zip(self.counts, keep, strict=True))
            lines.append(f"Standing offer: from {proposer}: you get {_counts_text(self.items, mine)} (worth "
                         f"{self.worth(agent, mine)} points to you)")
        if agent in self.feedback:
            lines.append(f"Feedback on your last move: {self.feedback[agent]}")
        if self.outcome is not None:
            lines.append(f"The game is over: {self.outcome}.")
        elif self.agent_selection != agent:
            lines.append(f"Waiting for {other}.")
        else:
            lines += [f"Move {self.moves + 1} of {c.max_turns} is yours. End your reply with one line, either",
                      f"propose {self._template()}   (the numbers of each item YOU keep; {other} gets the rest)",
                      f"or\naccept   (take {other}'s standing offer)"]
        return "\n".join(lines)

    def transcript(self) -> str:
        head = (f"bargain: items {_counts_text(self.items, self.counts)}; "
                + "; ".join(f"{r} values {_counts_text(self.items, self.values[r])}" for r in self.roles))
        tail = [f"Result: {self.outcome}."] if self.outcome else []
        return "\n".join([head, *self.log, *tail])



# ============================================================================================== scripted player
def _pairs(text: str | None) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text or "")}


class ConcedingBargainer:
    """A bargaining bot that asks for ``start`` of its total value and concedes linearly to ``floor``.

    It accepts a standing offer worth at least its current target (on the last move, any offer worth more than
    nothing), and otherwise proposes to keep its most valuable items until the target is met, giving away
    everything it does not value. Presets: ``tough`` (0.9 -> 0.6), ``fair`` (0.7 -> 0.5), ``soft`` (0.6 -> 0.3).
    """

    PRESETS: ClassVar[dict[str, tuple[float, float]]] = {"tough": (0.9, 0.6), "fair": (0.7, 0.5),
                                                         "soft": (0.6, 0.3)}

    def __init__(self, start: float = 0.7, floor: float = 0.5) -> None:
        if not 0.0 <= floor <= start <= 1.0:
            raise ValueError(f"ConcedingBargainer needs 0 <= floor <= start <= 1, got start={start}, floor={floor}")
        self.start, self.floor = start, floor

    @classmethod
    def preset(cls, name: str) -> ConcedingBargainer:
        """One of :attr:`PRESETS` by name."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown bargainer preset {name!r}; choose from {list(cls.PRESETS)}")
        return cls(*cls.PRESETS[name])

    def __call__(self, observation: str) -> str:
        counts = _pairs(observation_line(observation, "Items: "))
        values = _pairs((observation_line(observation, "Your values: ") or "").split(" (")[0])
        move = re.search(r"^Move (\d+) of (\d+) is yours", observation, flags=re.M)
        if not counts or set(values) != set(counts):
            raise ValueError("ConcedingBargainer needs a bargain observation (with 'Items:' and 'Your values:' "
                             f"lines), got {printable(observation, 80)!r}")
        if move is None:
            return "accept"  # not its move (the game is over, as vector envs show before autoreset): any text does
        k, n = int(move.group(1)), int(move.group(2))
        total = sum(values[i] * counts[i] for i in counts)
        target = self.start + (self.floor - self.start) * ((k - 1) / max(n - 1, 1))
        offered = observation_line(observation, "Standing offer: from ")
        if offered is not None:
            proposer, _, rest = offered.partition(": you get ")
            if proposer and not observation.startswith(f"Game: bargain. Role: {proposer}."):
                got = _pairs(rest.split(" (")[0])
                worth = sum(values[i] * got.get(i, 0) for i in counts)
                if worth >= target * total or (k == n and worth > 0):
                    return "accept"
        keep = dict.fromkeys(counts, 0)
        need = math.ceil(target * total - 1e-9)
        have = 0
        for item in sorted(counts, key=lambda i: (-values[i], list(counts).index(i))):
            while values[item] > 0 and keep[item] < counts[item] and have < need:
                keep[item] += 1
                have += values[item]
        return "propose " + " ".join(f"{i}={keep[i]}" for i in counts)



# ============================================================================================== gym id
def bargain_env(split: str = "train", *, seat: str = "player_0", opponent: str = "fair",
                render_mode: str | None = None, max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS,
                **config: Any) -> SingleSeat:
    """fst/Bargain-v0: the learner holds ``seat``; a :class:`ConcedingBargainer` preset plays the other."""
    game = BargainGame(split=split, max_response_chars=max_response_chars, **config)
    if seat not in game.roles:
        raise ValueError(f"Bargain seat must be one of {game.roles}, got {seat!r}")
    other = game.other(seat)
    return SingleSeat(game, seat, {other: ConcedingBargainer.preset(opponent)}, render_mode=render_mode)



register_env(
    "fst/Bargain-v0", "fst_env.envs.bargain:bargain_env",
    EnvCard(summary="Two-player bargaining over items with private values and a deadline, against a scripted "
                    "conceding opponent; reward is the share's worth to you (0 without a deal).",
            feedback_kinds=("correct", "incorrect", "format_error", "timeout", "error"),
            difficulty_knobs={"opponent": "tough, fair (default) or soft", "seat": "player_0 (first) or player_1",
                              "max_turns": "moves before the deadline (default 6)",
                              "num_item_types": "kinds of items (default 3)", "max_count": "most of one item "
                              "(default 3)"},
            splits=dict(SPLIT_SIZES), data_source="procedural: item counts and valuations drawn per seed",
            licence="Apache-2.0 (fst-env)", turns="multi",
            notes="PettingZoo AEC game fst_env.envs.bargain.BargainGame seen from one seat (SingleSeat)."))
