"""FSTAgent: an LLM policy with slow weights (LoRA, CISPO) and fast weights (a context population).

The algorithm in parts (what :mod:`fst_env.loop` calls, one update at a time)::

    episodes = agent.collect(problem_ids)    # G episodes per problem, contexts drawn from the population (G/K each)
    metrics = agent.slow_step(episodes)      # CISPO on every turn's tokens, one advantage per episode
    if agent.fast_due(update):               # every T updates
        metrics |= agent.fast_round()        # re-score the population, propose children from whole episodes

An episode (:mod:`fst_env.agents.episodes`) is every turn of one context's play of one problem; a single-turn
task gives one-turn episodes. The same agent is driven by a plain Gymnasium loop through a thin layer over
these parts, where each act/observe pair is a one-turn episode::

    obs, infos = envs.reset(options={"problem_id": k})      # G copies of one problem
    actions = agent.act(obs, infos)
    _, rewards, _, _, infos = envs.step(actions)
    agent.observe(rewards, infos)                            # reward + feedback per rollout
    metrics = agent.update()                                 # slow step when the batch is full; fast round every T

``RLAgent`` (slow only) and ``PromptAgent`` (fast only) are this class with one channel off, so comparisons
differ in exactly one thing.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fst_env.agents.bookkeeping import NO_CONTEXT_ID, BudgetCounters, EpisodeBuffer, fast_round_rollouts, problem_key
from fst_env.agents.demonstrations import DemonstrationFastLearner
from fst_env.agents.episodes import (
    RETURN_RULES,
    EnvPool,
    Episode,
    EpisodeLimits,
    EpisodeRunner,
    EpisodeStart,
    eval_seed,
    info_at,
    task_name,
    turn_seed,
)
from fst_env.agents.fast import TRIAL_MODES, EvidenceAcceptance, NotesFastLearner, ReflectiveFastLearner
from fst_env.agents.population import ContextPopulation
from fst_env.agents.reflection import as_reflection_lm, from_transformers
from fst_env.agents.rollout import Rollout
from fst_env.agents.slow import LOSSES, LoraSettings, SlowLearner, measure_drift
from fst_env.atomic import atomic_directory
from fst_env.backends import BACKENDS, make_backend
from fst_env.backends.base import SamplingParams
from fst_env.context import Context
from fst_env.models import Policy

DEFAULT_SEED_CONTEXT: Context = {
    "instructions": "Solve the task carefully. Think step by step, then give the final answer in the format the "
                    "task asks for.",
    "notes": "",
}


@dataclass
class FSTConfig:
    """Everything that shapes a run; the defaults follow the paper where it states them (T=6, K=4, tau=4)."""

    slow: bool = True
    fast: bool = True
    group_size: int = 8
    groups_per_step: int = 2
    fast_every: int = 6
    population_size: int = 4
    fast_learner: str = "reflective"
    fast_problems: int = 8
    fast_budget: int = 96
    proposals_per_round: int = 2
    # How a proposed child is tried: "round" (on fresh minibatch rollouts inside the fast round, GEPA's way) or
    # "collect" (as a trial context the next T collects sample beside its parent, judged at the next round on
    # those paired samples: fast rounds generate nothing, so fast_budget does not apply, and trial contexts take
    # part of the RL batch).
    fast_trials: str = "round"
    minibatch_size: int = 3
    max_new_tokens: int = 192
    max_turns: int = 8  # an episode is truncated after this many policy turns
    max_context_tokens: int = 2048  # ... or before a turn whose prompt (the conversation so far) is longer
    return_rule: str = "sum"  # an episode's return: its per-turn rewards summed, or "last"
    temperature: float = 1.0
    top_p: float = 1.0
    loss: str = "cispo"
    tau: float = 4.0
    lr: float | None = None
    kl_coef: float = 0.0
    lora_rank: int = 16
    lora_alpha: int = 32
    full_finetune: bool = False
    # The learner's forward and backward under bfloat16 autocast, LoRA weights, gradients and AdamW state in
    # float32. Off: on the main job (RL only, the cpu preset, 30 updates, seeds 0-2, the same 128 held-out problems
    # and sampling seeds, 2 AMX cores) it learned less on every seed, final accuracy -0.120 [-0.246, +0.006] over
    # seeds (gain +0.055 against +0.174 without), and saved no time at that size (slow step 2.6 vs 2.4-3.0 s).
    learner_autocast: bool = False
    micro_batch_size: int = 8
    backend: str = "fast"  # StaticCacheBackend; "hf" is the transformers reference path
    backend_kwargs: dict[str, Any] = field(default_factory=dict)
    seed_context: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SEED_CONTEXT))
    seed: int = 0

    def validate(self) -> FSTConfig:
        """Raise ValueError naming the first bad field (its value and what is allowed); returns ``self``."""
        for name in ("slow", "fast", "full_finetune", "learner_autocast"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FSTConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if not (self.slow or self.fast):
            raise ValueError("FSTConfig: at least one of slow / fast must be on")
        for name in ("group_size", "groups_per_step", "fast_every", "population_size", "fast_problems",
                     "fast_budget", "proposals_per_round", "minibatch_size", "max_new_tokens", "lora_rank",
                     "micro_batch_size", "max_turns", "max_context_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FSTConfig.{name} must be an int >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"FSTConfig.seed must be an int, got {self.seed!r}")
        _check_number("temperature", self.temperature, "> 0 (for greedy evaluation use evaluate(greedy=True))",
                      lambda v: v > 0)
        _check_number("top_p", self.top_p, "in (0, 1]", lambda v: 0 < v <= 1)
        _check_number("tau", self.tau, ">= 1 (the cap on the importance weight)", lambda v: v >= 1)
        _check_number("kl_coef", self.kl_coef, ">= 0", lambda v: v >= 0)
        _check_number("lora_alpha", self.lora_alpha, "> 0", lambda v: v > 0)
        if self.lr is not None:
            _check_number("lr", self.lr, "> 0, or unset for the default", lambda v: v > 0)
        if self.return_rule not in RETURN_RULES:
            raise ValueError(f"FSTConfig.return_rule must be one of {', '.join(RETURN_RULES)}; "
                             f"got {self.return_rule!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"FSTConfig.loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        if self.fast_learner not in ("reflective", "notes", "demonstrations"):
            raise ValueError(f"FSTConfig.fast_learner must be 'reflective', 'notes' or 'demonstrations', "
                             f"got {self.fast_learner!r}")
        if self.fast_trials not in TRIAL_MODES:
            raise ValueError(f"FSTConfig.fast_trials must be one of {', '.join(TRIAL_MODES)}; "
                             f"got {self.fast_trials!r}")
        if self.slow and self.group_size < 2:
            raise ValueError("FSTConfig.group_size must be >= 2 when the slow channel is on (advantages are "
                             "normalised within a group)")
        _check_backend(self.backend, self.backend_kwargs)
        if not isinstance(self.seed_context, Mapping) or not str(self.seed_context.get("instructions", "")).strip():
            raise ValueError("FSTConfig.seed_context must be a dict with a non-empty 'instructions' component")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.seed_context.items()):
            raise ValueError(f"FSTConfig.seed_context must map component names to strings, got {self.seed_context!r}")
        if not self.full_finetune:
            try:
                LoraSettings(rank=self.lora_rank, alpha=self.lora_alpha).validate()
            except ValueError as exc:
                raise ValueError(str(exc).replace("LoraSettings.rank", "FSTConfig.lora_rank")
                                 .replace("LoraSettings.alpha", "FSTConfig.lora_alpha")) from None
        return self


def _check_number(name: str, value: Any, allowed: str, ok: Callable[[float], bool]) -> None:
    """Raise ValueError unless ``value`` is a finite real number (not a bool or a string) for which ``ok`` holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"FSTConfig.{name} must be a finite number {allowed}, got {value!r}")


#: Where each backend's keyword arguments are declared: (module under fst_env.backends, class, leading
#: parameters make_backend fills itself: self, and the policy for backends built on one).
_BACKEND_SIGNATURES = {"fast": ("static", "StaticCacheBackend", 2), "hf": ("hf", "HFBackend", 2),
                       "openai": ("openai", "OpenAIBackend", 1), "vllm": ("vllm", "VLLMBackend", 2)}


def _check_backend(name: Any, kwargs: Any) -> None:
    """Raise ValueError for a backend name not in BACKENDS, or kwargs its constructor would not accept."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"FSTConfig.backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"FSTConfig.backend_kwargs must be a table with string keys, got {kwargs!r}")
    if name not in _BACKEND_SIGNATURES:  # a backend added to BACKENDS without an entry here: its own checks apply
        return
    module_name, class_name, filled = _BACKEND_SIGNATURES[name]
    module = importlib.import_module(f"fst_env.backends.{module_name}")
    parameters = list(inspect.signature(getattr(module, class_name).__init__).parameters.values())[filled:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return  # forwards any further keyword (vLLM's engine arguments): the engine checks them
    accepted = [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                and not (name == "openai" and p.name in ("tokenizer", "sleep"))]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"FSTConfig.backend_kwargs: {', '.join(map(repr, unknown))} not accepted by backend "
                         f"{name!r}; allowed: {', '.join(accepted) or 'none'}")
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.name in accepted
               and p.name not in kwargs]
    if missing:
        raise ValueError(f"FSTConfig.backend_kwargs: backend {name!r} needs {', '.join(missing)}")


#: Most episodes an evaluation plays at once (one env each).
EVAL_CHUNK = 64

#: The agent's own budget counters, besides the fast-round ones every :class:`BudgetCounters` holds (a checkpoint
#: restores them; one from an older version lacks some: they start at 0).
_COUNTERS: dict[str, float] = {"update": 0, "slow_steps": 0, "fast_rounds": 0, "rl_samples": 0, "rl_turns": 0,
                               "fast_rollouts": 0, "reflection_calls": 0, "skipped_steps": 0, "wall_time_s": 0.0}


class FSTAgent:
    """Holds the policy, the context population and both learners; see the module docstring for the loop."""

    def __init__(self, policy: Policy, env_id: str, config: FSTConfig | None = None, *,
                 env_kwargs: Mapping[str, Any] | None = None,
                 reflection_lm: Callable[[str], str] | None = None) -> None:
        self.config = (config or FSTConfig()).validate()
        self.policy = policy
        self.rng = random.Random(self.config.seed)
        # Fast rounds sample from their own stream, so the training episodes (drawn from self.rng) are the same
        # whether or not the fast channel ran: FST and RL-only differ only by what an accepted context changed.
        self.fast_rng = random.Random(f"fast-round:{self.config.seed}")
        torch.manual_seed(self.config.seed)
        c = self.config
        self.slow = SlowLearner(policy, lora=None if c.full_finetune else LoraSettings(rank=c.lora_rank,
                                alpha=c.lora_alpha), lr=c.lr, loss=c.loss, tau=c.tau, kl_coef=c.kl_coef,
                                micro_batch_size=c.micro_batch_size, temperature=c.temperature or 1.0,
                                seed=c.seed, return_rule=c.return_rule, autocast=c.learner_autocast) if c.slow else None
        self.backend = make_backend(c.backend, policy, **c.backend_kwargs)
        if self.slow is not None and not getattr(self.backend, "trainable", True):
            raise ValueError(f"FSTConfig.backend: {c.backend!r} serves frozen weights; the slow channel needs a "
                             "backend that samples from the weights being trained ('hf' or 'vllm')")
        self.population = ContextPopulation(dict(c.seed_context), max_size=c.population_size)
        self.fast = None
        if c.fast:
            # A child must win a sign test on 4 samples per minibatch problem, not one lucky sample.
            evidence: dict[str, Any] = dict(acceptance=EvidenceAcceptance(), minibatch_samples=4,
                                            trials=c.fast_trials)
            if c.fast_learner == "demonstrations":
                tokenizer = policy.tokenizer
                self.fast = DemonstrationFastLearner(
                    minibatch_size=c.minibatch_size, proposals_per_round=c.proposals_per_round,
                    budget_metric_calls=c.fast_budget, seed=c.seed, **evidence,
                    count_tokens=lambda text: len(tokenizer(text, add_special_tokens=False).input_ids))
            elif c.fast_learner == "notes":
                self.fast = NotesFastLearner(minibatch_size=c.minibatch_size, proposals_per_round=c.proposals_per_round,
                                             budget_metric_calls=c.fast_budget, seed=c.seed, **evidence)
            else:
                lm = as_reflection_lm(reflection_lm) if reflection_lm is not None else from_transformers(
                    policy.model, policy.tokenizer, disable_adapter=True)
                self.fast = ReflectiveFastLearner(lm, minibatch_size=c.minibatch_size,
                                                  proposals_per_round=c.proposals_per_round,
                                                  budget_metric_calls=c.fast_budget, seed=c.seed, **evidence)
        self.envs = EnvPool()  # plain envs episodes are played on, made once per (task, kwargs)
        self.runner = EpisodeRunner(self.backend, EpisodeLimits(c.max_turns, c.max_context_tokens),
                                    self._count_tokens, self._group_key)
        self.set_task(env_id, **dict(env_kwargs or {}))
        self.pending: list[Episode] = []   # acted on, not yet observed (the act/observe layer)
        self.batch: list[Episode] = []     # observed, waiting for the next update (the act/observe layer)
        # The episodes the next fast round draws its problems and evidence from (text only, see _seen).
        self.recent = EpisodeBuffer(4 * c.group_size * c.groups_per_step * c.fast_every)
        self.counters = BudgetCounters(_COUNTERS)

    @property
    def backend(self) -> Any:
        """The generation backend every rollout, fast-round and evaluation episode is sampled from."""
        return self._backend

    @backend.setter
    def backend(self, backend: Any) -> None:
        # The episode runner samples through the agent's backend: a backend swapped after construction (a
        # wrapper, a served engine) must reach it too, not only the agent's attribute.
        self._backend = backend
        if getattr(self, "runner", None) is not None:
            self.runner.backend = backend

    # ------------------------------------------------------------------ tasks and prompts
    def set_task(self, env_id: str, **env_kwargs: Any) -> None:
        """Train on ``env_id`` from now on (continual learning hands the same agent from task to task)."""
        self.env_id, self.env_kwargs = env_id, env_kwargs

    def prompt_for(self, observation: str, context: Context) -> str:
        """The chat-formatted prompt of a first turn: the context as the system message, the observation as the
        user's (the one-turn case of :meth:`Episode.messages`)."""
        return self.backend.apply_chat_template(Episode("", -1, dict(context)).messages(observation))

    def sampling(self, rng: random.Random | None = None) -> SamplingParams:
        """Training sampling parameters, with a fresh seed drawn from ``rng`` (default: the agent's RNG; one per
        generate call)."""
        c = self.config
        return SamplingParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                              seed=(rng or self.rng).randrange(2**31))

    def _fast_sampling(self) -> SamplingParams:
        """Sampling parameters of a fast-round episode: seeds from the fast rounds' own stream."""
        return self.sampling(self.fast_rng)

    # ------------------------------------------------------------------ the algorithm's parts
    def collect(self, problem_ids: Sequence[int]) -> list[Episode]:
        """Play ``group_size`` episodes of each problem of the current task (train split unless the task's kwargs
        say otherwise), contexts drawn from the population (G/K each), all episodes' turns generated together.

        Returns the episodes (those of one problem form one group); they are also kept for the next fast round.
        """
        c = self.config
        ids = list(dict.fromkeys(int(p) for p in problem_ids))
        envs = self.envs.take(self.env_id, c.group_size * len(ids), **self.env_kwargs)
        starts: list[EpisodeStart] = []
        for n, problem_id in enumerate(ids):
            contexts = self._assign_contexts(c.group_size)
            starts += [EpisodeStart(envs[n * c.group_size + j], {"problem_id": problem_id}, cid,
                                    self.population.context(cid)) for j, cid in enumerate(contexts)]
        start = time.perf_counter()
        episodes = self.runner.play(starts, self.sampling)
        # Wall time covers generation and env steps too, not only the update; evaluation is not training time.
        self.counters["wall_time_s"] += time.perf_counter() - start
        self._seen(episodes)
        return episodes

    def slow_step(self, episodes: Sequence[Episode]) -> dict[str, Any]:
        """One update's slow step on these episodes (skipped when the slow channel is off) and the rollout
        metrics; counts the update. Returns ``rollout/*``, ``slow/*``, ``budget/*`` and ``population/size``."""
        start = time.perf_counter()
        self.counters["update"] += 1
        rule = self.config.return_rule
        turns = [t for e in episodes for t in e.turns]
        metrics: dict[str, Any] = {
            "rollout/reward_mean": float(np.mean([e.episode_return(rule) for e in episodes])),
            "rollout/correct_frac": float(np.mean([e.verdict == "correct" for e in episodes])),
            # Turns the env could not score: a broken judge or reward function shows here.
            "rollout/error_rate": float(np.mean([t.verdict == "error" for t in turns])) if turns else 0.0,
            "rollout/timeout_rate": float(np.mean([t.verdict == "timeout" for t in turns])) if turns else 0.0,
            "rollout/turns_mean": float(np.mean([len(e.turns) for e in episodes])),
            "rollout/truncated_frac": float(np.mean([e.truncated for e in episodes]))}
        if self.slow is not None:
            slow_metrics = self.slow.step(list(episodes))
            metrics.update({f"slow/{k}": v for k, v in slow_metrics.items()})
            # A step with nothing to train on (every group zero-variance) is counted apart from the ones that trained.
            name = "skipped_steps" if bool(slow_metrics.get("skipped", 0)) else "slow_steps"
            self.counters[name] += 1
            self.backend.update_weights()  # a backend with its own copy of the weights (vLLM) syncs; HF: no-op
        self.counters["wall_time_s"] += time.perf_counter() - start
        metrics.update(self.budget())
        return metrics

    def fast_round(self) -> dict[str, Any]:
        """One fast round: the fast learner re-scores the population under the current weights and proposes
        children from the recent episodes (whole transcripts with every turn's feedback). Returns the round's
        metrics (unprefixed; empty when the fast channel is off)."""
        if self.fast is None:
            return {}
        start = time.perf_counter()
        c = self.config
        keys = self.recent.problem_keys(c.fast_problems)
        episodes = list(self.recent)
        recent = [e.as_rollout(c.return_rule) for e in episodes]
        for episode, rollout in zip(episodes, recent, strict=True):  # evidence and trial pairs share weights
            rollout.info["weights_version"] = episode.info.get("weights_version")
        # Only episodes sampled under the current weights may stand in for the round's own rollouts: after a slow
        # step none are, so the parent is judged on fresh samples like its child (older ones would favour any
        # child of a policy that has improved since).
        evidence = [r for r in recent if r.info["weights_version"] == self.weights_version]
        round_metrics = self.fast.round(self.population, self._evaluate, recent, keys, evidence=evidence)
        self.counters.count_fast_round(round_metrics)
        self.counters["wall_time_s"] += time.perf_counter() - start
        return dict(round_metrics)

    def fast_due(self, update: int) -> bool:
        """True when update number ``update`` (1-based) ends with a fast round: every ``fast_every`` updates."""
        return self.fast is not None and update % self.config.fast_every == 0

    def budget(self) -> dict[str, Any]:
        """The budget counters as ``budget/*`` metrics, plus ``population/size``."""
        return {**self.counters.as_metrics(), "population/size": len(self.population)}

    # ------------------------------------------------------------------ act / observe / update: the README loop
    def act(self, observations: Sequence[str], infos: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
            ) -> list[str]:
        """Completions for a batch of observations (a vector env's); rollouts sharing a problem form one group.

        Each act/observe pair is a one-turn episode of the same code as :meth:`collect`'s; a multi-turn env
        trains on whole episodes through :meth:`collect` (what :func:`fst_env.train` does).
        """
        if self.pending:
            raise RuntimeError("FSTAgent.act: the previous actions were not observed; call observe() first")
        groups = [self._group_key(obs, info_at(infos, i)) for i, obs in enumerate(observations)]
        context_ids: list[int] = [0] * len(groups)
        for group in dict.fromkeys(groups):
            members = [i for i, g in enumerate(groups) if g == group]
            for i, cid in zip(members, self._assign_contexts(len(members)), strict=True):
                context_ids[i] = cid
        episodes = [Episode(group=g, context_id=cid, context=dict(self.population.context(cid)))
                    for g, cid in zip(groups, context_ids, strict=True)]
        start = time.perf_counter()
        texts = self.runner.respond(episodes, [str(o) for o in observations], self.sampling)
        self.counters["wall_time_s"] += time.perf_counter() - start
        self.pending = episodes
        return [str(t) for t in texts]

    def observe(self, rewards: Sequence[float], infos: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        """Attach each rollout's reward, feedback, verdict and hint (from ``env.step``) to what :meth:`act` made."""
        if len(rewards) != len(self.pending):
            raise ValueError(f"FSTAgent.observe: {len(rewards)} rewards for {len(self.pending)} pending actions")
        for i, episode in enumerate(self.pending):
            self.runner.record(episode, "", float(rewards[i]), True, False, info_at(infos, i))
        self.batch.extend(self.pending)
        self._seen(self.pending)
        self.pending = []

    def update(self) -> dict[str, Any]:
        """Once ``groups_per_step`` groups are observed: :meth:`slow_step`, then :meth:`fast_round` when due.

        Returns the metrics of what ran (empty when the batch is not full yet); fast-round keys are ``fast/*``.
        """
        if len({e.group for e in self.batch}) < self.config.groups_per_step:
            return {}
        batch, self.batch = self.batch, []
        metrics = self.slow_step(batch)
        if self.fast_due(self.counters["update"]):
            metrics.update({f"fast/{k}": v for k, v in self.fast_round().items()})
            metrics.update(self.budget())
        return metrics

    # ------------------------------------------------------------------ generation and evaluation
    def _assign_contexts(self, n: int) -> list[int]:
        """Context ids for ``n`` rollouts of one problem: the population's G/K split, in a random order."""
        assigned = self.population.assign_group(n, self.rng)
        self.rng.shuffle(assigned)
        return assigned

    def _seen(self, episodes: Sequence[Episode]) -> None:
        """Count played episodes and keep them (text only: fast rounds need no token ids) for the next fast round."""
        self.counters["rl_samples"] += len(episodes)
        self.counters["rl_turns"] += sum(len(e.turns) for e in episodes)
        kept = [e.without_tokens() for e in episodes]
        for episode in kept:
            episode.info["weights_version"] = self.weights_version
        self.recent.extend(kept)

    @property
    def weights_version(self) -> int:
        """How many slow steps have changed the weights so far: episodes sampled under equal versions are
        comparable (a fast-only agent's weights never change)."""
        return int(self.counters["slow_steps"])

    def _count_tokens(self, prompt: str) -> int:
        return len(self.policy.tokenizer(prompt, add_special_tokens=False).input_ids)

    def _evaluate(self, context: Context, problem_keys: list[str]) -> list[Rollout]:
        """Fast-round evaluation: the current policy with ``context``, one whole episode per problem key."""
        return fast_round_rollouts(context, problem_keys, self._play_problems, return_rule=self.config.return_rule)

    def _play_problems(self, problems: list[tuple[str, str, int]], context: Context) -> list[Episode]:
        """One episode per (env id, split, problem id) under ``context`` (not a population member), played together."""
        wanted: dict[tuple[str, str], int] = {}
        for env_id, split, _ in problems:
            wanted[(env_id, split)] = wanted.get((env_id, split), 0) + 1
        pools = {(env_id, split): iter(self.envs.take(env_id, n, **{**self._kwargs_for(env_id), "split": split}))
                 for (env_id, split), n in wanted.items()}
        starts = [EpisodeStart(next(pools[(env_id, split)]), {"problem_id": problem_id}, NO_CONTEXT_ID,
                               dict(context), group=problem_key(env_id, split, problem_id))
                  for env_id, split, problem_id in problems]
        return self.runner.play(starts, self._fast_sampling)

    def _kwargs_for(self, env_id: str) -> dict[str, Any]:
        return dict(self.env_kwargs) if env_id == self.env_id else {}

    def evaluate(self, env_id: str | None = None, *, split: str = "validation", problems: int = 16, k: int = 1,
                 context: Context | None = None, greedy: bool = False, confidence: float = 0.95,
                 **env_kwargs: Any) -> dict[str, Any]:
        """mean@k accuracy (and mean reward) of the current weights with ``context`` (default: the best
        context; pass ``{}`` for none) on the first ``problems`` problems of ``split`` (all, if it has fewer).
        Each sample is a whole episode: correct when its last turn's verdict is, its reward the episode's return.

        Common random numbers: sample ``j`` of problem ``p`` is drawn with its own seed
        :func:`eval_seed` ``(config.seed, task, split, p, j)`` (its later turns with
        :func:`~fst_env.agents.episodes.turn_seed` of it; per-row seeds in batched calls where the backend
        supports them, else one call per sample and turn), never from the agent's RNG, so every arm and
        every evaluation point sees the same problems with the same sampling seeds, whatever training drew
        before (a fast round, a different number of slow steps). ``greedy`` (or ``temperature == 0``) decodes
        greedily: one sample per problem (``k`` is 1 then). Returns ``accuracy`` (mean@k), ``ci_low`` /
        ``ci_high`` (Wilson interval at ``confidence`` over the ``n`` problems, see
        :func:`fst_env.metrics.accuracy_with_interval`), ``n`` (= ``problems``), ``k``, ``greedy``,
        ``reward_mean`` and ``per_problem`` (each problem's mean correctness, in problem order, for
        :func:`fst_env.metrics.paired_difference` between arms).
        """
        from fst_env.stats import accuracy_with_interval

        env_id = env_id or self.env_id
        kwargs = env_kwargs or (self.env_kwargs if env_id == self.env_id else {})
        make = {**kwargs, "split": split}
        context = self.population.best().context if context is None else context
        problems = min(problems, self.envs.take(env_id, 1, **make)[0].unwrapped.num_problems())  # small: used whole
        c = self.config
        greedy = greedy or c.temperature == 0
        k = 1 if greedy else k
        rows = [p for p in range(problems) for _ in range(k)]  # (problem, sample) in problem order

        def starts(problem_ids: Sequence[int]) -> list[EpisodeStart]:
            envs = self.envs.take(env_id, len(problem_ids), **make)
            return [EpisodeStart(env, {"problem_id": p}, NO_CONTEXT_ID, dict(context),
                                 group=problem_key(env_id, split, p))
                    for env, p in zip(envs, problem_ids, strict=True)]

        episodes: list[Episode] = []
        sampling = {"max_new_tokens": c.max_new_tokens, "temperature": c.temperature, "top_p": c.top_p}
        task = task_name(env_id, kwargs)
        seeds = [eval_seed(c.seed, task, split, p, i % k) for i, p in enumerate(rows)]
        row_seeds = getattr(self.backend, "supports_row_seeds", False)
        if greedy or row_seeds:
            # Greedy decoding is deterministic and row seeds make each row's noise its own, so chunking the
            # episodes (at most EVAL_CHUNK envs at once) cannot change what is sampled.
            for at in range(0, len(rows), EVAL_CHUNK):
                chunk = rows[at:at + EVAL_CHUNK]
                params = SamplingParams(max_new_tokens=c.max_new_tokens, temperature=0.0) if greedy \
                    else SamplingParams(**sampling)
                episodes += self.runner.play(starts(chunk), lambda params=params: params,
                                             None if greedy else seeds[at:at + len(chunk)])
        else:  # one episode at a time, each turn's call seeded with that turn's seed
            for p, seed in zip(rows, seeds, strict=True):
                turn = itertools.count()
                episodes += self.runner.play(starts([p]), lambda seed=seed, turn=turn: SamplingParams(
                    **sampling, seed=turn_seed(seed, next(turn))))
        rewards = [e.episode_return(c.return_rule) for e in episodes]
        correct = [float(e.verdict == "correct") for e in episodes]
        scored = accuracy_with_interval(np.asarray(correct).reshape(problems, k), confidence)
        return {**scored, "reward_mean": float(np.mean(rewards)), "problems": problems, "greedy": greedy,
                "confidence": confidence}

    def kl_drift(self, prompts: Sequence[str], *, max_new_tokens: int = 128, samples: int = 1,
                 context: Context | None = None, seed: int = 0, micro_batch_size: int = 8) -> dict[str, float]:
        """KL(policy || base) and entropy per token on completions sampled for ``prompts`` (env observations,
        wrapped with ``context``: ``None`` the best context, ``{}`` none), ``samples`` each at the training
        temperature (1.0 when it is 0) with no top-p, so the visited positions are samples of the policy.

        The measurement is the slow learner's :meth:`~fst_env.agents.slow.SlowLearner.drift` (exact KL over the
        vocabulary against the adapter-disabled module or the frozen reference, no second copy with LoRA); with
        the slow channel off nothing is trained and the KL is exactly 0. See :func:`fst_env.agents.slow.
        measure_drift` for the keys.
        """
        if isinstance(prompts, str) or not prompts:
            raise ValueError("policy_kl_and_entropy: prompts must be a non-empty list of str")
        if samples < 1 or micro_batch_size < 1:
            raise ValueError(f"policy_kl_and_entropy: samples and micro_batch_size must be >= 1, "
                             f"got {samples} and {micro_batch_size}")
        context = self.population.best().context if context is None else context
        temperature = float(self.config.temperature) or 1.0
        chat = [self.prompt_for(str(p), context) for p in prompts for _ in range(samples)]
        generations = self.backend.generate(chat, SamplingParams(max_new_tokens=max_new_tokens,
                                                                 temperature=temperature, seed=seed))
        if self.slow is not None:
            return self.slow.drift(generations, micro_batch_size=micro_batch_size)
        pad = self.policy.tokenizer.pad_token_id
        return measure_drift(self.policy.model, generations, base=None, temperature=temperature,
                             pad_id=pad if pad is not None else 0, device=self.policy.device,
                             micro_batch_size=micro_batch_size)

    def _group_key(self, observation: str, info: Mapping[str, Any]) -> str:
        if info.get("problem_id") is not None:
            return problem_key(self.env_id, info.get("split", "train"), info["problem_id"])
        # No problem id: group by the observation text; "text" is no split, so this key never parses as a
        # problem key and a fast round cannot replay it.
        return f"{self.env_id}/text/{abs(hash(observation)) % 10**12}"

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | Path) -> Path:
        """Write adapter, optimizer, population, fast learner and RNG states atomically to ``directory``."""
        if self.pending:
            raise RuntimeError("FSTAgent.save: actions are pending; call observe() first")

        def write(tmp: Path) -> None:
            if self.slow is not None:
                self.slow.save(tmp / "slow")
            state = {"config": asdict(self.config), "env_id": self.env_id, "env_kwargs": self.env_kwargs,
                     "counters": self.counters, "population": self.population.state_dict(),
                     "fast": self.fast.state_dict() if self.fast is not None else None,
                     "rng": _rng_to_json(self.rng.getstate()), "fast_rng": _rng_to_json(self.fast_rng.getstate()),
                     "batch": [e.to_dict() for e in self.batch],
                     "recent": self.recent.state_dict()}
            (tmp / "agent.json").write_text(json.dumps(state))
            torch.save(torch.get_rng_state(), tmp / "torch_rng.pt")

        return atomic_directory(directory, write)

    def load(self, directory: str | Path) -> None:
        """Restore what :meth:`save` wrote; the next update is the one the saved run would have made.

        A checkpoint from before episodes (rollout records, fewer counters) loads too: a rollout is a one-turn
        episode and a missing counter starts at 0.
        """
        directory = Path(directory)
        state = json.loads((directory / "agent.json").read_text())
        if self.slow is not None:
            self.slow.load(directory / "slow")
            self.backend.update_weights()
        self.set_task(state["env_id"], **state["env_kwargs"])
        self.counters.restore(state["counters"])
        self.population.load_state_dict(state["population"])
        if self.fast is not None and state["fast"] is not None:
            self.fast.load_state_dict(state["fast"])
        self.rng.setstate(_rng_from_json(state["rng"]))
        if "fast_rng" in state:  # checkpoints before the fast rounds' own stream keep its fresh state
            self.fast_rng.setstate(_rng_from_json(state["fast_rng"]))
        self.batch = [Episode.from_dict(e) for e in state["batch"]]
        self.recent.load_state_dict(state["recent"])  # a list of episode dicts in checkpoints before the buffer
        torch.set_rng_state(torch.load(directory / "torch_rng.pt", weights_only=True))

    def close(self) -> None:
        """Close the envs episodes were played on (a finished stage or run)."""
        self.envs.close()


class RLAgent(FSTAgent):
    """FSTAgent with the fast channel off: RL on the weights only, the seed context fixed."""

    def __init__(self, policy: Policy, env_id: str, config: FSTConfig | None = None, **kwargs: Any) -> None:
        super().__init__(policy, env_id, replace(config or FSTConfig(), fast=False, slow=True), **kwargs)


class PromptAgent(FSTAgent):
    """FSTAgent with the slow channel off: context evolution on frozen weights only (GEPA-style)."""

    def __init__(self, policy: Policy, env_id: str, config: FSTConfig | None = None, **kwargs: Any) -> None:
        super().__init__(policy, env_id, replace(config or FSTConfig(), fast=True, slow=False), **kwargs)


def _rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss
