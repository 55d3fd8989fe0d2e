"""Multi-agent text games on PettingZoo's AEC API: the base class every fst-env game derives from.

Contract (the multi-agent twin of :class:`fst_env.core.TextEnv`):
- every agent observes a ``str`` (its complete private view: rules, secrets, the transcript so far and the
  feedback on its last move) and acts with a ``str``; spaces are :class:`fst_env.core.TextSpace`;
- ``reset(seed, options={"problem_id": k})`` picks a problem like a single-agent env: the same seed or id gives
  the same game, and the same moves give the same rewards and feedback;
- after an agent moves, ``infos[agent]["feedback"]`` (non-empty, specific) and ``infos[agent]["verdict"]`` (one
  of :data:`fst_env.core.VERDICTS`) say what happened to that move; when the game ends every agent's info holds
  the final feedback and verdict;
- any ``str`` is a legal action: an unusable move wastes the turn with reward 0 and feedback, never raises; a
  non-``str`` action for a live agent is a caller bug (TypeError); a finished agent steps with ``None``.

Why a separate module: the base class is generic machinery like ``fst_env.core`` (the games themselves live in
``fst_env.envs.text_games``), and ``fst_env.wrappers.single_seat`` needs it without importing any task family.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from pettingzoo import AECEnv

from fst_env.core import DEFAULT_MAX_RESPONSE_CHARS, SPLITS, VERDICTS, Problem, TextSpace, Verdict

#: A policy for one seat: the seat's observation in, its move out (a scripted bot, an LLM wrapper, a human).
Policy = Callable[[str], str]


class TextObservation(str):
    """A ``str`` observation that also carries the NumPy dtype of a Text space.

    PettingZoo's ``api_test`` compares ``observation.dtype`` with ``observation_space(agent).dtype``, and a plain
    ``str`` has no ``dtype``; everything else treats this as the ``str`` it is.
    """

    __slots__ = ()
    dtype: ClassVar[np.dtype] = np.dtype(str)


@dataclass(frozen=True)
class MoveResult:
    """What one move did, as a game reports it to :class:`TextAECEnv`.

    ``feedback`` and ``verdicts`` are keyed by agent and must hold the agent that moved; entries for other
    agents update their infos too (a game uses this for the final result). ``rewards`` holds the reward each
    agent earned by this move (absent agents earn 0). ``game_over=True`` ends the game for every agent; a
    game that ends must give every agent a feedback and a verdict.
    """

    feedback: Mapping[str, str]
    verdicts: Mapping[str, Verdict | str]
    rewards: Mapping[str, float] = field(default_factory=dict)
    game_over: bool = False


class TextAECEnv(AECEnv[str, str, str]):
    """Base class for a turn-based text game between named agents, on PettingZoo's AEC API.

    Subclasses call ``super().__init__(agents, split, ...)`` and implement :meth:`num_problems`,
    :meth:`load_problem`, :meth:`start_game`, :meth:`view`, :meth:`play` and :meth:`wasted_move` (plus
    :meth:`transcript` for rendering and :meth:`next_agent` when turns do not simply rotate). The base class
    handles seeding, problem selection, type checks, oversized moves, exceptions raised by :meth:`play`, the
    reward and info bookkeeping PettingZoo expects, and removing finished agents.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "human"], "name": "text_aec_v0",
                                          "is_parallelizable": False, "render_fps": 1}

    def __init__(self, agents: Sequence[str], split: str = "train", *,
                 max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS, render_mode: str | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        if len(agents) < 1 or len(set(agents)) != len(agents) or not all(isinstance(a, str) for a in agents):
            raise ValueError(f"{name}: agents must be distinct str names, got {list(agents)!r}")
        if split not in SPLITS:
            raise ValueError(f"{name}: split must be one of {list(SPLITS)}, got {split!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"{name}: render_mode must be one of {self.metadata['render_modes']} or None, "
                             f"got {render_mode!r}")
        if max_response_chars < 1:
            raise ValueError(f"{name}: max_response_chars must be >= 1, got {max_response_chars}")
        self.possible_agents: list[str] = list(agents)
        self.split = split
        self.render_mode = render_mode
        self.max_response_chars = max_response_chars
        # One space object per agent, created once: PettingZoo requires observation_space(a) to be the same
        # object every call so that seeding a space sticks.
        self._observation_spaces = {a: TextSpace(max_length=1 << 20) for a in self.possible_agents}
        self._action_spaces = {a: TextSpace(max_length=1 << 24) for a in self.possible_agents}
        self._np_random: np.random.Generator | None = None
        self.np_random_seed: int | None = None
        self.problem: Problem | None = None
        self.problem_id: int | None = None
        self.moves = 0
        self.agents: list[str] = []
        self.rewards: dict[str, float] = {}
        self._cumulative_rewards: dict[str, float] = {}
        self.terminations: dict[str, bool] = {}
        self.truncations: dict[str, bool] = {}
        self.infos: dict[str, dict[str, Any]] = {}
        self.agent_selection: str = self.possible_agents[0]
        self._skip_agent_selection: str | None = None

    # ----------------------------------------------------------------- subclass hooks
    def num_problems(self) -> int:
        """How many problems the current split holds."""
        raise NotImplementedError

    def load_problem(self, problem_id: int) -> Problem:
        """Problem ``problem_id`` of the current split (deterministic)."""
        raise NotImplementedError

    def start_game(self, problem: Problem) -> None:
        """Set up the game state for a new game on ``problem``."""
        raise NotImplementedError

    def view(self, agent: str) -> str:
        """What ``agent`` sees now: rules, its private information, the transcript and its last feedback."""
        raise NotImplementedError

    def play(self, agent: str, action: str) -> MoveResult:
        """Apply ``agent``'s move (any str at most ``max_response_chars`` long). May raise; see wasted_move."""
        raise NotImplementedError

    def wasted_move(self, agent: str, verdict: Verdict, reason: str) -> MoveResult:
        """Record that ``agent`` used its turn on an unusable move (the same path the game uses for its own
        invalid moves): the base class calls this for oversized moves and when :meth:`play` raises."""
        raise NotImplementedError

    def oracle_move(self, agent: str) -> str | None:
        """A move for ``agent`` now that earns it the game's full reward, where the game knows one (None if not).

        Used by tests and benchmarks (like ``TextEnv.oracle_response``); never shown to the agents.
        """
        return None

    def transcript(self) -> str:
        """The public record of the game so far (what ``render`` shows)."""
        return f"{type(self).__name__}: problem {self.problem_id}, {self.moves} moves"

    def next_agent(self, agent: str) -> str:
        """Whose turn follows ``agent``'s move; turns rotate through ``possible_agents`` by default."""
        order = self.possible_agents
        return order[(order.index(agent) + 1) % len(order)]

    # ----------------------------------------------------------------- PettingZoo API
    @property
    def np_random(self) -> np.random.Generator:
        """The game's random generator (seeded by ``reset(seed=...)``, created on first use otherwise)."""
        if self._np_random is None:
            self._np_random, self.np_random_seed = seeding.np_random()
        return self._np_random

    def observation_space(self, agent: str) -> gym.spaces.Space:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> gym.spaces.Space:
        return self._action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        if seed is not None:
            self._np_random, self.np_random_seed = seeding.np_random(seed)
        options = dict(options or {})  # unknown keys are ignored, as Gymnasium envs do
        n = self.num_problems()
        if n <= 0:
            raise ValueError(f"{self._name()}: split {self.split!r} holds no problems")
        problem_id = options.get("problem_id")
        if problem_id is not None:
            if isinstance(problem_id, (bool, np.bool_)) or not isinstance(problem_id, (int, np.integer)):
                raise TypeError(f"{self._name()}: options['problem_id'] must be an int, "
                                f"got {type(problem_id).__name__}")
            if not 0 <= problem_id < n:
                raise ValueError(f"{self._name()}: problem_id must be in [0, {n}) for split {self.split!r}, "
                                 f"got {problem_id}")
            problem_id = int(problem_id)
        else:
            problem_id = int(self.np_random.integers(n))
        self.problem_id = problem_id
        self.problem = self.load_problem(problem_id)
        self.start_game(self.problem)
        self.moves = 0
        self.agents = list(self.possible_agents)
        self.rewards = {a: 0.0 for a in self.agents}
        self._cumulative_rewards = {a: 0.0 for a in self.agents}
        self.terminations = {a: False for a in self.agents}
        self.truncations = {a: False for a in self.agents}
        self.infos = {a: {"problem_id": problem_id, "split": self.split, "role": a} for a in self.agents}
        self.agent_selection = self.possible_agents[0]
        self._skip_agent_selection = None

    def observe(self, agent: str) -> TextObservation:
        if agent not in self._observation_spaces:
            raise KeyError(f"{self._name()}: unknown agent {agent!r}; agents are {self.possible_agents}")
        if self.problem is None:
            raise ResetNeeded(f"{self._name()}: call reset() before observe()")
        return TextObservation(self.view(agent))

    def step(self, action: str | None) -> None:
        if self.problem is None or not self.agents:
            raise ResetNeeded(f"{self._name()}: call reset() before step() (the game "
                              f"{'has ended' if self.problem is not None else 'has not started'})")
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)  # PettingZoo's removal of a finished agent; raises unless action is None
            return
        if not isinstance(action, str):
            raise TypeError(f"{self._name()}.step expects a str action (the move of {agent!r}), got "
                            f"{type(action).__name__}: {action!r:.80}")
        self._cumulative_rewards[agent] = 0.0
        result = self._safe_play(agent, action)
        self.moves += 1
        self.rewards = {a: 0.0 for a in self.agents}
        for a, reward in result.rewards.items():
            if a in self.rewards:
                self.rewards[a] += float(reward) if math.isfinite(reward) else 0.0
        touched = set(result.feedback) | set(result.verdicts) | {agent}
        if result.game_over:
            touched |= set(self.agents)
        for a in touched & set(self.agents):
            self._set_feedback(a, result.feedback.get(a), result.verdicts.get(a))
        if result.game_over:
            for a in self.agents:
                self.terminations[a] = True
        else:
            self.agent_selection = self.next_agent(agent)
        self._accumulate_rewards()
        if result.game_over:
            # Finished agents are removed one by one through dead steps; start with the one that would be next.
            self.agent_selection = self.next_agent(agent)

    def render(self) -> str | None:
        if self.render_mode is None:
            gym.logger.warn(f"{self._name()}: render() called without a render_mode; pass render_mode='ansi' "
                            "or 'human' to the constructor")
            return None
        text = self.transcript() if self.problem is not None else f"{self._name()}: not started"
        if self.render_mode == "ansi":
            return text
        print(text)
        return None

    def close(self) -> None:
        """Nothing to release: games are plain Python state."""

    # ----------------------------------------------------------------- helpers
    def _safe_play(self, agent: str, action: str) -> MoveResult:
        if len(action) > self.max_response_chars:
            return self.wasted_move(agent, Verdict.FORMAT_ERROR,
                                    f"Format error: the move has {len(action):,} characters, over this game's "
                                    f"limit of {self.max_response_chars:,}. Answer concisely.")
        try:
            return self.play(agent, action)
        except Exception as exc:  # a game bug must not crash a self-play run; the turn is lost instead
            return self.wasted_move(agent, Verdict.ERROR,
                                    f"Error: the game could not apply this move ({type(exc).__name__}: {exc}).")

    def _set_feedback(self, agent: str, feedback: str | None, verdict: Verdict | str | None) -> None:
        tag = verdict.value if isinstance(verdict, Verdict) else str(verdict) if verdict is not None else None
        if tag not in VERDICTS:
            tag = Verdict.ERROR.value
        text = (feedback or "").strip() or f"{tag}: the game gave no further detail."
        self.infos[agent].update(feedback=text, verdict=tag, turn=self.moves)

    def _name(self) -> str:
        return str(self.metadata.get("name", type(self).__name__))
