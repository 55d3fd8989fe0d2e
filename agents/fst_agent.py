"""FSTAgent: an LLM policy with slow weights (LoRA, CISPO) and fast weights (a context population).

Driven by an ordinary RL loop::

    obs, infos = envs.reset(options={"problem_id": k})      # G copies of one problem
    actions = agent.act(obs, infos)                          # contexts drawn from the population, G/K each
    _, rewards, _, _, infos = envs.step(actions)
    agent.observe(rewards, infos)                            # reward + feedback per rollout
    metrics = agent.update()                                 # slow step when the batch is full; fast round every T

``RLAgent`` (slow only) and ``PromptAgent`` (fast only) are this class with one channel off, so comparisons
differ in exactly one thing.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from fst_env.agents.demonstrations import DemonstrationFastLearner
from fst_env.agents.fast import EvidenceAcceptance, NotesFastLearner, ReflectiveFastLearner
from fst_env.agents.population import ContextPopulation
from fst_env.agents.reflection import as_reflection_lm, from_transformers
from fst_env.agents.rollout import Rollout
from fst_env.agents.slow import LOSSES, LoraSettings, SlowLearner
from fst_env.backends import BACKENDS, make_backend
from fst_env.backends.base import SamplingParams
from fst_env.context import Context, render_context
from fst_env.models import Policy, atomic_directory

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
    minibatch_size: int = 3
    max_new_tokens: int = 192
    temperature: float = 1.0
    top_p: float = 1.0
    loss: str = "cispo"
    tau: float = 4.0
    lr: float | None = None
    kl_coef: float = 0.0
    lora_rank: int = 16
    lora_alpha: int = 32
    full_finetune: bool = False
    micro_batch_size: int = 8
    backend: str = "fast"  # StaticCacheBackend; "hf" is the transformers reference path
    backend_kwargs: dict[str, Any] = field(default_factory=dict)
    seed_context: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SEED_CONTEXT))
    seed: int = 0

    def validate(self) -> FSTConfig:
        """Raise ValueError naming the first bad field (its value and what is allowed); returns ``self``."""
        for name in ("slow", "fast", "full_finetune"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FSTConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if not (self.slow or self.fast):
            raise ValueError("FSTConfig: at least one of slow / fast must be on")
        for name in ("group_size", "groups_per_step", "fast_every", "population_size", "fast_problems",
                     "fast_budget", "proposals_per_round", "minibatch_size", "max_new_tokens", "lora_rank",
                     "micro_batch_size"):
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
        if self.loss not in LOSSES:
            raise ValueError(f"FSTConfig.loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        if self.fast_learner not in ("reflective", "notes", "demonstrations"):
            raise ValueError(f"FSTConfig.fast_learner must be 'reflective', 'notes' or 'demonstrations', "
                             f"got {self.fast_learner!r}")
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


class FSTAgent:
    """Holds the policy, the context population and both learners; see the module docstring for the loop."""

    def __init__(self, policy: Policy, env_id: str, config: FSTConfig | None = None, *,
                 env_kwargs: Mapping[str, Any] | None = None,
                 reflection_lm: Callable[[str], str] | None = None) -> None:
        self.config = (config or FSTConfig()).validate()
        self.policy = policy
        self.rng = random.Random(self.config.seed)
        torch.manual_seed(self.config.seed)
        c = self.config
        self.slow = SlowLearner(policy, lora=None if c.full_finetune else LoraSettings(rank=c.lora_rank,
                                alpha=c.lora_alpha), lr=c.lr, loss=c.loss, tau=c.tau, kl_coef=c.kl_coef,
                                micro_batch_size=c.micro_batch_size, temperature=c.temperature or 1.0,
                                seed=c.seed) if c.slow else None
        self.backend = make_backend(c.backend, policy, **c.backend_kwargs)
        if self.slow is not None and not getattr(self.backend, "trainable", True):
            raise ValueError(f"FSTConfig.backend: {c.backend!r} serves frozen weights; the slow channel needs a "
                             "backend that samples from the weights being trained ('hf' or 'vllm')")
        self.population = ContextPopulation(dict(c.seed_context), max_size=c.population_size)
        self.fast = None
        if c.fast:
            # A child must win a sign test on 4 samples per minibatch problem, not one lucky sample.
            evidence: dict[str, Any] = dict(acceptance=EvidenceAcceptance(), minibatch_samples=4)
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
        self.set_task(env_id, **dict(env_kwargs or {}))
        self.pending: list[Rollout] = []   # acted on, not yet observed
        self.batch: list[Rollout] = []     # observed, waiting for the next slow step
        self.recent: deque[Rollout] = deque(maxlen=4 * c.group_size * c.groups_per_step * c.fast_every)
        self.counters = {"update": 0, "slow_steps": 0, "fast_rounds": 0, "rl_samples": 0, "fast_rollouts": 0,
                         "reflection_calls": 0, "skipped_steps": 0, "wall_time_s": 0.0}

    # ------------------------------------------------------------------ tasks and prompts
    def set_task(self, env_id: str, **env_kwargs: Any) -> None:
        """Train on ``env_id`` from now on (continual learning hands the same agent from task to task)."""
        self.env_id, self.env_kwargs = env_id, env_kwargs
        self._eval_envs: dict[tuple[str, str], gym.Env] = {}

    def prompt_for(self, observation: str, context: Context) -> str:
        """The chat-formatted prompt: the context as the system message, the observation as the user's."""
        system = render_context(context)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": observation}]
        return self.backend.apply_chat_template(messages)

    def sampling(self) -> SamplingParams:
        c = self.config
        return SamplingParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                              seed=self.rng.randrange(2**31))

    # ------------------------------------------------------------------ the RL loop API
    def act(self, observations: Sequence[str], infos: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
            ) -> list[str]:
        """Completions for a batch of observations; rollouts sharing a problem form one group."""
        if self.pending:
            raise RuntimeError("FSTAgent.act: the previous actions were not observed; call observe() first")
        groups = [self._group_key(obs, _info_at(infos, i)) for i, obs in enumerate(observations)]
        context_ids: list[int] = [0] * len(groups)
        for group in dict.fromkeys(groups):
            members = [i for i, g in enumerate(groups) if g == group]
            assigned = self.population.assign_group(len(members), self.rng)
            self.rng.shuffle(assigned)
            for i, cid in zip(members, assigned, strict=True):
                context_ids[i] = cid
        start = time.perf_counter()
        rollouts = self._generate(list(observations), groups, context_ids)
        # Wall time covers generation too (act), not only the update; evaluation is not training time.
        self.counters["wall_time_s"] += time.perf_counter() - start
        self.pending = rollouts
        self.counters["rl_samples"] += len(rollouts)
        return [r.completion for r in rollouts]

    def observe(self, rewards: Sequence[float], infos: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        """Attach each rollout's reward, feedback and verdict (from ``env.step``) to what :meth:`act` produced."""
        if len(rewards) != len(self.pending):
            raise ValueError(f"FSTAgent.observe: {len(rewards)} rewards for {len(self.pending)} pending actions")
        for i, rollout in enumerate(self.pending):
            info = _info_at(infos, i)
            rollout.reward = float(rewards[i])
            rollout.feedback = str(info.get("feedback", ""))
            rollout.verdict = str(info.get("verdict", ""))
            if info.get("hint"):  # the answer-free channel the fast learners prefer over the feedback
                rollout.info["hint"] = str(info["hint"])
            if info.get("error"):  # why the env could not score it (a broken reward function, a judge crash)
                rollout.info["error"] = str(info["error"])
        self.batch.extend(self.pending)
        self.recent.extend(self.pending)
        self.pending = []

    def update(self) -> dict[str, Any]:
        """A slow step once ``groups_per_step`` groups are observed, and a fast round every ``fast_every`` updates.

        Returns the metrics of what ran (empty when the batch is not full yet).
        """
        c = self.config
        if len({r.group for r in self.batch}) < c.groups_per_step:
            return {}
        start = time.perf_counter()
        batch, self.batch = self.batch, []
        self.counters["update"] += 1
        metrics: dict[str, Any] = {"rollout/reward_mean": float(np.mean([r.reward for r in batch])),
                                   "rollout/correct_frac": float(np.mean([r.verdict == "correct" for r in batch])),
                                   # Rollouts the env could not score: a broken judge or reward function shows here.
                                   "rollout/error_rate": float(np.mean([r.verdict == "error" for r in batch])),
                                   "rollout/timeout_rate": float(np.mean([r.verdict == "timeout" for r in batch]))}
        if self.slow is not None:
            slow_metrics = self.slow.step(batch)
            metrics.update({f"slow/{k}": v for k, v in slow_metrics.items()})
            # A step with nothing to train on (every group zero-variance) is counted apart from the ones that trained.
            skipped = bool(slow_metrics.get("skipped", 0))
            name = "skipped_steps" if skipped else "slow_steps"
            self.counters[name] = self.counters.get(name, 0) + 1  # .get: a checkpoint from before this counter
            self.backend.update_weights()  # a backend with its own copy of the weights (vLLM) syncs; HF: no-op
        if self.fast is not None and self.counters["update"] % c.fast_every == 0:
            keys = list(dict.fromkeys(r.group for r in reversed(self.recent)))[: c.fast_problems]
            round_metrics = self.fast.round(self.population, self._evaluate, list(self.recent), keys)
            self.counters["fast_rounds"] += 1
            self.counters["fast_rollouts"] += int(round_metrics.get("metric_calls", 0))
            self.counters["reflection_calls"] += int(round_metrics.get("reflection_calls", 0))
            metrics.update({f"fast/{k}": v for k, v in round_metrics.items()})
        self.counters["wall_time_s"] += time.perf_counter() - start
        metrics.update({f"budget/{k}": v for k, v in self.counters.items()})
        metrics["population/size"] = len(self.population)
        return metrics

    # ------------------------------------------------------------------ generation and evaluation
    def _generate(self, observations: list[str], groups: list[str], context_ids: list[int]) -> list[Rollout]:
        contexts = [self.population.context(cid) for cid in context_ids]
        prompts = [self.prompt_for(obs, ctx) for obs, ctx in zip(observations, contexts, strict=True)]
        generations = self.backend.generate(prompts, self.sampling())
        return [Rollout(group=g, problem=obs, context_id=cid, context=dict(ctx), completion=gen.text,
                        prompt_ids=list(gen.prompt_ids), completion_ids=list(gen.completion_ids),
                        old_logprobs=list(gen.logprobs))
                for g, obs, cid, ctx, gen in zip(groups, observations, context_ids, contexts, generations, strict=True)]

    def _evaluate(self, context: Context, problem_keys: list[str]) -> list[Rollout]:
        """Fast-round evaluation: the current policy with ``context`` on each problem key (one rollout each)."""
        observations = [self._problem_env(key)[0].reset(options={"problem_id": self._problem_env(key)[1]})[0]
                        for key in problem_keys]
        prompts = [self.prompt_for(obs, context) for obs in observations]
        rollouts = []
        for key, obs, gen in zip(problem_keys, observations, self.backend.generate(prompts, self.sampling()),
                                 strict=True):
            env, problem_id = self._problem_env(key)
            env.reset(options={"problem_id": problem_id})
            _, reward, _, _, info = env.step(gen.text)
            rollouts.append(Rollout(group=key, problem=obs, context_id=-1, context=dict(context),
                                    completion=gen.text, reward=float(reward), feedback=info["feedback"],
                                    verdict=info["verdict"], info={"hint": str(info.get("hint") or "")}))
        return rollouts

    def evaluate(self, env_id: str | None = None, *, split: str = "validation", problems: int = 16, k: int = 1,
                 context: Context | None = None, greedy: bool = False, confidence: float = 0.95,
                 **env_kwargs: Any) -> dict[str, Any]:
        """mean@k accuracy (and mean reward) of the current weights with ``context`` (default: the best
        context; pass ``{}`` for none) on the first ``problems`` problems of ``split`` (all, if it has fewer).

        Common random numbers: sample ``j`` of problem ``p`` is drawn with its own seed
        :func:`eval_seed` ``(config.seed, task, split, p, j)`` (a per-row seed in one batched call where the backend
        supports it, else a call of its own), never from the agent's RNG, so every arm and
        every evaluation point sees the same problems with the same sampling seeds, whatever training drew
        before (a fast round, a different number of slow steps). ``greedy`` (or ``temperature == 0``) decodes
        greedily: one sample per problem (``k`` is 1 then). Returns ``accuracy`` (mean@k), ``ci_low`` /
        ``ci_high`` (Wilson interval at ``confidence`` over the ``n`` problems, see
        :func:`fst_env.metrics.accuracy_with_interval`), ``n`` (= ``problems``), ``k``, ``greedy``,
        ``reward_mean`` and ``per_problem`` (each problem's mean correctness, in problem order, for
        :func:`fst_env.metrics.paired_difference` between arms).
        """
        from fst_env.metrics import accuracy_with_interval

        env_id = env_id or self.env_id
        kwargs = env_kwargs or (self.env_kwargs if env_id == self.env_id else {})
        env = gym.make(env_id, split=split, **kwargs)
        context = self.population.best().context if context is None else context
        problems = min(problems, env.unwrapped.num_problems())  # a small held-out split is used whole
        c = self.config
        greedy = greedy or c.temperature == 0
        k = 1 if greedy else k
        prompts = [self.prompt_for(env.reset(options={"problem_id": p})[0], context) for p in range(problems)]
        if greedy:  # deterministic: batching cannot change the result, so one call
            generations = self.backend.generate(prompts, SamplingParams(max_new_tokens=c.max_new_tokens,
                                                                        temperature=0.0))
        else:
            # Each (problem, sample) has its own seed. Backends with per-row generators take them in one batched
            # call (a row's noise is then its own, whatever else is in the batch); others get one call per sample.
            task = _task_name(env_id, kwargs)
            seeds = [eval_seed(c.seed, task, split, p, j) for p in range(problems) for j in range(k)]
            repeated = [prompts[p] for p in range(problems) for _ in range(k)]
            sampling = {"max_new_tokens": c.max_new_tokens, "temperature": c.temperature, "top_p": c.top_p}
            if getattr(self.backend, "supports_row_seeds", False):
                generations = self.backend.generate(repeated, SamplingParams(**sampling, row_seeds=tuple(seeds)))
            else:
                generations = [self.backend.generate([prompt], SamplingParams(**sampling, seed=seed))[0]
                               for prompt, seed in zip(repeated, seeds, strict=True)]
        rewards, correct = [], []
        for i, gen in enumerate(generations):
            env.reset(options={"problem_id": i // k})
            _, reward, _, _, info = env.step(gen.text)
            rewards.append(float(reward))
            correct.append(float(info["verdict"] == "correct"))
        scored = accuracy_with_interval(np.asarray(correct).reshape(problems, k), confidence)
        return {**scored, "reward_mean": float(np.mean(rewards)), "problems": problems, "greedy": greedy,
                "confidence": confidence}

    def _problem_env(self, key: str) -> tuple[gym.Env, int]:
        env_id, split, problem_id = key.rsplit("/", 2)
        if (env_id, split) not in self._eval_envs:
            kwargs = self.env_kwargs if env_id == self.env_id else {}
            self._eval_envs[(env_id, split)] = gym.make(env_id, split=split, **kwargs)
        return self._eval_envs[(env_id, split)], int(problem_id)

    def _group_key(self, observation: str, info: Mapping[str, Any]) -> str:
        if info.get("problem_id") is not None:
            return f"{self.env_id}/{info.get('split', 'train')}/{int(info['problem_id'])}"
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
                     "rng": _rng_to_json(self.rng.getstate()), "batch": [asdict(r) for r in self.batch],
                     "recent": [asdict(r) for r in self.recent]}
            (tmp / "agent.json").write_text(json.dumps(state))
            torch.save(torch.get_rng_state(), tmp / "torch_rng.pt")

        return atomic_directory(directory, write)

    def load(self, directory: str | Path) -> None:
        """Restore what :meth:`save` wrote; the next update is the one the saved run would have made."""
        directory = Path(directory)
        state = json.loads((directory / "agent.json").read_text())
        if self.slow is not None:
            self.slow.load(directory / "slow")
            self.backend.update_weights()
        self.set_task(state["env_id"], **state["env_kwargs"])
        self.counters = state["counters"]
        self.population.load_state_dict(state["population"])
        if self.fast is not None and state["fast"] is not None:
            self.fast.load_state_dict(state["fast"])
        self.rng.setstate(_rng_from_json(state["rng"]))
        self.batch = [Rollout(**r) for r in state["batch"]]
        self.recent.clear()
        self.recent.extend(Rollout(**r) for r in state["recent"])
        torch.set_rng_state(torch.load(directory / "torch_rng.pt", weights_only=True))


class RLAgent(FSTAgent):
    """FSTAgent with the fast channel off: RL on the weights only, the seed context fixed."""

    def __init__(self, policy: Policy, env_id: str, config: FSTConfig | None = None, **kwargs: Any) -> None:
        super().__init__(policy, env_id, replace(config or FSTConfig(), fast=False, slow=True), **kwargs)


class PromptAgent(FSTAgent):
    """FSTAgent with the slow channel off: context evolution on frozen weights only (GEPA-style)."""

    def __init__(self, policy: Policy, env_id: str, config: FSTConfig | None = None, **kwargs: Any) -> None:
        super().__init__(policy, env_id, replace(config or FSTConfig(), fast=True, slow=False), **kwargs)


def _task_name(env_id: str, env_kwargs: Mapping[str, Any]) -> str:
    """A stable name for an env made with these kwargs (as the loop's ``Stage.task``)."""
    if not env_kwargs:
        return env_id
    return env_id + "[" + ",".join(f"{k}={v}" for k, v in sorted(env_kwargs.items())) + "]"


def eval_seed(seed: int, task: str, split: str, problem_id: int, sample: int) -> int:
    """The sampling seed of held-out sample ``sample`` of ``problem_id``: a hash of (config seed, task, split,
    problem, sample), stable across processes (blake2b, not Python's salted ``hash``), in ``[0, 2**31)``."""
    digest = hashlib.blake2b(f"fst-eval|{seed}|{task}|{split}|{problem_id}|{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**31


def _info_at(infos: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None, i: int) -> Mapping[str, Any]:
    """Row ``i`` of a vector env's dict-of-arrays infos, or of a list of per-env info dicts."""
    if infos is None:
        return {}
    if isinstance(infos, Mapping):
        return {k: v[i] for k, v in infos.items()
                if not k.startswith("_") and isinstance(v, (np.ndarray, list, tuple)) and len(v) > i
                and bool(infos.get(f"_{k}", np.ones(i + 1, dtype=bool))[i])}
    return infos[i]


def _rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss
