"""fst envs as TRL data and rewards: the TRL version check, prompts, datasets and reward functions.

Part of :mod:`fst_env.integrations.trl` (which re-exports every public name here):

- :func:`env_dataset`: the problems of an env split as a TRL prompt dataset (conversational: the rendered
  context as the system message, the env's observation as the user message) with the columns ``env_id``,
  ``split``, ``problem_id``, ``problem_key``, ``context_id`` and ``context`` (JSON) that the reward needs.
- :class:`EnvReward`: a TRL reward function. TRL 1.16 calls every custom reward function as
  ``f(prompts=, completions=, completion_ids=, **dataset_columns, trainer_state=, log_extra=, log_metric=)``
  (``GRPOTrainer._calculate_rewards``); this one resets the env to the row's problem, steps it with the
  completion text and returns the env's reward. Each scored rollout (reward, feedback, verdict) goes into a
  :class:`~fst_env.agents.bookkeeping.FeedbackBuffer` keyed by (problem key, context id), so fast rounds reuse
  RL rollouts instead of generating new ones.
- :class:`EpisodeReward`: the same for multi-turn envs, scoring the episodes the trainer's rollout function plays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import trl
from packaging.version import Version

#: The TRL minor version this module is written against and tested with.
SUPPORTED_TRL = (1, 16)

def check_trl_version(version: str) -> None:
    """Raise ImportError unless ``version`` is a TRL 1.16.x release (this module uses 1.16 internals)."""
    found = Version(version)
    if found.release[:2] != SUPPORTED_TRL:
        major, minor = SUPPORTED_TRL
        raise ImportError(
            f"fst_env.integrations.trl is written for and tested with trl {major}.{minor}.x (it overrides "
            f"GRPOTrainer._generate_and_score_completions, whose contract changes between TRL releases), but trl "
            f"{version} is installed. Install a tested version: "
            f"pip install 'trl>={major}.{minor},<{major}.{minor + 1}'")


check_trl_version(trl.__version__)

import gymnasium as gym  # noqa: E402  (after the version check: fail fast, before the heavy imports)
from datasets import Dataset  # noqa: E402

from fst_env.agents.bookkeeping import NO_CONTEXT_ID, FeedbackBuffer, problem_key  # noqa: E402
from fst_env.agents.episodes import RETURN_RULES, Episode  # noqa: E402
from fst_env.agents.rollout import Rollout  # noqa: E402
from fst_env.cards import card as env_card  # noqa: E402
from fst_env.context import Context, render_context  # noqa: E402
from fst_env.core import SPLITS  # noqa: E402


# ============================================================================================== prompts
def build_messages(observation: str, context: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """A conversational prompt: the rendered context as the system message (when non-empty), then the observation."""
    system = render_context(dict(context)) if context else ""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": observation}]


def with_context(prompt: Any, context: Mapping[str, str]) -> Any:
    """``prompt`` (TRL conversational messages or plain text) with its system message replaced by ``context``.

    A leading system message is dropped and the rendered context (if non-empty) put in its place; a plain-text
    prompt gets the rendered context as a prefix. The input is not modified.
    """
    system = render_context(dict(context))
    if isinstance(prompt, str):
        return f"{system}\n\n{prompt}" if system else prompt
    if not isinstance(prompt, Sequence) or not all(isinstance(m, Mapping) and "role" in m for m in prompt):
        raise TypeError(f"a TRL prompt must be a str or a list of chat messages, got {type(prompt).__name__}")
    messages = [dict(m) for m in prompt]
    if messages and messages[0]["role"] == "system":
        messages = messages[1:]
    return ([{"role": "system", "content": system}] if system else []) + messages


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a plain str, or the content of the last message of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content", "")
        if isinstance(content, str):
            return content
        if isinstance(content, Sequence):  # content blocks: keep the text parts
            return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    if isinstance(completion, Sequence) and not completion:
        return ""
    raise TypeError(f"EnvReward: a completion must be a str or a list of chat messages, got "
                    f"{type(completion).__name__}: {completion!r:.80}")


def _context_json(context: Mapping[str, str] | None) -> str:
    return json.dumps(dict(context or {}), sort_keys=True, ensure_ascii=False)


def _context_from(value: Any) -> Context:
    """A context from a ``context`` column value (JSON text, a dict, or missing)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"EnvReward: the 'context' column must hold JSON objects, got {type(value).__name__}")
    return {str(k): str(v) for k, v in value.items()}


def _make_env(env_id: str, split: str, env_kwargs: Mapping[str, Any]) -> gym.Env:
    return gym.make(env_id, split=split, **dict(env_kwargs))


# ============================================================================================== dataset
def env_dataset(env_id: str, split: str = "train", num_problems: int | None = None,
                context: Mapping[str, str] | None = None, *, context_id: int = NO_CONTEXT_ID,
                **env_kwargs: Any) -> Dataset:
    """The first ``num_problems`` problems (default: the whole split) of ``env_id``'s ``split`` as a TRL dataset.

    Rows: ``prompt`` (conversational: system = ``render_context(context)`` when a non-empty context is given,
    user = the env's observation for that problem), ``env_id``, ``split``, ``problem_id``, ``problem_key``,
    ``context_id`` (the context's id in a population, :data:`NO_CONTEXT_ID` by default) and ``context`` (the
    context as JSON). Every column except ``prompt`` reaches the reward functions. Problems are generated
    eagerly (procedural splits hold up to 100k problems: pass ``num_problems``). Deterministic.
    """
    if split not in SPLITS:
        raise ValueError(f"env_dataset: split must be one of {list(SPLITS)}, got {split!r}")
    env = _make_env(env_id, split, env_kwargs)
    try:
        available = env.unwrapped.num_problems() if hasattr(env.unwrapped, "num_problems") else None
        if num_problems is None:
            if available is None:
                raise ValueError(f"env_dataset: {env_id} does not report its split size; pass num_problems")
            num_problems = available
        if isinstance(num_problems, bool) or not isinstance(num_problems, int) or num_problems < 1:
            raise ValueError(f"env_dataset: num_problems must be an int >= 1, got {num_problems!r}")
        if available is not None and num_problems > available:
            raise ValueError(f"env_dataset: {env_id} split {split!r} holds {available} problems, "
                             f"{num_problems} were asked for")
        ctx_json = _context_json(context)
        rows = []
        for pid in range(num_problems):
            observation, _ = env.reset(options={"problem_id": pid})
            rows.append({"prompt": build_messages(observation, context), "env_id": env_id, "split": split,
                         "problem_id": pid, "problem_key": problem_key(env_id, split, pid),
                         "context_id": int(context_id), "context": ctx_json})
    finally:
        env.close()
    return Dataset.from_list(rows)


# ============================================================================================== reward
class EnvReward:
    """A TRL reward function that scores completions with an fst env and records reward + feedback.

    Contract:
    - called by TRL 1.16 as ``reward(prompts=, completions=, completion_ids=, **columns, trainer_state=,
      log_extra=, log_metric=)``; returns one float per completion. Rows come from :func:`env_dataset` (or any
      dataset with a ``problem_id`` column and optionally ``split``, ``env_id``, ``context_id``, ``context``);
      rows whose ``env_id`` is another env get ``None`` (TRL then ignores this function for them, so a list of
      EnvRewards scores a dataset mixing several envs);
    - each row: the env (``gym.make(env_id, split=row's split, **env_kwargs)``, cached per split) is reset to
      the row's ``problem_id`` and stepped once with the completion text. Any text is legal (the env turns bad
      output into reward 0 and feedback); a non-text completion is a caller bug (TypeError);
    - with ``check_prompts`` the last user message of the prompt must equal the env's observation, so a stale
      dataset (other env kwargs, other env version) fails loudly instead of scoring the wrong problem;
    - while :attr:`recording` is true every scored rollout is added to ``feedback_buffer`` as a
      :class:`Rollout` (group = problem key, context id and context from the row, ``info["step"]`` = the
      trainer's global step); ``log_metric`` gets ``fst/correct_frac`` and ``fst/format_error_frac``;
    - single-turn envs only: a multi-turn env (card ``turns="multi"``) is refused at construction (use TRL's
      ``environment_factory`` for those).
    """

    def __init__(self, env_id: str, feedback_buffer: FeedbackBuffer | None = None, *, split: str = "train",
                 check_prompts: bool = True, **env_kwargs: Any) -> None:
        try:
            turns = env_card(env_id).turns
        except KeyError:  # a plain gymnasium text env without an fst card: assume single-turn
            turns = "single"
        if turns == "multi":
            raise ValueError(f"EnvReward: {env_id} is a multi-turn env; a TRL reward function sees one completion "
                             "per prompt, so only single-turn envs can be scored this way (FSTGRPOTrainer plays "
                             "multi-turn envs as whole episodes, scored by EpisodeReward)")
        if split not in SPLITS:
            raise ValueError(f"EnvReward: split must be one of {list(SPLITS)}, got {split!r}")
        self.env_id = env_id
        self.split = split
        self.env_kwargs = dict(env_kwargs)
        self.feedback_buffer = feedback_buffer if feedback_buffer is not None else FeedbackBuffer()
        self.check_prompts = check_prompts
        self.recording = True
        self._envs: dict[str, gym.Env] = {}

    # TRL names a callable instance after its class (trl.trainer.utils.get_callable_name): "rewards/EnvReward/mean".

    def env(self, split: str) -> gym.Env:
        """The cached env of ``split``."""
        if split not in self._envs:
            self._envs[split] = _make_env(self.env_id, split, self.env_kwargs)
        return self._envs[split]

    def observation(self, split: str, problem_id: int) -> str:
        """The prompt the env shows for ``problem_id`` of ``split``."""
        observation, _ = self.env(split).reset(options={"problem_id": int(problem_id)})
        return observation

    def judge(self, split: str, problem_id: int, completion: str, *, context_id: int = NO_CONTEXT_ID,
              context: Mapping[str, str] | None = None, completion_ids: Sequence[int] | None = None,
              step: int | None = None) -> Rollout:
        """Score ``completion`` on one problem: a :class:`Rollout` with reward, feedback and verdict (not recorded)."""
        env = self.env(split)
        observation, _ = env.reset(options={"problem_id": int(problem_id)})
        _, reward, terminated, truncated, info = env.step(completion)
        return Rollout(group=problem_key(self.env_id, split, problem_id), problem=observation,
                       context_id=int(context_id), context=dict(context or {}), completion=completion,
                       reward=float(reward), feedback=str(info.get("feedback", "")),
                       verdict=str(info.get("verdict", "")),
                       completion_ids=[int(t) for t in (completion_ids or [])],
                       info={"step": step, "env_id": self.env_id, "split": split, "problem_id": int(problem_id),
                             "terminated": bool(terminated), "truncated": bool(truncated)})

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 completion_ids: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> list[float | None]:
        n = len(completions)
        if "problem_id" not in kwargs:
            raise KeyError("EnvReward needs a 'problem_id' column in the dataset (build it with env_dataset)")
        columns = {name: kwargs.get(name) for name in ("problem_id", "split", "env_id", "context_id", "context")}
        for name, values in columns.items():
            if values is not None and len(values) != n:
                raise ValueError(f"EnvReward: column {name!r} has {len(values)} values for {n} completions")
        state = kwargs.get("trainer_state")
        step = int(state.global_step) if state is not None else None
        rewards: list[float | None] = []
        scored: list[Rollout] = []
        for i in range(n):
            if columns["env_id"] is not None and columns["env_id"][i] != self.env_id:
                rewards.append(None)
                continue
            split = columns["split"][i] if columns["split"] is not None else self.split
            problem_id = int(columns["problem_id"][i])
            text = completion_text(completions[i])
            if self.check_prompts and prompts is not None:
                self._check_prompt(prompts[i], split, problem_id)
            rollout = self.judge(split, problem_id, text,
                                 context_id=int(columns["context_id"][i]) if columns["context_id"] is not None
                                 else NO_CONTEXT_ID,
                                 context=_context_from(columns["context"][i]) if columns["context"] is not None
                                 else None,
                                 completion_ids=completion_ids[i] if completion_ids is not None else None, step=step)
            rewards.append(rollout.reward)
            scored.append(rollout)
        _record(self, scored, kwargs.get("log_metric"))
        return rewards

    def _check_prompt(self, prompt: Any, split: str, problem_id: int) -> None:
        if isinstance(prompt, str):
            shown, ok = prompt, prompt.endswith(self.observation(split, problem_id))
        else:
            users = [m.get("content") for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
            shown = users[-1] if users else ""
            ok = shown == self.observation(split, problem_id)
        if not ok:
            raise ValueError(f"EnvReward: the prompt of {problem_key(self.env_id, split, problem_id)} does not show "
                             f"that problem's observation (prompt ends with {str(shown)[-80:]!r}); the dataset was "
                             "built with other env kwargs or an older env. Rebuild it with env_dataset, or pass "
                             "check_prompts=False if the prompts are deliberately reformatted")

    def close(self) -> None:
        """Close the cached envs."""
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def _record(reward: EnvReward | EpisodeReward, scored: list[Rollout], log_metric: Any) -> bool:
    """What both reward functions do with a batch they scored: into the buffer while recording, and the
    verdict fractions to TRL's ``log_metric``; returns whether there was anything to log and somewhere to log it."""
    if reward.recording:
        reward.feedback_buffer.extend(scored)
    if not scored or not callable(log_metric):
        return False
    log_metric("fst/correct_frac", sum(r.verdict == "correct" for r in scored) / len(scored))
    log_metric("fst/format_error_frac", sum(r.verdict == "format_error" for r in scored) / len(scored))
    return True


def _env_turns(env_id: str) -> str:
    """``"single"`` or ``"multi"`` from the env's card (a plain gymnasium text env without a card: single)."""
    try:
        return env_card(env_id).turns
    except KeyError:
        return "single"


class EpisodeReward:
    """A TRL reward function for multi-turn envs: the return of the episode :class:`FSTGRPOTrainer` played.

    Contract: the trainer's rollout function plays each row's episode and hands it to TRL as the extra column
    ``episode`` (an :meth:`Episode.to_dict` without token ids); this returns ``episode.episode_return(rule)`` per
    row and, while :attr:`recording` is true, adds ``episode.as_rollout(rule)`` (transcript, every turn's
    feedback, the return as reward; ``info["step"]`` = the trainer's global step) to ``feedback_buffer``.
    ``log_metric`` gets ``fst/correct_frac`` (the last turn's verdict), ``fst/format_error_frac`` and
    ``fst/turns_mean``. A row without an ``episode`` is a caller bug (KeyError).
    """

    def __init__(self, env_id: str, feedback_buffer: FeedbackBuffer | None = None, *, split: str = "train",
                 return_rule: str = "sum", **env_kwargs: Any) -> None:
        if return_rule not in RETURN_RULES:
            raise ValueError(f"EpisodeReward: return_rule must be one of {list(RETURN_RULES)}, got {return_rule!r}")
        if split not in SPLITS:
            raise ValueError(f"EpisodeReward: split must be one of {list(SPLITS)}, got {split!r}")
        self.env_id = env_id
        self.split = split
        self.return_rule = return_rule
        self.env_kwargs = dict(env_kwargs)
        self.feedback_buffer = feedback_buffer if feedback_buffer is not None else FeedbackBuffer()
        self.recording = True

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if "episode" not in kwargs:
            raise KeyError("EpisodeReward needs the 'episode' column that FSTGRPOTrainer's rollout function adds")
        episodes = [Episode.from_dict(e) for e in kwargs["episode"]]
        if len(episodes) != len(completions):
            raise ValueError(f"EpisodeReward: {len(episodes)} episodes for {len(completions)} completions")
        state = kwargs.get("trainer_state")
        step = int(state.global_step) if state is not None else None
        rollouts = []
        for episode in episodes:
            rollout = episode.as_rollout(self.return_rule)
            rollout.info["step"] = step
            rollouts.append(rollout)
        log_metric = kwargs.get("log_metric")
        if _record(self, rollouts, log_metric):
            log_metric("fst/turns_mean", sum(len(e.turns) for e in episodes) / len(episodes))
        return [r.reward for r in rollouts]


__all__ = ["SUPPORTED_TRL", "EnvReward", "EpisodeReward", "build_messages", "check_trl_version", "completion_text",
           "env_dataset", "with_context"]
