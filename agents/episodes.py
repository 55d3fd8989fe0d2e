"""Episodes: what the agent learns from is a whole episode of turns, not one completion.

An :class:`Episode` is one context's play of one problem: a list of :class:`Turn` (what the policy was shown,
what it wrote, with the exact token ids and sampler log-probs, and what the env said) that ends ``terminated``
(the env ended it) or ``truncated`` (the env's own limit, or one of :class:`EpisodeLimits`). A single-turn task
gives one-turn episodes; nothing downstream has a second path for them.

:class:`EpisodeRunner` plays many episodes at once on plain ``gym.make`` envs (no vector-env autoreset): each
turn it formats every still-active conversation with the chat template (context as the system message,
observations as user turns, completions as assistant turns), generates for all of them in one batched call and
steps each env with its completion. The next observation is the env's step observation (``next_observation``
of a multi-turn task, the retry prompt of ``MultiTurnRetry``, the seat's view in ``SingleSeat``), which holds
hint-level text only; ``info["feedback"]`` is kept on the turn for the learners and never shown to the policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from fst_env.agents.rollout import Rollout
from fst_env.context import Context, render_context

#: How an episode's per-turn rewards become the one return its advantage is computed from.
RETURN_RULES: tuple[str, ...] = ("sum", "last")


def turn_seed(seed: int, turn: int) -> int:
    """The sampling seed of turn ``turn`` (0-based) of an episode whose seed is ``seed``: ``seed`` itself for the
    first turn (a one-turn episode samples exactly as one call with that seed would), then a stable hash of
    (seed, turn) in ``[0, 2**31)`` (blake2b, not Python's salted ``hash``)."""
    if turn == 0:
        return int(seed)
    digest = hashlib.blake2b(f"fst-turn|{seed}|{turn}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**31


def task_name(env_id: str, env_kwargs: Mapping[str, Any]) -> str:
    """A stable name for an env made with these kwargs (as the loop's ``Stage.task``)."""
    if not env_kwargs:
        return env_id
    return env_id + "[" + ",".join(f"{k}={v}" for k, v in sorted(env_kwargs.items())) + "]"


def eval_seed(seed: int, task: str, split: str, problem_id: int, sample: int) -> int:
    """The sampling seed of held-out sample ``sample`` of ``problem_id``: a hash of (config seed, task, split,
    problem, sample), stable across processes (blake2b, not Python's salted ``hash``), in ``[0, 2**31)``."""
    digest = hashlib.blake2b(f"fst-eval|{seed}|{task}|{split}|{problem_id}|{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**31


def info_at(infos: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None, i: int) -> Mapping[str, Any]:
    """Row ``i`` of a vector env's dict-of-arrays infos, or of a list of per-env info dicts."""
    if infos is None:
        return {}
    if isinstance(infos, Mapping):
        return {k: v[i] for k, v in infos.items()
                if not k.startswith("_") and isinstance(v, (np.ndarray, list, tuple)) and len(v) > i
                and bool(infos.get(f"_{k}", np.ones(i + 1, dtype=bool))[i])}
    return infos[i]


@dataclass
class Turn:
    """One move of an episode: the observation shown, the completion sampled, and the env's answer to it.

    ``prompt_ids`` are the exact token ids the sampler conditioned on (the whole conversation so far, chat
    formatted), ``completion_ids`` the ids it sampled and ``old_logprobs`` its log-probs of them: the slow
    learner trains on exactly these. ``feedback`` is for the learners; ``hint`` is what the policy may see.
    """

    observation: str
    completion: str
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    old_logprobs: list[float] = field(default_factory=list)
    reward: float = 0.0
    feedback: str = ""
    verdict: str = ""
    hint: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Episode:
    """One context's episode on one problem; episodes sharing ``group`` (the problem key) form a GRPO group.

    ``info["stopped"]`` says which :class:`EpisodeLimits` guard truncated it (``"max_turns"`` or
    ``"max_context"``), when one did.
    """

    group: str
    context_id: int
    context: Context
    turns: list[Turn] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def problem(self) -> str:
        """The first observation: the problem as posed."""
        return self.turns[0].observation if self.turns else ""

    @property
    def done(self) -> bool:
        """True once the episode ended (terminated or truncated)."""
        return self.terminated or self.truncated

    @property
    def verdict(self) -> str:
        """The last turn's verdict (the episode's outcome)."""
        return self.turns[-1].verdict if self.turns else ""

    def episode_return(self, rule: str = "sum") -> float:
        """The return the advantage is computed from: ``"sum"`` of the per-turn rewards, or the ``"last"`` one."""
        if rule not in RETURN_RULES:
            raise ValueError(f"Episode.episode_return: rule must be one of {list(RETURN_RULES)}, got {rule!r}")
        rewards = [t.reward for t in self.turns]
        if not rewards:
            return 0.0
        return float(sum(rewards)) if rule == "sum" else float(rewards[-1])

    def messages(self, next_observation: str | None = None) -> list[dict[str, str]]:
        """The conversation as chat messages: context as system, observations as user, completions as assistant;
        ``next_observation`` (the observation the policy is about to answer) ends it as a user turn."""
        system = render_context(self.context)
        messages = [{"role": "system", "content": system}] if system else []
        for turn in self.turns:
            messages += [{"role": "user", "content": turn.observation},
                         {"role": "assistant", "content": turn.completion}]
        if next_observation is not None:
            messages.append({"role": "user", "content": next_observation})
        return messages

    def transcript(self) -> str:
        """The episode as text for reflection: every turn's observation, completion and feedback, in order."""
        parts = []
        for k, turn in enumerate(self.turns, start=1):
            parts.append(f"Turn {k} observation:\n{turn.observation}\n\nTurn {k} response:\n{turn.completion}\n\n"
                         f"Turn {k} feedback ({turn.verdict or 'no verdict'}, reward {turn.reward:g}):\n"
                         f"{turn.feedback}")
        end = "truncated" if self.truncated else "terminated" if self.terminated else "unfinished"
        return "\n\n".join(parts) + f"\n\nEpisode {end} after {len(self.turns)} turn(s)."

    def as_rollout(self, rule: str = "sum") -> Rollout:
        """The episode as the fast learners' :class:`Rollout`: a one-turn episode maps field by field; a longer
        one carries the transcript as its completion, every turn's feedback, the return as its reward, the last
        verdict and hint, and the turns themselves in ``info["turns"]``."""
        if len(self.turns) == 1:
            turn = self.turns[0]
            info = dict(turn.info)
            if turn.hint:
                info["hint"] = turn.hint
            return Rollout(group=self.group, problem=turn.observation, context_id=self.context_id,
                           context=dict(self.context), completion=turn.completion,
                           reward=self.episode_return(rule), feedback=turn.feedback, verdict=turn.verdict,
                           prompt_ids=list(turn.prompt_ids), completion_ids=list(turn.completion_ids),
                           old_logprobs=list(turn.old_logprobs), info=info)
        feedback = "\n".join(f"Turn {k}: {t.feedback}" for k, t in enumerate(self.turns, start=1))
        info: dict[str, Any] = {"turns": [{"observation": t.observation, "completion": t.completion,
                                           "reward": t.reward, "feedback": t.feedback, "verdict": t.verdict,
                                           "hint": t.hint} for t in self.turns]}
        if self.turns and self.turns[-1].hint:
            info["hint"] = self.turns[-1].hint
        errors = [str(t.info["error"]) for t in self.turns if t.info.get("error")]
        if errors:
            info["error"] = errors[-1]
        return Rollout(group=self.group, problem=self.problem, context_id=self.context_id,
                       context=dict(self.context), completion=self.transcript(), reward=self.episode_return(rule),
                       feedback=feedback, verdict=self.verdict, info=info)

    def without_tokens(self) -> Episode:
        """A copy without token ids and log-probs: what the fast learners need (text, rewards, feedback), small
        enough to keep many of and to checkpoint (a later turn's prompt ids hold the whole conversation)."""
        turns = [dataclasses.replace(t, prompt_ids=[], completion_ids=[], old_logprobs=[], info=dict(t.info))
                 for t in self.turns]
        return dataclasses.replace(self, context=dict(self.context), turns=turns, info=dict(self.info))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (checkpoints); :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Episode:
        """Rebuild :meth:`to_dict` output; a :class:`Rollout` dict (an older checkpoint) becomes a one-turn episode."""
        if "turns" not in data:
            return cls.from_rollout(Rollout(**data))
        turns = [Turn(**t) for t in data["turns"]]
        return cls(group=data["group"], context_id=int(data["context_id"]), context=dict(data["context"]),
                   turns=turns, terminated=bool(data["terminated"]), truncated=bool(data["truncated"]),
                   info=dict(data.get("info", {})))

    @classmethod
    def from_rollout(cls, rollout: Rollout) -> Episode:
        """A one-turn, terminated episode holding a :class:`Rollout` (the slow learner's input for single steps)."""
        info = dict(rollout.info)
        hint = str(info.pop("hint", "") or "")
        turn = Turn(observation=rollout.problem, completion=rollout.completion, prompt_ids=list(rollout.prompt_ids),
                    completion_ids=list(rollout.completion_ids), old_logprobs=list(rollout.old_logprobs),
                    reward=float(rollout.reward), feedback=rollout.feedback, verdict=rollout.verdict, hint=hint,
                    info=info)
        return cls(group=rollout.group, context_id=rollout.context_id, context=dict(rollout.context), turns=[turn],
                   terminated=True)


@dataclass(frozen=True)
class EpisodeLimits:
    """Guards that end an episode with ``truncated=True``: at most ``max_turns`` policy turns, and no turn
    whose prompt (the formatted conversation so far) is over ``max_context_tokens`` tokens.

    The context guard never stops the first turn, so a single-turn task plays exactly as it would without it.
    """

    max_turns: int = 8
    max_context_tokens: int = 2048

    def validate(self) -> EpisodeLimits:
        """Raise ValueError on a bad field; returns ``self``."""
        for name in ("max_turns", "max_context_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EpisodeLimits.{name} must be an int >= 1, got {value!r}")
        return self


@dataclass
class EpisodeStart:
    """What one episode starts from: a plain env, its reset options, and the context (id and text) to play under.

    ``group`` names the problem; ``None`` lets the runner build it from the reset info.
    """

    env: gym.Env
    options: dict[str, Any]
    context_id: int
    context: Context
    group: str | None = None


class EnvPool:
    """Plain envs made once per (env id, kwargs) and reused: an episode batch takes the first ``n`` of them."""

    def __init__(self) -> None:
        self._envs: dict[str, list[gym.Env]] = {}

    def take(self, env_id: str, n: int, **env_kwargs: Any) -> list[gym.Env]:
        """``n`` distinct envs of ``env_id`` made with ``env_kwargs`` (made on first need, then reused)."""
        key = json.dumps([env_id, env_kwargs], sort_keys=True, default=repr)
        envs = self._envs.setdefault(key, [])
        while len(envs) < n:
            envs.append(gym.make(env_id, **env_kwargs))
        return envs[:n]

    def close(self) -> None:
        """Close every env made."""
        for envs in self._envs.values():
            for env in envs:
                env.close()
        self._envs.clear()


class EpisodeRunner:
    """Plays episodes to their end, batching generation across every still-active episode each turn.

    ``backend`` is a generation backend (``generate``, ``apply_chat_template``); ``count_tokens(prompt)`` counts a
    formatted prompt's tokens for the context guard; ``group_of(observation, reset_info)`` names an episode's
    problem when its :class:`EpisodeStart` does not.
    """

    def __init__(self, backend: Any, limits: EpisodeLimits, count_tokens: Callable[[str], int],
                 group_of: Callable[[str, Mapping[str, Any]], str]) -> None:
        self.backend = backend
        self.limits = limits.validate()
        self.count_tokens = count_tokens
        self.group_of = group_of

    def play(self, starts: Sequence[EpisodeStart], sampling: Callable[[], Any],
             seeds: Sequence[int] | None = None) -> list[Episode]:
        """Reset every start's env, then play all episodes to their end; one ``backend.generate`` call per turn
        over the active episodes, each call with ``sampling()`` (drawn once per call). ``seeds`` (one per start,
        for a backend with ``supports_row_seeds``) gives each episode its own noise: every turn's row is sampled
        with :func:`turn_seed` of its episode's seed, whatever else is in the batch. Returns the episodes in
        ``starts`` order."""
        if len({id(s.env) for s in starts}) != len(starts):
            raise ValueError("EpisodeRunner.play: every episode needs its own env")
        episodes: list[Episode] = []
        pending: list[str] = []  # the observation each episode answers next
        for start in starts:
            observation, info = start.env.reset(options=dict(start.options))
            group = start.group if start.group is not None else self.group_of(observation, info)
            episodes.append(Episode(group=group, context_id=start.context_id, context=dict(start.context)))
            pending.append(observation)
        active = list(range(len(starts)))
        while active:
            texts = self.respond([episodes[i] for i in active], [pending[i] for i in active], sampling,
                                 None if seeds is None else [seeds[i] for i in active])
            played = [i for i, text in zip(active, texts, strict=True) if text is not None]  # not cut by the guard
            for i, text in zip(played, (t for t in texts if t is not None), strict=True):
                pending[i] = self.record(episodes[i], *starts[i].env.step(text))
            active = [i for i in played if not episodes[i].done]
        return episodes

    def respond(self, episodes: Sequence[Episode], observations: Sequence[str], sampling: Callable[[], Any],
                seeds: Sequence[int] | None = None) -> list[str | None]:
        """The policy's next turn for each episode answering its observation: formats the conversations, ends
        (truncates) those whose prompt is over the context guard, generates for the rest in one call and appends
        their new :class:`Turn` (tokens and sampler log-probs; the outcome comes with :meth:`record`). ``seeds``:
        per-episode row seeds (see :meth:`play`). Returns each episode's completion text, ``None`` for one the
        guard ended."""
        prompts: list[str] = []
        playing: list[int] = []
        for i, (episode, observation) in enumerate(zip(episodes, observations, strict=True)):
            prompt = self.backend.apply_chat_template(episode.messages(observation))
            if episode.turns and self.count_tokens(prompt) > self.limits.max_context_tokens:
                episode.truncated = True
                episode.info["stopped"] = "max_context"
                continue
            prompts.append(prompt)
            playing.append(i)
        texts: list[str | None] = [None] * len(episodes)
        if not playing:
            return texts
        params = sampling()
        if seeds is not None:
            params = dataclasses.replace(params, seed=None, row_seeds=tuple(
                turn_seed(seeds[i], len(episodes[i].turns)) for i in playing))
        for i, generation in zip(playing, self.backend.generate(prompts, params), strict=True):
            episodes[i].turns.append(Turn(observation=observations[i], completion=generation.text,
                                          prompt_ids=list(generation.prompt_ids),
                                          completion_ids=list(generation.completion_ids),
                                          old_logprobs=list(generation.logprobs)))
            texts[i] = generation.text
        return texts

    def record(self, episode: Episode, observation: str, reward: float, terminated: bool, truncated: bool,
               info: Mapping[str, Any]) -> str:
        """Attach the env's answer to the episode's last turn (reward, feedback, verdict, hint, error) and end the
        episode when the env did or the turn guard is reached. Returns the next observation ("" once done)."""
        turn = episode.turns[-1]
        turn.reward = float(reward)
        turn.feedback = str(info.get("feedback", ""))
        turn.verdict = str(info.get("verdict", ""))
        turn.hint = str(info.get("hint") or "")
        if info.get("error"):  # why the env could not score it (a broken reward function, a judge crash)
            turn.info["error"] = str(info["error"])
        episode.terminated, episode.truncated = bool(terminated), bool(truncated)
        if not episode.done and len(episode.turns) >= self.limits.max_turns:
            episode.truncated = True
            episode.info["stopped"] = "max_turns"
        # A terminated TextEnv's observation is its feedback: it is never shown (the episode is over anyway).
        return "" if episode.done else str(observation)
