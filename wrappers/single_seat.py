"""SingleSeat: one seat of a PettingZoo AEC text game as a single-agent Gymnasium env."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
from gymnasium.error import ResetNeeded
from pettingzoo import AECEnv

from fst_env.core import VERDICTS, Verdict, default_hint
from fst_env.multiagent import Policy


class SingleSeat(gym.Env[str, str]):
    """Turns one seat of a multi-agent text game into a ``gymnasium.Env``; the other seats play fixed policies.

    ``SingleSeat(game, seat="guesser", others={"describer": policy})``: ``game`` is a PettingZoo ``AECEnv`` with
    text spaces (a :class:`fst_env.multiagent.TextAECEnv` gives feedback and verdicts), ``others`` maps every
    other seat to a ``Callable[[str], str]`` from its observation to its move. Contract:

    - ``reset(seed, options)`` resets the game (``options`` such as ``{"problem_id": k}`` pass through), plays
      the other seats until it is ``seat``'s turn and returns ``seat``'s observation. The same seed gives the
      same game; without a seed, the game seed is drawn from this env's generator.
    - ``step(action)`` plays ``seat``'s move, then the other seats until ``seat`` moves again or the game ends.
      The reward is everything ``seat`` earned since its previous move (PettingZoo's cumulative reward), so the
      rewards of one episode add up to the seat's return; rewards earned before its first move arrive with its
      first step. ``info["feedback"]`` and ``info["verdict"]`` are always present: the game's feedback on this
      move, or on the final result when the game ended.
    - A non-``str`` action raises TypeError; a policy that returns a non-``str`` raises TypeError naming its seat.
    - If the game ends before ``seat``'s first move, ``reset`` returns the final view and the next ``step``
      (whatever its action) ends the episode with that result.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "human"], "render_fps": 1}

    #: Moves the other seats may make in a row before the wrapper declares the game stuck.
    max_partner_moves: int = 10_000

    def __init__(self, game: AECEnv, seat: str, others: Mapping[str, Policy], *,
                 render_mode: str | None = None) -> None:
        if not isinstance(game, AECEnv):
            raise TypeError(f"SingleSeat wraps a pettingzoo.AECEnv, got {type(game).__name__}")
        seats = list(getattr(game, "possible_agents", []))
        if seat not in seats:
            raise ValueError(f"SingleSeat: seat {seat!r} is not an agent of {game}; its agents are {seats}")
        missing = [a for a in seats if a != seat and a not in others]
        unknown = [a for a in others if a not in seats or a == seat]
        if missing or unknown:
            expected = [a for a in seats if a != seat]
            raise ValueError(f"SingleSeat: `others` must give a policy for exactly the seats {expected} of {game}; "
                             f"missing {missing}, not expected {unknown}")
        for agent, policy in others.items():
            if not callable(policy):
                raise TypeError(f"SingleSeat: the policy for seat {agent!r} must be callable (observation -> move), "
                                f"got {type(policy).__name__}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"SingleSeat: render_mode must be one of {self.metadata['render_modes']} or None, "
                             f"got {render_mode!r}")
        self.game = game
        self.seat = seat
        self.others = dict(others)
        self.render_mode = render_mode
        self.observation_space = game.observation_space(seat)
        self.action_space = game.action_space(seat)
        self._needs_reset = True
        self._ended_before_turn = False
        self._earned = 0.0  # reward of the seat not yet delivered by a step
        self._final: tuple[str, dict[str, Any], bool, bool] | None = None
        self._last_text = ""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        # A given seed goes to the game unchanged, so SingleSeat and the bare game agree on what a seed means.
        game_seed = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
        self.game.reset(seed=game_seed, options=options)
        self._earned = 0.0
        self._final = None
        observation, info, over = self._play_others()
        self._needs_reset = False
        self._ended_before_turn = over
        self._last_text = observation
        return observation, {k: v for k, v in info.items() if k not in ("feedback", "verdict")}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if not isinstance(action, str):
            raise TypeError(f"{self._name()}.step expects a str action (the model's text), got "
                            f"{type(action).__name__}: {action!r:.80}")
        if self._needs_reset:
            raise ResetNeeded(f"{self._name()}: call reset() before step() (the episode has "
                              f"{'ended' if self._final is not None else 'not started'})")
        if self._ended_before_turn:
            observation, info, terminated, truncated = self._final
            info = dict(info)
            info["feedback"] = ("The game ended before your turn, so this move was not played. "
                                + str(info.get("feedback", "")))
        else:
            self.game.step(action)
            self._earned += self._seat_reward()
            observation, info, over = self._play_others()
            terminated, truncated = (self._final[2], self._final[3]) if over else (False, False)
        reward, self._earned = self._earned, 0.0
        info = self._with_feedback(info, reward, terminated or truncated)
        self._needs_reset = terminated or truncated
        self._last_text = observation
        return observation, reward, terminated, truncated, info

    def num_problems(self) -> int:
        """Problems in the game's split (as ``TextEnv.num_problems``), so trainers can draw problem ids for a seat."""
        return int(self.game.num_problems())

    def oracle_response(self) -> str | None:
        """The game's full-reward move for ``seat`` now, where the game knows one (None if not, or between episodes).

        Mirrors ``TextEnv.oracle_response`` so registry-wide tests and benchmarks treat seat envs alike.
        """
        oracle = getattr(self.game, "oracle_move", None)
        if self._needs_reset or self._ended_before_turn or oracle is None:
            return None
        return oracle(self.seat)

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._last_text
        if self.render_mode == "human":
            print(self._last_text)
        return None

    def close(self) -> None:
        self.game.close()

    # ----------------------------------------------------------------- helpers
    def _play_others(self) -> tuple[str, dict[str, Any], bool]:
        """Run the other seats until ``seat`` is to move (``over=False``) or has finished (``over=True``)."""
        for _ in range(self.max_partner_moves):
            agent = self.game.agent_selection
            if agent == self.seat:
                observation, _, terminated, truncated, info = self.game.last()
                observation, info = str(observation), dict(info)  # plain str for Gymnasium code
                if terminated or truncated:
                    self._final = (observation, info, bool(terminated), bool(truncated))
                    self.game.step(None)  # PettingZoo removes a finished agent through a None step
                    return observation, info, True
                return observation, info, False
            _, _, terminated, truncated, _ = self.game.last(observe=False)
            if terminated or truncated:
                self.game.step(None)
            else:
                move = self.others[agent](self.game.observe(agent))
                if not isinstance(move, str):
                    raise TypeError(f"{self._name()}: the policy for seat {agent!r} returned "
                                    f"{type(move).__name__}, expected the move as a str")
                self.game.step(move)
            self._earned += self._seat_reward()
        raise RuntimeError(f"{self._name()}: the other seats made {self.max_partner_moves} moves in a row without "
                           f"giving {self.seat!r} a turn or ending the game")

    def _seat_reward(self) -> float:
        return float(self.game.rewards.get(self.seat, 0.0))

    def _with_feedback(self, info: dict[str, Any], reward: float, done: bool) -> dict[str, Any]:
        # A TextAECEnv always supplies both; other AEC games get a plain account so the contract still holds.
        info = dict(info)
        info["seat"] = self.seat
        if info.get("verdict") not in VERDICTS:
            info["verdict"] = (Verdict.CORRECT if reward > 0 else Verdict.INCORRECT).value
        if not str(info.get("feedback", "")).strip():
            info["feedback"] = (f"The game gave no feedback; seat {self.seat!r} earned reward {reward:g} "
                                f"{'and the game is over' if done else 'since its previous move'}.")
        if not str(info.get("hint", "")).strip():
            # Mid-game feedback is already part of the seat's next observation, so it is the hint; the final
            # feedback may name what was hidden (the secret word, the other side's values): the end gets the
            # verdict's generic hint.
            info["hint"] = default_hint(info["verdict"]) if done else info["feedback"]
        return info

    def _name(self) -> str:
        spec = getattr(self, "spec", None)
        return spec.id if spec is not None else f"SingleSeat({self.game}, seat={self.seat!r})"
