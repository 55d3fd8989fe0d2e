"""fst-env on TRL: any fst env as a ``GRPOTrainer`` source, and an FST trainer built on ``GRPOTrainer``.

Tested with TRL 1.16.x only (checked at import). Three pieces:

- :func:`env_dataset`: the problems of an env split as a TRL prompt dataset (conversational: the rendered
  context as the system message, the env's observation as the user message) with the columns ``env_id``,
  ``split``, ``problem_id``, ``problem_key``, ``context_id`` and ``context`` (JSON) that the reward needs.
- :class:`EnvReward`: a TRL reward function. TRL 1.16 calls every custom reward function as
  ``f(prompts=, completions=, completion_ids=, **dataset_columns, trainer_state=, log_extra=, log_metric=)``
  (``GRPOTrainer._calculate_rewards``); this one resets the env to the row's problem, steps it with the
  completion text and returns the env's reward. Each scored rollout (reward, feedback, verdict) goes into a
  :class:`FeedbackBuffer` keyed by (problem key, context id), so fast rounds reuse RL rollouts instead of
  generating new ones.
- :class:`FSTGRPOTrainer`: ``GRPOTrainer`` with ``loss_type="cispo"`` (always an explicit ``epsilon_high``,
  the paper's tau), prompts whose system message is a context drawn from a :class:`ContextPopulation` and mixed
  within each group (G/K rollouts per context), and a fast round every ``fast_every`` optimizer steps on the
  main process whose new population is broadcast to every process.

How the grouping works in TRL 1.16 (verified in ``grpo_trainer.py``): ``RepeatSampler`` puts the
``num_generations`` copies of a problem in consecutive rows of the global generation batch; each process holds
the contiguous slice ``[process_index * n, (process_index + 1) * n)`` of it; rewards are gathered and
normalised over ``rewards.view(-1, num_generations)``, i.e. over consecutive rows whatever prompt text each
row carries. :class:`FSTGRPOTrainer` overrides ``_generate_and_score_completions`` (the one place that turns
dataset rows into prompts, once per generation batch on every process) and rewrites each row's system message
with the context assigned to its position in its group. The assignment depends only on the seed, a generation
counter, the global group index and the (broadcast, identical) population, so every process agrees on it even
when a group straddles two processes; and the advantage is computed once per problem across all its contexts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
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
import torch  # noqa: E402
from accelerate.utils import broadcast_object_list, gather_object  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import Trainer, TrainerCallback  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.trainer.utils import RepeatSampler  # noqa: E402

from fst_env.agents.episodes import RETURN_RULES, EnvPool, Episode, Turn  # noqa: E402
from fst_env.agents.fast import FastLearner, NotesFastLearner  # noqa: E402
from fst_env.agents.fst_agent import DEFAULT_SEED_CONTEXT  # noqa: E402
from fst_env.agents.population import ContextPopulation  # noqa: E402
from fst_env.agents.rollout import Rollout  # noqa: E402
from fst_env.cards import card as env_card  # noqa: E402
from fst_env.context import Context, render_context  # noqa: E402
from fst_env.core import SPLITS  # noqa: E402

logger = logging.getLogger(__name__)

#: CISPO's importance-weight cap when none is given: the FST paper's tau (TRL's own default would be 0.2).
DEFAULT_EPSILON_HIGH = 4.0

#: File written next to each TRL checkpoint with the population, the fast learner and the feedback buffer.
FST_STATE_NAME = "fst_state.json"
_STATE_VERSION = 1

#: ``context_id`` of a rollout whose context is not a population member (a free-standing or fast-round context).
NO_CONTEXT_ID = -1


# ============================================================================================== problem keys
def problem_key(env_id: str, split: str, problem_id: int) -> str:
    """The group key of a problem, as everywhere in fst-env: ``"<env_id>/<split>/<problem_id>"``."""
    return f"{env_id}/{split}/{int(problem_id)}"


def parse_problem_key(key: str) -> tuple[str, str, int]:
    """Inverse of :func:`problem_key` (env ids contain ``/``, so the key is split from the right)."""
    parts = key.rsplit("/", 2)
    if len(parts) != 3 or parts[1] not in SPLITS or not parts[2].isdigit():
        raise ValueError(f"not a problem key (expected '<env_id>/<split>/<problem_id>'): {key!r}")
    return parts[0], parts[1], int(parts[2])


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


# ============================================================================================== feedback buffer
class FeedbackBuffer:
    """The most recent scored RL rollouts, for fast rounds to reuse instead of generating new ones.

    Contract: holds at most ``max_records`` :class:`Rollout` records (the oldest are dropped first); records are
    addressed by (problem key = ``Rollout.group``, ``Rollout.context_id``); :meth:`recent` returns them oldest
    first, so feeding them to a fast learner lets the freshest rollout of a (context, problem) pair win;
    :attr:`total_added` counts every record ever added (:meth:`since` uses it to find a batch's records);
    :meth:`state_dict` is JSON-serialisable and :meth:`load_state_dict` restores it.
    """

    def __init__(self, max_records: int = 4096) -> None:
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
            raise ValueError(f"FeedbackBuffer: max_records must be an int >= 1, got {max_records!r}")
        self.max_records = max_records
        self._records: deque[Rollout] = deque(maxlen=max_records)
        self.total_added = 0

    def add(self, rollout: Rollout) -> None:
        """Record one scored rollout."""
        if not isinstance(rollout, Rollout):
            raise TypeError(f"FeedbackBuffer.add expects a Rollout, got {type(rollout).__name__}")
        self._records.append(rollout)
        self.total_added += 1

    def extend(self, rollouts: Iterable[Rollout]) -> None:
        """Record several scored rollouts, in order."""
        for rollout in rollouts:
            self.add(rollout)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Rollout]:
        return iter(list(self._records))

    def recent(self, n: int | None = None) -> list[Rollout]:
        """The last ``n`` records (default: all held), oldest first."""
        records = list(self._records)
        return records if n is None else records[max(len(records) - n, 0):]

    def since(self, mark: int) -> list[Rollout]:
        """The records added after :attr:`total_added` was ``mark`` (those still held), oldest first."""
        return self.recent(min(max(self.total_added - mark, 0), len(self._records)))

    def get(self, key: str, context_id: int) -> list[Rollout]:
        """Every held record of problem ``key`` under context ``context_id``, oldest first."""
        return [r for r in self._records if r.group == key and r.context_id == context_id]

    def by_key(self) -> dict[tuple[str, int], list[Rollout]]:
        """The held records grouped by (problem key, context id), each group oldest first."""
        grouped: dict[tuple[str, int], list[Rollout]] = {}
        for rollout in self._records:
            grouped.setdefault((rollout.group, rollout.context_id), []).append(rollout)
        return grouped

    def problem_keys(self, limit: int | None = None) -> list[str]:
        """Distinct problem keys, most recently seen first (at most ``limit``)."""
        keys = list(dict.fromkeys(r.group for r in reversed(self._records)))
        return keys if limit is None else keys[:limit]

    def clear(self) -> None:
        """Drop every record (``total_added`` keeps counting)."""
        self._records.clear()

    def state_dict(self) -> dict[str, Any]:
        """The buffer as JSON-serialisable data."""
        return {"max_records": self.max_records, "total_added": self.total_added,
                "records": [asdict(r) for r in self._records]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (replaces the current records)."""
        self.max_records = int(state["max_records"])
        self._records = deque((Rollout(**r) for r in state["records"]), maxlen=self.max_records)
        self.total_added = int(state["total_added"])

    def __repr__(self) -> str:
        return f"FeedbackBuffer({len(self)}/{self.max_records} records, {len(self.problem_keys())} problems)"


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
        if self.recording:
            self.feedback_buffer.extend(scored)
        log_metric = kwargs.get("log_metric")
        if scored and callable(log_metric):
            log_metric("fst/correct_frac", sum(r.verdict == "correct" for r in scored) / len(scored))
            log_metric("fst/format_error_frac", sum(r.verdict == "format_error" for r in scored) / len(scored))
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
        if self.recording:
            self.feedback_buffer.extend(rollouts)
        log_metric = kwargs.get("log_metric")
        if rollouts and callable(log_metric):
            log_metric("fst/correct_frac", sum(r.verdict == "correct" for r in rollouts) / len(rollouts))
            log_metric("fst/format_error_frac", sum(r.verdict == "format_error" for r in rollouts) / len(rollouts))
            log_metric("fst/turns_mean", sum(len(e.turns) for e in episodes) / len(episodes))
        return [r.reward for r in rollouts]


# ============================================================================================== config
def fst_grpo_config(output_dir: str, **kwargs: Any) -> GRPOConfig:
    """A ``GRPOConfig`` with the FST objective: ``loss_type="cispo"``, ``epsilon_high`` = tau = 4.0, no KL
    (``beta=0``) and per-group reward scaling; any keyword overrides these and sets the other fields."""
    settings: dict[str, Any] = {"loss_type": "cispo", "epsilon_high": DEFAULT_EPSILON_HIGH, "beta": 0.0,
                                "scale_rewards": "group"}
    settings.update(kwargs)
    return GRPOConfig(output_dir=output_dir, **settings)


def _check_objective(args: GRPOConfig) -> None:
    if args.loss_type != "cispo":
        raise ValueError(f"FSTGRPOTrainer trains with CISPO (loss_type='cispo'), got loss_type={args.loss_type!r}; "
                         "build the config with fst_grpo_config(...) or use trl.GRPOTrainer for other losses")
    if args.epsilon_high is None:
        raise ValueError("FSTGRPOTrainer: loss_type='cispo' needs an explicit epsilon_high (the cap on the "
                         "importance weight, the paper's tau). Left unset, TRL uses epsilon=0.2 and caps every "
                         f"weight at 0.2. Set GRPOConfig(epsilon_high={DEFAULT_EPSILON_HIGH}) or use "
                         "fst_grpo_config(...)")
    if not args.epsilon_high > 0:
        raise ValueError(f"FSTGRPOTrainer: epsilon_high must be > 0, got {args.epsilon_high}")


# ============================================================================================== sampler
class ResumableRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` whose order in epoch ``e`` depends on (seed, e) only, so a resumed run replays it.

    TRL 1.16's sampler seeds one generator at construction and draws a new permutation per epoch; transformers 5
    resumes by skipping batches within the resumed epoch only, so a resumed run's fresh sampler would replay
    epoch 0's permutation in epoch ``e`` (measured: a 2-process run resumed at an epoch boundary trained on other
    problems than the uninterrupted run). This one re-seeds with ``seed`` at each iteration and discards ``e``
    permutations first: uninterrupted runs get exactly TRL's order, resumed runs the same order. The epoch comes
    from :meth:`set_epoch` (accelerate's data loader forwards it, and :class:`FSTGRPOTrainer` sets it at every
    epoch begin, which also covers loaders that do not forward it); an iteration without a new ``set_epoch``
    continues with the next epoch, as TRL's would. With ``seed=None`` or ``shuffle=False`` it is TRL's sampler.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of epoch ``epoch`` at the next iteration."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed)
            for _ in range(self.epoch):  # TRL's generator has drawn one permutation per earlier epoch
                torch.randperm(self.num_samples, generator=self.generator)
        self.epoch += 1
        return super().__iter__()


# ============================================================================================== trainer
class FastRoundCallback(TrainerCallback):
    """Runs :meth:`FSTGRPOTrainer.fast_round` on every process after every ``fast_every``-th optimizer step."""

    def __init__(self, trainer: FSTGRPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        trainer = self.trainer
        if trainer.fast_every > 0 and state.global_step > 0 and state.global_step % trainer.fast_every == 0:
            trainer.fast_round()
        return control

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # Before the epoch's data loader is iterated; on resume state.epoch is the checkpoint's progress, whose
        # integer part is the epoch Trainer resumes in (global_step // steps per epoch).
        sampler = self.trainer.train_sampler
        if sampler is not None:
            sampler.set_epoch(math.floor(state.epoch or 0))
        return control


class FSTGRPOTrainer(GRPOTrainer):
    """Fast-Slow Training on TRL: CISPO on the weights, a context population evolved between steps.

    Contract:
    - the objective is TRL's CISPO: ``args.loss_type`` must be ``"cispo"`` with an explicit ``epsilon_high``
      (:func:`fst_grpo_config` defaults it to tau = 4.0); anything else raises ValueError;
    - ``train_dataset`` defaults to ``env_dataset(env_id, split, num_problems, **env_kwargs)`` (no context);
      the first reward function is an :class:`EnvReward` on ``env_id`` writing into :attr:`feedback_buffer`,
      followed by ``extra_reward_funcs``;
    - in training, the G = ``num_generations`` rollouts of each problem get their system message from the
      population's ``assign_group`` (G/K per context, the remainder to distinct random candidates), the same on
      every process; TRL then normalises the advantage once over the G rows, across contexts. Evaluation uses
      the population's best context for every row and records nothing in the buffer;
    - every ``fast_every`` optimizer steps (0 = never) :meth:`fast_round` runs the fast learner (default: an
      LLM-free ``NotesFastLearner``; pass a ``ReflectiveFastLearner`` for reflection) on the main process
      (problems = the ``fast_problems`` most recent buffer keys, recent rollouts = the buffer; its evaluate fn
      generates with the trainer's current model), broadcasts the new population and learner state
      to every process, and logs the round's scalars through ``Trainer.log`` (so they reach every reporter in
      ``report_to``, TensorBoard included, at the current global step) as ``fast/...`` and ``budget/...``;
      with vLLM, the weights are synced to vLLM on every process before the round;
    - a multi-turn env (card ``turns="multi"``, or ``multi_turn=True``) is played by the trainer's own TRL
      ``rollout_func`` (:meth:`play_episodes`): each row is one whole episode of at most ``max_turns`` turns, one
      TRL sequence whose env-written ids are masked out of the loss (``env_mask``), scored by
      :class:`EpisodeReward` with its return (``return_rule`` "sum" or "last"); ``max_completion_length`` bounds
      each turn and ``max_episode_tokens`` (default: ``max_turns`` such turns and 512 tokens per env turn)
      the whole completion.
      Fast rounds evaluate candidates on whole episodes too. Generation must not be collective (episodes differ in
      length across processes): vLLM server mode, colocate TP>1, and ZeRO-3/FSDP without vLLM are refused;
    - checkpoints get ``fst_state.json`` (population, fast learner, buffer, counters), written by the process(es)
      that write TRL's checkpoint; on resume the main process reads it and broadcasts it to every process. The
      training sampler is a :class:`ResumableRepeatSampler`, so a resumed run sees the problems, in the order, of
      the uninterrupted run (TRL's own sampler replays epoch 0's order after a resume).

    Fast-round generation runs on the main process alone, so it must not need the other processes: it works
    single-process, under DDP, and with vLLM colocate at tensor_parallel_size=1. Where it cannot (ZeRO-3 or FSDP
    without vLLM, vLLM server mode or colocate TP>1 with several processes) the constructor raises unless a
    ``fast_generate(messages_list) -> texts`` callable is given. vLLM server mode samples one prompt per group
    (``all_prompts[::num_generations]`` in TRL 1.16), so it cannot mix contexts: it is refused unless the
    population holds a single context (``population_size=1``).
    """

    def __init__(self, model: Any, env_id: str, args: GRPOConfig | None = None, *, split: str = "train",
                 num_problems: int | None = None, env_kwargs: Mapping[str, Any] | None = None,
                 train_dataset: Dataset | None = None, eval_dataset: Dataset | None = None,
                 population: ContextPopulation | None = None, seed_context: Context | None = None,
                 population_size: int = 4, fast_learner: FastLearner | None = None, fast_every: int = 6,
                 fast_problems: int = 8, feedback_buffer: FeedbackBuffer | None = None,
                 extra_reward_funcs: Sequence[Callable[..., Any]] = (),
                 fast_generate: Callable[[list[list[dict[str, str]]]], list[str]] | None = None,
                 multi_turn: bool | None = None, max_turns: int = 4, max_episode_tokens: int | None = None,
                 return_rule: str = "sum", callbacks: list[TrainerCallback] | None = None,
                 **grpo_kwargs: Any) -> None:
        if args is None:
            args = fst_grpo_config(f"{env_id.replace('/', '_')}-FST-GRPO")
        _check_objective(args)
        for name, value in (("fast_every", fast_every), ("fast_problems", fast_problems)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "fast_every" else 1):
                raise ValueError(f"FSTGRPOTrainer: {name} must be an int >= {0 if name == 'fast_every' else 1}, "
                                 f"got {value!r}")
        if fast_generate is not None and not callable(fast_generate):
            raise TypeError(f"FSTGRPOTrainer: fast_generate must be callable, got {type(fast_generate).__name__}")
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.population = population if population is not None else ContextPopulation(
            dict(seed_context or DEFAULT_SEED_CONTEXT), max_size=population_size)
        if args.use_vllm and args.vllm_mode == "server" and self.population.max_size > 1:
            raise ValueError("FSTGRPOTrainer: TRL 1.16's vLLM server mode generates from the first prompt of each "
                             "group only, so contexts cannot be mixed within a group; use vllm_mode='colocate', or a "
                             "population of one context (population_size=1)")
        self.fast_every = fast_every
        self.fast_problems = fast_problems
        self.fast_learner: FastLearner | None = fast_learner if fast_learner is not None else (
            NotesFastLearner(seed=args.seed) if fast_every > 0 else None)
        self.fast_generate = fast_generate
        if feedback_buffer is None:
            # Enough for every rollout since the last fast round, with room for rounds several steps apart.
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
            feedback_buffer = FeedbackBuffer(max(4 * per_step * max(fast_every, 1), 64))
        self.feedback_buffer = feedback_buffer
        self.multi_turn = _env_turns(env_id) == "multi" if multi_turn is None else bool(multi_turn)
        self.split = split
        if self.multi_turn:
            self._check_episode_settings(args, max_turns, max_episode_tokens, fast_generate, grpo_kwargs)
            self.max_turns = max_turns
            # Default: every turn may use max_completion_length, and each env turn between them up to 512 tokens.
            self.max_episode_tokens = (max_episode_tokens if max_episode_tokens is not None
                                       else max_turns * args.max_completion_length + (max_turns - 1) * 512)
            self.env_reward: EnvReward | EpisodeReward = EpisodeReward(
                env_id, feedback_buffer, split=split, return_rule=return_rule, **self.env_kwargs)
            grpo_kwargs["rollout_func"] = self._rollout_episodes
        else:
            self.env_reward = EnvReward(env_id, feedback_buffer, split=split, **self.env_kwargs)
        self._episode_envs = EnvPool()
        self._rollout_rows: list[dict[str, Any]] | None = None
        if train_dataset is None:
            train_dataset = env_dataset(env_id, split, num_problems, **self.env_kwargs)
        for column in ("prompt", "problem_id"):
            if column not in train_dataset.column_names:
                raise ValueError(f"FSTGRPOTrainer: train_dataset needs a {column!r} column (build it with env_dataset)")
        self.fast_history: list[dict[str, Any]] = []
        self.fst_counters: dict[str, int] = {"generation_rounds": 0, "fast_rounds": 0, "fast_rollouts": 0,
                                             "rollouts_reused": 0, "reflection_calls": 0}
        self.last_context_ids: list[int] = []
        #: The training sampler (set when TRL builds the train data loader), see :class:`ResumableRepeatSampler`.
        self.train_sampler: ResumableRepeatSampler | None = None
        super().__init__(model=model, reward_funcs=[self.env_reward, *extra_reward_funcs], args=args,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=callbacks, **grpo_kwargs)
        self._check_fast_generation()
        self.add_callback(FastRoundCallback(self))

    @staticmethod
    def _check_episode_settings(args: GRPOConfig, max_turns: Any, max_episode_tokens: Any, fast_generate: Any,
                                grpo_kwargs: Mapping[str, Any]) -> None:
        """Refuse multi-turn settings this trainer cannot honour (before TRL builds anything)."""
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
            raise ValueError(f"FSTGRPOTrainer: max_turns must be an int >= 1, got {max_turns!r}")
        if max_episode_tokens is not None and (isinstance(max_episode_tokens, bool)
                                               or not isinstance(max_episode_tokens, int) or max_episode_tokens < 1):
            raise ValueError(f"FSTGRPOTrainer: max_episode_tokens must be an int >= 1 or None, "
                             f"got {max_episode_tokens!r}")
        if "rollout_func" in grpo_kwargs:
            raise ValueError("FSTGRPOTrainer: a multi-turn env is played by the trainer's own rollout_func; "
                             "do not pass another")
        if fast_generate is not None:
            raise ValueError("FSTGRPOTrainer: fast_generate writes one turn; with a multi-turn env, fast rounds play "
                             "whole episodes with the trainer's model")
        if args.use_vllm and (args.vllm_mode == "server" or args.vllm_tensor_parallel_size > 1):
            raise ValueError("FSTGRPOTrainer: episodes take a different number of turns on each process, so their "
                             "generation must not be collective; vLLM server mode and colocate TP>1 are; use "
                             "colocate with vllm_tensor_parallel_size=1 or transformers generation")

    def _check_fast_generation(self) -> None:
        """Refuse set-ups where generating on the main process alone would wait forever on the other processes."""
        if (self.multi_turn and self.accelerator.num_processes > 1 and not self.use_vllm
                and (self._dist.is_zero3 or self._dist.is_fsdp)):
            raise ValueError("FSTGRPOTrainer: with ZeRO-3 or FSDP every generate call gathers the weights (a "
                             "collective), but episodes take a different number of turns on each process; use vLLM "
                             "colocate (tensor_parallel_size=1)")
        if self.fast_every == 0 or self.fast_generate is not None or self.accelerator.num_processes == 1:
            return
        if self.use_vllm and (self.vllm_mode == "server" or self.vllm_tensor_parallel_size > 1):
            raise ValueError("FSTGRPOTrainer: with several processes, fast rounds generate on the main process only, "
                             "but vLLM server mode and colocate TP>1 generate collectively; use colocate with "
                             "vllm_tensor_parallel_size=1 or pass fast_generate=")
        if not self.use_vllm and (self._dist.is_zero3 or self._dist.is_fsdp):
            raise ValueError("FSTGRPOTrainer: with ZeRO-3 or FSDP the weights are sharded, so the main process cannot "
                             "generate alone for a fast round; use vLLM colocate (tensor_parallel_size=1) or pass "
                             "fast_generate=")

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        """TRL's sampler as a :class:`ResumableRepeatSampler` (same order, reproduced on resume)."""
        trl_sampler = super()._get_train_sampler(dataset)
        if type(trl_sampler) is not RepeatSampler:
            return trl_sampler  # not the sampler whose resume behaviour is known
        self.train_sampler = ResumableRepeatSampler(
            data_source=trl_sampler.data_source, mini_repeat_count=trl_sampler.mini_repeat_count,
            batch_size=trl_sampler.batch_size, repeat_count=trl_sampler.repeat_count, shuffle=trl_sampler.shuffle,
            seed=trl_sampler.seed)
        return self.train_sampler

    # ------------------------------------------------------------------ contexts per rollout
    def assign_contexts(self, num_rows: int, group_size: int) -> list[int]:
        """Context ids for this process's ``num_rows`` rows of the current generation batch.

        Row ``i`` is global row ``process_index * num_rows + i``; its group is that // ``group_size`` and its
        place in the group that % ``group_size``. Each group's assignment is the population's
        ``assign_group(group_size, rng)`` with an rng seeded from (seed, generation round, group index), so
        every process computes the same assignment for a group whatever slice of it the process holds.
        """
        offset = self.accelerator.process_index * num_rows
        assignments: dict[int, list[int]] = {}
        ids = []
        for i in range(num_rows):
            group, place = divmod(offset + i, group_size)
            if group not in assignments:
                rng = random.Random(f"fst-trl/{self.args.seed}/{self.fst_counters['generation_rounds']}/{group}")
                assignments[group] = self.population.assign_group(group_size, rng)
            ids.append(assignments[group][place])
        return ids

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            self.fst_counters["generation_rounds"] += 1
            context_ids = self.assign_contexts(len(inputs), self.num_generations)
        else:
            context_ids = [self.population.best().id] * len(inputs)
        rows = []
        for row, cid in zip(inputs, context_ids, strict=True):
            context = self.population.context(cid)
            rows.append({**row, "prompt": with_context(row["prompt"], context), "context_id": cid,
                         "context": _context_json(context)})
        self.last_context_ids = context_ids
        mark = self.feedback_buffer.total_added
        self.env_reward.recording = mode == "train"  # evaluation rollouts must not leak into fast rounds
        self._rollout_rows = rows  # what a multi-turn rollout needs besides the prompt (problem, split, context)
        try:
            output = super()._generate_and_score_completions(rows)
        finally:
            self.env_reward.recording = True
            self._rollout_rows = None
        if mode == "train":
            self._share_rollouts(mark)
            groups = [context_ids[i:i + self.num_generations] for i in range(0, len(context_ids), self.num_generations)]
            self._metrics[mode]["fst/contexts_per_group"].append(sum(len(set(g)) for g in groups) / len(groups))
            self._metrics[mode]["fst/population_size"].append(float(len(self.population)))
        return output

    def _share_rollouts(self, mark: int) -> None:
        """Give the main process (which runs the fast rounds) every process's rollouts of the last batch."""
        if self.accelerator.num_processes == 1:
            return
        local = self.feedback_buffer.since(mark)
        gathered = gather_object(local)  # process 0's records come first
        if self.accelerator.is_main_process:
            self.feedback_buffer.extend(gathered[len(local):])

    # ------------------------------------------------------------------ fast rounds
    def fast_round(self) -> dict[str, float]:
        """One fast round (call on every process at the same point); returns the scalars it logged."""
        if self.fast_learner is None:
            raise RuntimeError("FSTGRPOTrainer.fast_round: no fast learner (fast_every=0 and none was given)")
        if self.use_vllm:
            # The fast round samples with vLLM; push the current weights first (a collective under ZeRO-3/FSDP,
            # hence on every process), and tell TRL they are fresh so the next training batch does not push again.
            self.vllm_generation.sync_weights()
            self._last_loaded_step = self.state.global_step
        payload: list[Any] = [None]
        if self.accelerator.is_main_process:
            try:
                payload[0] = self._fast_round_main()
            except Exception as err:
                # The other processes wait in the broadcast below: send them the failure instead of nothing.
                payload[0] = {"error": f"{type(err).__name__}: {err}"}
                broadcast_object_list(payload, from_process=0)
                raise
        broadcast_object_list(payload, from_process=0)
        state = payload[0]
        if "error" in state:
            raise RuntimeError(f"FSTGRPOTrainer: the fast round failed on the main process ({state['error']})")
        if not self.accelerator.is_main_process:
            self.population.load_state_dict(state["population"])
            self.fast_learner.load_state_dict(state["fast"])
            self.fst_counters = dict(state["counters"])
        scalars = dict(state["scalars"])
        # Trainer.log, not GRPOTrainer.log: the latter would also flush (and clear) TRL's metrics of the steps
        # since the last log, which belong to the regular logging_steps cadence. The callback handler's on_log
        # clears control.should_log, which would cancel this step's regular log: keep the flag as it was.
        should_log = self.control.should_log
        Trainer.log(self, dict(scalars))
        self.control.should_log = should_log
        return scalars

    def _fast_round_main(self) -> dict[str, Any]:
        keys = self.feedback_buffer.problem_keys(self.fast_problems)
        if keys:
            metrics = self.fast_learner.round(self.population, self.fast_evaluate, self.feedback_buffer.recent(), keys)
            self.fast_history.append(metrics)
            self.fst_counters["fast_rounds"] += 1
            self.fst_counters["fast_rollouts"] += int(metrics.get("metric_calls", 0))
            self.fst_counters["rollouts_reused"] += int(metrics.get("rollouts_reused", 0))
            self.fst_counters["reflection_calls"] += int(metrics.get("reflection_calls", 0))
        else:
            logger.warning("FSTGRPOTrainer: fast round skipped, the feedback buffer holds no rollouts yet")
            metrics = {"skipped": 1}
        scalars = {f"fast/{k}": float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))}
        scalars.update({f"budget/{k}": float(v) for k, v in self.fst_counters.items()})
        scalars["population/size"] = float(len(self.population))
        return {"population": self.population.state_dict(), "fast": self.fast_learner.state_dict(),
                "counters": dict(self.fst_counters), "scalars": scalars}

    def fast_evaluate(self, context: Context, keys: list[str]) -> list[Rollout]:
        """The fast learner's evaluate fn: the current model with ``context`` on each problem key, one rollout each."""
        problems = [parse_problem_key(key) for key in keys]
        for key, (env_id, _, _) in zip(keys, problems, strict=True):
            if env_id != self.env_id:
                raise ValueError(f"FSTGRPOTrainer.fast_evaluate: problem {key!r} is not from {self.env_id}")
        if self.multi_turn:
            played = self.play_episodes([(split, pid, NO_CONTEXT_ID, dict(context)) for _, split, pid in problems])
            rollouts = []
            for episode, *_ in played:
                rollout = episode.as_rollout(self.env_reward.return_rule)
                rollout.info["step"] = self.state.global_step
                rollouts.append(rollout)
            return rollouts
        messages = [build_messages(self.env_reward.observation(split, pid), context) for _, split, pid in problems]
        texts = self.fast_generate(messages) if self.fast_generate is not None else self._generate_texts(messages)
        if len(texts) != len(messages):
            raise ValueError(f"FSTGRPOTrainer: fast generation returned {len(texts)} texts for {len(messages)} prompts")
        return [self.env_reward.judge(split, pid, text, context_id=NO_CONTEXT_ID, context=context,
                                      step=self.state.global_step)
                for (_, split, pid), text in zip(problems, texts, strict=True)]

    # ------------------------------------------------------------------ multi-turn episodes
    def _rollout_episodes(self, prompts: list[Any], trainer: Any = None) -> dict[str, Any]:
        """TRL's ``rollout_func`` for a multi-turn env: one whole episode per row of this process's batch.

        Returns TRL's ``prompt_ids`` (the first turn's prompt), ``completion_ids`` (every turn's sampled ids with
        the chat-formatted env observations in between), ``env_mask`` (1 on sampled ids, 0 on env ids, so the loss
        only covers what the policy wrote), ``logprobs`` (the sampler's, 0 on env ids; ``None`` when TRL's
        generation gives none) and the extra column ``episode`` that :class:`EpisodeReward` scores.
        """
        rows = self._rollout_rows
        if rows is None or len(rows) != len(prompts):
            raise RuntimeError("FSTGRPOTrainer: the multi-turn rollout runs inside _generate_and_score_completions, "
                               "which sets the rows it plays")
        starts = [(str(row.get("split") or self.split), int(row["problem_id"]),
                   int(row.get("context_id", NO_CONTEXT_ID)), _context_from(row.get("context"))) for row in rows]
        played = self.play_episodes(starts)
        logprobs = [lp for *_, lp in played]
        return {"prompt_ids": [p for _, p, _, _, _ in played], "completion_ids": [c for _, _, c, _, _ in played],
                "env_mask": [m for _, _, _, m, _ in played],
                "logprobs": None if any(lp is None for lp in logprobs) else logprobs,
                "episode": [episode.without_tokens().to_dict() for episode, *_ in played]}

    def play_episodes(self, starts: Sequence[tuple[str, int, int, Mapping[str, str]]]
                      ) -> list[tuple[Episode, list[int], list[int], list[int], list[float] | None]]:
        """Play one episode per (split, problem id, context id, context) with the current model, token-exactly.

        Turn ``k+1`` is generated from exactly the ids trained on: the first prompt (TRL's own tokenisation),
        then every earlier turn's sampled ids and the chat template's user turn for each env observation
        (:meth:`user_turn_ids`). All active episodes generate in one TRL call per turn (this process only, no
        collective). An episode ends when the env terminates or truncates it, after ``max_turns`` turns, or when
        its completion would exceed ``max_episode_tokens`` (sampled + env ids; the last turn is cut there).
        Returns (episode, prompt ids, completion ids, env mask, sampler log-probs or ``None``) per start.
        """
        by_split: dict[str, list[int]] = {}
        for i, (split, *_rest) in enumerate(starts):
            by_split.setdefault(split, []).append(i)
        envs: list[gym.Env | None] = [None] * len(starts)
        for split, indices in by_split.items():
            for i, env in zip(indices, self._episode_envs.take(self.env_id, len(indices), split=split,
                                                                **self.env_kwargs), strict=True):
                envs[i] = env
        episodes, pending = [], []
        for (split, pid, cid, context), env in zip(starts, envs, strict=True):
            observation, _ = env.reset(options={"problem_id": int(pid)})
            episodes.append(Episode(group=problem_key(self.env_id, split, pid), context_id=int(cid),
                                    context=dict(context)))
            pending.append(observation)
        prompt_ids, _, _ = self._tokenize_prompts([build_messages(o, c) for o, (*_, c) in zip(pending, starts,
                                                                                              strict=True)])
        prompt_ids = [list(p) for p in prompt_ids]
        tails: list[list[int]] = [[] for _ in starts]
        masks: list[list[int]] = [[] for _ in starts]
        logprobs: list[list[float] | None] = [[] for _ in starts]
        eos = set(self.eos_token_ids)
        active = list(range(len(starts)))
        while active:
            ids_out, lps_out = self._generate_single_turn([prompt_ids[i] + tails[i] for i in active], None, {}, 1)
            still = []
            for j, i in enumerate(active):
                ids = list(ids_out[j])[: self.max_episode_tokens - len(tails[i])]
                cut = len(ids) < len(ids_out[j])
                text = self.processing_class.decode(ids, skip_special_tokens=True)
                observation, reward, terminated, truncated, info = envs[i].step(text)
                episode = episodes[i]
                turn_lps = None if lps_out is None or logprobs[i] is None else [float(x) for x in lps_out[j][:len(ids)]]
                episode.turns.append(Turn(observation=pending[i], completion=text, prompt_ids=prompt_ids[i] + tails[i],
                                          completion_ids=ids, old_logprobs=turn_lps or [], reward=float(reward),
                                          feedback=str(info.get("feedback", "")), verdict=str(info.get("verdict", "")),
                                          hint=str(info.get("hint") or "")))
                tails[i] += ids
                masks[i] += [1] * len(ids)
                logprobs[i] = None if turn_lps is None else logprobs[i] + turn_lps
                episode.terminated, episode.truncated = bool(terminated), bool(truncated)
                if episode.done:
                    continue
                if len(episode.turns) >= self.max_turns:
                    episode.truncated, episode.info["stopped"] = True, "max_turns"
                    continue
                user = self.user_turn_ids(str(observation), after_eos=bool(ids) and ids[-1] in eos)
                if cut or len(tails[i]) + len(user) >= self.max_episode_tokens:
                    episode.truncated, episode.info["stopped"] = True, "max_context"
                    continue
                tails[i] += user
                masks[i] += [0] * len(user)
                if logprobs[i] is not None:
                    logprobs[i] += [0.0] * len(user)
                pending[i] = str(observation)
                still.append(i)
            active = still
        return [(episode, prompt_ids[i], tails[i], masks[i], logprobs[i]) for i, episode in enumerate(episodes)]

    def user_turn_ids(self, observation: str, *, after_eos: bool) -> list[int]:
        """The ids that close the policy's turn and pose ``observation`` as the next user turn, up to the
        assistant's generation prompt, as the chat template writes them (``after_eos``: the sampled turn already
        ended with the eos token, which the template's end-of-turn then does not repeat)."""
        marker = "\u2063fst-assistant-turn\u2063"  # text no template writes: where the assistant content ends
        text = self.processing_class.apply_chat_template(
            [{"role": "user", "content": "."}, {"role": "assistant", "content": marker},
             {"role": "user", "content": observation}], tokenize=False, add_generation_prompt=True,
            **getattr(self, "chat_template_kwargs", None) or {})
        ids = self.processing_class(text[text.index(marker) + len(marker):], add_special_tokens=False)["input_ids"]
        if after_eos and ids and ids[0] in set(self.eos_token_ids):
            ids = ids[1:]
        return list(ids)

    def _generate_texts(self, messages: list[list[dict[str, str]]]) -> list[str]:
        """Sample one completion per prompt with TRL's own tokenisation and generation path (transformers or vLLM)."""
        prompt_ids, _, _ = self._tokenize_prompts(messages)
        chunk = self.args.per_device_train_batch_size * self.args.steps_per_generation
        completion_ids: list[list[int]] = []
        for start in range(0, len(prompt_ids), chunk):
            ids, _ = self._generate_single_turn(prompt_ids[start:start + chunk], None, {}, 1)
            completion_ids.extend(list(c) for c in ids)
        return self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ checkpoints
    def fst_state_dict(self) -> dict[str, Any]:
        """Population, fast learner, feedback buffer and counters, JSON-serialisable."""
        return {"version": _STATE_VERSION, "population": self.population.state_dict(),
                "fast": self.fast_learner.state_dict() if self.fast_learner is not None else None,
                "buffer": self.feedback_buffer.state_dict(), "counters": dict(self.fst_counters)}

    def load_fst_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`fst_state_dict`."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"FSTGRPOTrainer: unsupported fst state version {state.get('version')!r}")
        self.population.load_state_dict(state["population"])
        if self.fast_learner is not None and state.get("fast") is not None:
            self.fast_learner.load_state_dict(state["fast"])
        self.feedback_buffer.load_state_dict(state["buffer"])
        self.fst_counters = {**self.fst_counters, **{k: int(v) for k, v in state["counters"].items()}}

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder = os.path.join(self._get_output_dir(trial=trial), checkpoint)
            with open(os.path.join(folder, FST_STATE_NAME), "w", encoding="utf-8") as f:
                json.dump(self.fst_state_dict(), f)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        # The main process reads the state and sends it to every process (Trainer calls this on all of them): every
        # process resumes from the one state the main process wrote, even where its own file system lacks the file
        # (several nodes without shared storage), instead of some processes silently keeping a fresh population.
        payload: list[Any] = [None]
        if self.accelerator.is_main_process:
            path = os.path.join(checkpoint, FST_STATE_NAME)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    payload[0] = json.load(f)
        if self.accelerator.num_processes > 1:
            broadcast_object_list(payload, from_process=0)
        if payload[0] is None:
            logger.warning("FSTGRPOTrainer: %s has no %s; the population restarts from its current state",
                           checkpoint, FST_STATE_NAME)
            return
        self.load_fst_state_dict(payload[0])

__all__ = ["DEFAULT_EPSILON_HIGH", "FST_STATE_NAME", "NO_CONTEXT_ID", "SUPPORTED_TRL", "EnvReward", "EpisodeReward",
           "FSTGRPOTrainer", "FastRoundCallback", "FeedbackBuffer", "ResumableRepeatSampler", "build_messages",
           "check_trl_version", "completion_text", "env_dataset", "fst_grpo_config", "parse_problem_key",
           "problem_key", "with_context"]
