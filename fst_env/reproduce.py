"""``fst reproduce``: the paper's four claims re-measured in miniature, several seeds, one process.

The claims of Fast-Slow Training (arXiv 2605.12484) and how each is re-measured here:

(a) sample efficiency: FST, RL-only and fast-only (mode ``prompt``) held-out accuracy against RL samples, mean over
    seeds with bootstrap bands, and the RL samples FST needs to reach RL-only's peak (ratio, spread over seeds);
(b) the asymptote of the ScaleRL sigmoid (:func:`fst_env.metrics.fit_sigmoid`) per arm, with a bootstrap interval
    over seeds and problems, or a plain statement when the fit is not identifiable;
(c) KL(policy || base) at matched accuracy: each arm's held-out KL where its accuracy is closest to a common target;
(d) plasticity: fresh RL-only on task B from the FST and from the RL task-A weights (paired difference of the B
    accuracy gain), and a two-task continual schedule (A then B) with forgetting from
    :func:`fst_env.metrics.continual_metrics`.

Every arm of one seed uses the same held-out problems and the same evaluation sampling seeds
(:meth:`FSTAgent.evaluate` draws sample ``j`` of problem ``p`` from a hash of the config seed, task, split, ``p`` and
``j``, never from the training RNG), so arms are compared problem by problem. The model is loaded once; each arm
gets a deep copy of it (a fresh LoRA adapter and optimizer from the arm's own seed). ``reproduce.json`` is
rewritten after every run, so a crash in one arm keeps the others' results.

The command lives in three modules, each importing only the ones before it: :mod:`fst_env.reproduce_analysis`
(the claims' statistics and verdicts from the raw curves, numpy only), :mod:`fst_env.reproduce_report` (the text
of ``REPRODUCTION.md`` and its plots), and this one: the settings table of both modes, the scaling table that
sets each of our settings next to the paper's, the runs of the arms, and the entry point :func:`reproduce`.
Every public name of the other two is re-exported here, so ``from fst_env.reproduce import X`` still works.
None of them imports torch at import time; the runs import it when they start.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import gc
import json
import math
import os
import platform
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fst_env.config import PRESETS, RunConfig
from fst_env.reproduce_analysis import (
    ARMS,
    MATCH_TOLERANCE,
    SLOW_ARMS,
    across_seeds,
    analyse,
    asymptote,
    asymptote_difference,
    bootstrap_indices,
    continual,
    curve_from_summary,
    final_difference,
    matched_kl,
    mean_curve,
    mean_interval,
    paired,
    plasticity,
    sample_efficiency,
    shared_baseline,
)
from fst_env.reproduce_report import MISSING_ARMS, PAPER, _num, final_difference_line, make_plots, render_report
from fst_env.schedule import ConfigError

# Everything this module offered before the analysis and the report moved out (those are imported above).
__all__ = [
    "ARMS", "MATCH_TOLERANCE", "MISSING_ARMS", "MODES", "PAPER", "PRESET", "SETTINGS_TABLE", "SLOW_ARMS",
    "ReproSettings", "Reproduction", "across_seeds", "analyse", "asymptote", "asymptote_difference", "base_config",
    "bootstrap_indices", "continual", "curve_from_summary", "final_difference", "final_difference_line",
    "make_plots", "matched_kl", "mean_curve", "mean_interval", "paired", "plan", "plasticity", "render_report",
    "reproduce", "sample_efficiency", "scaling_table", "settings_for", "shared_baseline", "split_overrides",
    "task_b_stage", "task_name",
]

PRESET = "cpu"  # the tuned preset this command reads its task, temperature, lr and sizes from, at run time

# ----------------------------------------------------------------------------------------------- the settings
#: The sizes of both modes, in one table: ``field: (quick, full, what it is)``. Everything not here (task, difficulty,
#: temperature, lr, G, problems per update, completion length, fast learner and its budget) comes from the ``cpu``
#: preset in fst_env/config.py at run time. ``--set reproduce.FIELD=VALUE`` overrides a cell for one run.
#: Budgets (embedded model, 2 cores): quick <= 15 min, full <= 60 min. Timed 2026-12-06 on a 2-core AVX512-BF16/AMX
#: Xeon: quick 8.8 min; full 60.8 min (REPRODUCTION.md; a fast round re-samples its parent since, which made FST's
#: arms ~20% slower than RL-only's). Without bf16 (AVX2 only) generation is about 2x slower and the full mode does
#: not fit its hour.
SETTINGS_TABLE: dict[str, tuple[Any, Any, str]] = {
    "seeds": (3, 3, "training seeds per arm; every arm of a seed shares the held-out problems and eval seeds"),
    "steps": (4, 24, "updates per arm on task A (full: with eval_every 5, points at 0, 5, 10, 15, 20, 24)"),
    "eval_every": (0, 5, "evaluate every N updates (0: before and after only); the stage end is always evaluated, "
                         "again if N divides steps"),
    "eval_problems": (16, 64, "held-out problems per evaluation (the same first N of the validation split)"),
    "eval_k": (1, 1, "samples per held-out problem (mean@k)"),
    "eval_greedy": (False, False, "also evaluate greedy decoding (a second pass; the claims use the sampled accuracy)"),
    "kl_prompts": (4, 6, "held-out prompts for KL(policy || base) at every evaluation of task A"),
    "fast_every": (2, 6, "T: a fast round every T updates (paper: 6)"),
    "population_size": (4, 4, "K: contexts kept (paper: 4)"),
    "kl_coef": (0.001, 0.001, "KL penalty to the initial weights (paper: 0.001)"),
    "tau": (4.0, 4.0, "CISPO cap on the importance weight (paper: 4)"),
    "plasticity": (False, True, "run the plasticity probe (fresh RL-only on task B from the FST and RL weights)"),
    "plasticity_steps": (1, 4, "RL-only updates on task B in the plasticity probe"),
    "plasticity_base": (False, False, "also probe plasticity from the base weights (the paper's reference)"),
    "continual": (False, True, "run the continual schedule (FST and RL continue from task A on task B)"),
    "continual_steps": (1, 4, "updates on task B in the continual schedule"),
    "task_b_env": ("", "", "task B env id ('': task A's env)"),
    "task_b_kwargs": ({"difficulty": "medium"}, {"difficulty": "medium"},
                      "task B env kwargs, merged over task A's"),
    "bootstrap": (1000, 1000, "bootstrap resamples (seeds x problems) for the accuracy bands"),
    "fit_bootstrap": (50, 100, "of those, how many are refitted for the asymptote interval (~0.2 s per fit here)"),
    "min_fit_points": (5, 5, "fewest evaluation points for an identifiable sigmoid (3 free parameters)"),
    "max_asymptote_width": (0.3, 0.3, "widest asymptote interval still called identified"),
    "budget_minutes": (15, 60, "the wall-time budget this mode is sized for (2 CPU cores, embedded model)"),
}
MODES = ("quick", "full")


@dataclass(frozen=True)
class ReproSettings:
    """One mode's column of :data:`SETTINGS_TABLE` (with ``--set reproduce.*`` overrides applied)."""

    seeds: int
    steps: int
    eval_every: int
    eval_problems: int
    eval_k: int
    eval_greedy: bool
    kl_prompts: int
    fast_every: int
    population_size: int
    kl_coef: float
    tau: float
    plasticity: bool
    plasticity_steps: int
    plasticity_base: bool
    continual: bool
    continual_steps: int
    task_b_env: str
    task_b_kwargs: dict
    bootstrap: int
    fit_bootstrap: int
    min_fit_points: int
    max_asymptote_width: float
    budget_minutes: int

    def validate(self) -> ReproSettings:
        """Raise ConfigError naming the first field out of range; returns ``self``."""
        at_least = {"seeds": 1, "steps": 1, "eval_every": 0, "eval_problems": 2, "eval_k": 1, "kl_prompts": 1,
                    "fast_every": 1, "population_size": 1, "continual_steps": 1, "plasticity_steps": 1,
                    "bootstrap": 10, "fit_bootstrap": 10, "min_fit_points": 4, "budget_minutes": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"reproduce.{name}: must be an int >= {low}, got {value!r}")
        for name in ("kl_coef", "max_asymptote_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"reproduce.{name}: must be a number >= 0, got {value!r}")
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not self.tau >= 1:
            raise ConfigError(f"reproduce.tau: must be a number >= 1, got {self.tau!r}")
        for name in ("plasticity", "plasticity_base", "continual", "eval_greedy"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"reproduce.{name}: must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.task_b_env, str):
            raise ConfigError(f"reproduce.task_b_env: must be an env id or '', got {self.task_b_env!r}")
        if not isinstance(self.task_b_kwargs, Mapping) or not all(isinstance(k, str) for k in self.task_b_kwargs):
            raise ConfigError(f"reproduce.task_b_kwargs: must be a table with string keys, got {self.task_b_kwargs!r}")
        return self


def settings_for(mode: str, overrides: Sequence[str] = (), seeds: int | None = None) -> ReproSettings:
    """The settings of ``mode`` (``quick`` or ``full``) with ``reproduce.FIELD=VALUE`` strings and ``seeds`` applied."""
    if mode not in MODES:
        raise ConfigError(f"reproduce: mode must be one of {', '.join(MODES)}, got {mode!r}")
    column = MODES.index(mode)
    values = {name: copy.deepcopy(cells[column]) for name, cells in SETTINGS_TABLE.items()}
    for item in overrides:
        path, sep, text = item.partition("=")
        name = path.strip().removeprefix("reproduce.")
        if not sep or name not in values:
            raise ConfigError(f"--set {item}: unknown reproduce field; allowed: {', '.join(SETTINGS_TABLE)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if isinstance(SETTINGS_TABLE[name][0], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[name] = value
    if seeds is not None:
        values["seeds"] = seeds
    return ReproSettings(**values).validate()


def split_overrides(settings: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--set`` strings split into this command's ``reproduce.*`` ones and the run config's (agent/schedule/run)."""
    ours = [s for s in settings if s.strip().startswith("reproduce.")]
    return ours, [s for s in settings if not s.strip().startswith("reproduce.")]


def base_config(model: str, settings: ReproSettings, config_overrides: Sequence[str] = ()) -> RunConfig:
    """The run config every arm starts from: the ``cpu`` preset (read now), this mode's sizes, then ``--set``."""
    from fst_env.cli import apply_overrides

    config = RunConfig(model=model, preset=PRESET)
    preset_stages = PRESETS[PRESET].get("stages")  # a preset that names its task wins over RunConfig's default
    if preset_stages:
        config.stages = copy.deepcopy(list(preset_stages))
    config.stages = config.stages[:1]
    config.agent.update(fast_every=settings.fast_every, population_size=settings.population_size,
                        kl_coef=settings.kl_coef, tau=settings.tau)
    config.schedule.update(eval_every=settings.eval_every, eval_problems=settings.eval_problems,
                           eval_k=settings.eval_k, eval_greedy=settings.eval_greedy, kl_prompts=settings.kl_prompts,
                           checkpoint_every=0)
    config = apply_overrides(config, list(config_overrides))
    config.stages[0]["steps"] = settings.steps
    return config.validate()


def task_b_stage(config: RunConfig, settings: ReproSettings) -> dict[str, Any]:
    """Task B's stage: task A's env (or ``task_b_env``) with ``task_b_kwargs`` merged over task A's kwargs."""
    first = config.stages[0]
    env_id = settings.task_b_env or first["env_id"]
    kwargs = {**(first.get("env_kwargs", {}) if env_id == first["env_id"] else {}), **settings.task_b_kwargs}
    return {"env_id": env_id, "steps": settings.plasticity_steps, "env_kwargs": kwargs}


def task_name(stage: Mapping[str, Any]) -> str:
    """The loop's name for a stage's task (env id plus kwargs), the key of its evaluation rows."""
    from fst_env.schedule import Stage

    return Stage(stage["env_id"], int(stage["steps"]), dict(stage.get("env_kwargs", {}))).task


def plan(settings: ReproSettings) -> dict[str, int]:
    """How many updates and evaluations a mode runs (for sizing it against its wall-time budget)."""
    per_arm_evals = 1 + (settings.steps // settings.eval_every if settings.eval_every else 0) + 1
    updates = len(ARMS) * settings.steps
    evaluations = len(ARMS) * per_arm_evals
    inits = (len(SLOW_ARMS) + int(settings.plasticity_base)) if settings.plasticity else 0
    updates += inits * settings.plasticity_steps
    evaluations += inits * 2
    if settings.continual:
        updates += len(SLOW_ARMS) * settings.continual_steps
        evaluations += len(SLOW_ARMS) * 3  # B before, B after, A after
    return {"seeds": settings.seeds, "updates": updates * settings.seeds,
            "evaluations": evaluations * settings.seeds,
            "train_calls": (len(ARMS) + inits + (len(SLOW_ARMS) if settings.continual else 0)) * settings.seeds}



def scaling_table(config: RunConfig, settings: ReproSettings) -> list[tuple[str, str, str, str]]:
    """Every value the paper states (or leaves open) next to ours and why ours differs: (setting, paper, here, why)."""
    agent = config.agent_config()
    per_problem = agent.fast_budget / agent.fast_problems
    budget = f"{agent.fast_budget} calls over {agent.fast_problems} problems ({per_problem:.0f} per problem)"
    preset = PRESETS[PRESET]["agent"]

    def source(*fields: str) -> str:
        """Where a value came from: a --set override, the preset, or FSTConfig's default the preset leaves."""
        if any(f in config.agent for f in fields):
            return "set for this run (--set agent.*)"
        if all(f in preset for f in fields):
            return f"the {PRESET} preset (sized for these cores)"
        return f"FSTConfig's default (the {PRESET} preset leaves it)"

    b = task_b_stage(config, settings)
    a = config.stages[0]
    if b["env_id"] == a["env_id"] and set(b["env_kwargs"]) - {"difficulty"} == set(a.get("env_kwargs", {})) - {
            "difficulty"} and b["env_kwargs"].get("difficulty") != a.get("env_kwargs", {}).get("difficulty"):
        b_why = (f"task B is task A's env at difficulty {b['env_kwargs'].get('difficulty')!r} (harder problems of the "
                 "same generator), since a task the model scores 0 on would make every gain 0; its accuracy on B "
                 "before the probe is in (d)")
    else:
        b_why = "task B as set by reproduce.task_b_env / task_b_kwargs"
    return [
        ("policy model", "Qwen3-8B", config.model, "what runs on 2 CPU cores without a model hub"),
        ("fast learner", "GEPA reflection by GPT-5.2", agent.fast_learner,
         source("fast_learner") + "; see the fast-learner note above"),
        ("T (updates per fast round)", "6", str(agent.fast_every),
         f"with {settings.steps} updates per arm, T=6 would give at most {settings.steps // 6} fast round(s)"),
        ("K (contexts kept)", "4 (light recipe)", str(agent.population_size), "as the paper"),
        ("G (rollouts per problem)", "8", str(agent.group_size), source("group_size") + "; generation dominates"),
        ("problems per update", "~32", str(agent.groups_per_step), source("groups_per_step")),
        ("GEPA budget per round", "960 metric calls over 192 examples (5 per example)", budget,
         source("fast_budget", "fast_problems")),
        ("CISPO cap tau", "4", _num(agent.tau, "g"), "as the paper"),
        ("KL to the initial weights", "0.001", _num(agent.kl_coef, "g"), "as the paper (LoRA: the adapter-disabled "
                                                                         "model is the reference, no copy)"),
        ("optimizer", "AdamW, 10 warm-up steps", f"AdamW, lr {agent.lr if agent.lr is not None else '1e-5 (default)'}"
                                                 ", no warm-up",
         f"lr: {source('lr')}; the slow learner has no warm-up schedule, and with {settings.steps} updates 10 "
         "warm-up steps would hold the rate below its value for the whole run"),
        ("temperature", "not stated", _num(agent.temperature, "g"), source("temperature")),
        ("completion length", "not stated", f"{agent.max_new_tokens} tokens", source("max_new_tokens")),
        ("training length", "~600-1500 RL steps per run", f"{settings.steps} updates", "the wall-time budget"),
        ("evaluation", "running max of mean@4 on validation",
         f"mean@{settings.eval_k} on {settings.eval_problems} validation problems, plain value",
         "cost; a running max of a small noisy estimate is biased upward"),
        ("seeds", "not stated (no intervals)", str(settings.seeds), "intervals over seeds and problems"),
        ("tasks", "CodeIO, Math (Polaris), HoVer-hard; Physics",
         f"A: {task_name(config.stages[0])}; B: {task_name(task_b_stage(config, settings))}",
         f"task A: the run config's task (the {PRESET} preset's when it names one); the embedded model scores above 0 "
         f"only on easy arithmetic (DESIGN.md: 0 of 190 on 17 envs at T=1); {b_why}"),
        ("plasticity probe", "400 RL steps on HoVer-hard, from base, RL and FST weights",
         (f"{settings.plasticity_steps} RL updates on task B from RL and FST weights"
          + (" and the base" if settings.plasticity_base else "")) if settings.plasticity else "off in this mode",
         "the wall-time budget"),
        ("continual schedule", "3 tasks x 200 steps", (f"2 tasks: {settings.steps} + {settings.continual_steps} "
                                                       "updates") if settings.continual else "off in this mode",
         "the wall-time budget"),
    ]


# ----------------------------------------------------------------------------------------------- running
def _jsonable(value: Any) -> Any:
    """``value`` with NaN as null and +-inf as strings, numpy scalars and arrays as plain numbers and lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf
                                               else value)
    if isinstance(value, np.integer):
        return int(value)
    return value


class Reproduction:
    """One mode's runs, one after another in this process; ``results`` is saved to ``reproduce.json`` after each."""

    def __init__(self, mode: str, out: str | Path, settings: ReproSettings, config: RunConfig, command: str,
                 *, log: Callable[[str], None] = print) -> None:
        self.mode, self.out, self.settings, self.config, self.log = mode, Path(out), settings, config, log
        self.task_a = dict(config.stages[0])
        self.task_b = task_b_stage(config, settings)
        self.seeds = [config.seed + i for i in range(settings.seeds)]
        agent = config.agent_config()
        self.results: dict[str, Any] = {
            "mode": mode, "command": command, "model": config.model, "seeds": self.seeds,
            "settings": dataclasses.asdict(settings), "config": config.to_dict(), "plan": plan(settings),
            "task_a": task_name(self.task_a), "task_b": task_name(self.task_b),
            "task_a_stage": self.task_a, "task_b_stage": self.task_b,
            "fast_learner": agent.fast_learner, "reflection_model": config.reflection_model,
            "scaling": scaling_table(config, settings), "curves": {}, "plasticity": {}, "continual": {},
            "errors": {}, "timing": {}, "load": {}, "loadavg_start": _loadavg(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        }
        self._start = time.perf_counter()
        self._base: Any = None
        self._config("rl", self.seeds[0], self.task_b, 1, curve=False)  # a bad task B fails now, in one line

    # ---------------------------------------------------------------- bookkeeping
    def save(self) -> Path:
        """Write ``reproduce.json`` (atomically) with everything measured so far."""
        from fst_env.atomic import write_text_atomic

        self.out.mkdir(parents=True, exist_ok=True)
        self.results["wall_time_s"] = time.perf_counter() - self._start
        self.results["loadavg_end"] = _loadavg()
        path = self.out / "reproduce.json"
        write_text_atomic(path, json.dumps(_jsonable(self.results), indent=1))
        return path

    def _attempt(self, key: str, fn: Callable[[], Any]) -> Any:
        """Run one arm; a failure is recorded under ``errors[key]`` (the others go on) and the results are saved."""
        start = time.perf_counter()
        try:
            return fn()
        except Exception as exc:  # one arm's crash must not lose the others' results
            self.results["errors"][key] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
            self.log(f"  {key} FAILED: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            return None
        finally:
            self.results["timing"][key] = time.perf_counter() - start
            self.results["load"][key] = _loadavg()  # the machine is shared: what else ran shows here
            self.save()
            if self.config.model != "tiny":  # free the arm's model copy now; a full collection costs ~0.7 s here,
                gc.collect()                 # more than a tiny test model is worth

    # ---------------------------------------------------------------- model and agents
    def _fresh_policy(self) -> Any:
        """A deep copy of the base model (loaded once), sharing its tokenizer: each arm trains its own weights."""
        from fst_env.models import Policy, load_policy, tiny_policy

        if self._base is None:
            model = self.config.model
            self._base = tiny_policy(0) if model == "tiny" else load_policy(model)
        base = self._base
        return Policy(model=copy.deepcopy(base.model), tokenizer=base.tokenizer, device=base.device,
                      dtype=base.dtype, name=base.name)

    def _config(self, mode: str, seed: int, stage: Mapping[str, Any], steps: int, *, curve: bool = True) -> RunConfig:
        """One run's config: ``mode`` and ``seed`` on ``stage``; ``curve=False`` (task-B runs, which need only their
        start and end) evaluates before and after only and measures no KL."""
        config = RunConfig.from_dict(copy.deepcopy(self.config.to_dict()))
        config.mode, config.seed = mode, seed
        config.agent.pop("seed", None)  # the arm's seed decides LoRA init, sampling and evaluation seeds
        config.stages = [{**copy.deepcopy(dict(stage)), "steps": steps}]
        if not curve:
            config.schedule.update(eval_every=0, kl_prompts=0)
        return config.validate()

    def _agent(self, config: RunConfig, policy: Any) -> Any:
        from fst_env.cli import build_agent

        return build_agent(config, policy=policy)

    def _train(self, agent: Any, config: RunConfig, run_dir: Path) -> dict[str, Any]:
        from fst_env.loop import train

        return train(agent, config.build_schedule(), run_dir=run_dir, seed=config.seed, quiet=True,
                     tensorboard=False)

    # ---------------------------------------------------------------- the runs
    def run(self) -> dict[str, Any]:
        """Every run of the mode, then the analysis, report and plots; returns the analysis."""
        s = self.settings
        counts = self.results["plan"]
        self.log(f"fst reproduce ({self.mode}): {counts['train_calls']} training runs, {counts['updates']} updates, "
                 f"{counts['evaluations']} evaluations over seeds {self.seeds}; task A {self.results['task_a']}, "
                 f"task B {self.results['task_b']}; writing to {self.out}")
        self.save()
        for seed in self.seeds:
            checkpoints: dict[str, Path] = {}
            for arm in ARMS:
                self._attempt(f"seed{seed}/{arm}", functools.partial(self._arm, arm, seed, checkpoints))
            inits = [*SLOW_ARMS, *(["base"] if s.plasticity_base else [])] if s.plasticity else []
            for init in inits:
                if init != "base" and init not in checkpoints:
                    self.results["errors"].setdefault(f"seed{seed}/plasticity/{init}",
                                                      f"skipped: the {init} arm on task A did not finish")
                    continue
                self._attempt(f"seed{seed}/plasticity/{init}",
                              functools.partial(self._plasticity, init, seed, checkpoints.get(init)))
        return self.finish()

    def _arm(self, arm: str, seed: int, checkpoints: dict[str, Path]) -> None:
        from fst_env.checkpoints import find_checkpoint

        config = self._config(arm, seed, self.task_a, self.settings.steps)
        run_dir = self.out / "runs" / f"seed{seed}" / arm
        agent = self._agent(config, self._fresh_policy())
        started = time.perf_counter()
        summary = self._train(agent, config, run_dir)
        curve = curve_from_summary(summary, self.results["task_a"])
        self.results["curves"].setdefault(arm, {})[str(seed)] = curve
        self.log(f"  seed {seed} {arm} on A: {summary['steps']} updates in {time.perf_counter() - started:.0f} s, "
                 f"accuracy {curve['accuracy'][0]:.3f} -> {curve['accuracy'][-1]:.3f} (n={curve['n']})")
        if arm in SLOW_ARMS:
            checkpoint = find_checkpoint(run_dir, report=None)
            if checkpoint is not None:
                checkpoints[arm] = checkpoint / "agent"
            if self.settings.continual:
                self.save()
                self._attempt(f"seed{seed}/continual/{arm}",
                              functools.partial(self._continual, agent, arm, seed, curve))
        del agent

    def _continual(self, agent: Any, arm: str, seed: int, curve_a: Mapping[str, Any]) -> None:
        """Task B after task A with the same agent; then task A again, on the same problems and eval seeds."""
        config = self._config(arm, seed, self.task_b, self.settings.continual_steps, curve=False)
        summary = self._train(agent, config, self.out / "runs" / f"seed{seed}" / f"{arm}-continual")
        curve_b = curve_from_summary(summary, self.results["task_b"])
        schedule = config.build_schedule()
        state = agent.rng.getstate()
        again = agent.evaluate(self.task_a["env_id"], split=schedule.eval_split, problems=schedule.eval_problems,
                               k=schedule.eval_k, **self.task_a.get("env_kwargs", {}))
        agent.rng.setstate(state)  # an extra evaluation does not shift anything
        matrix = [[curve_a["accuracy"][-1], curve_b["accuracy"][0]], [again["accuracy"], curve_b["accuracy"][-1]]]
        self.results["continual"].setdefault(arm, {})[str(seed)] = {
            "matrix": matrix, "baseline": [curve_a["accuracy"][0], None],
            "per_problem": {"A_after_A": curve_a["per_problem"][-1], "B_after_A": curve_b["per_problem"][0],
                            "A_after_B": again["per_problem"], "B_after_B": curve_b["per_problem"][-1]},
            "curve_b": curve_b}
        self.log(f"  seed {seed} {arm} continual: A {matrix[0][0]:.3f} -> {matrix[1][0]:.3f} after B; "
                 f"B {matrix[0][1]:.3f} -> {matrix[1][1]:.3f}")

    def _plasticity(self, init: str, seed: int, checkpoint: Path | None) -> None:
        """Fresh RL-only on task B from ``init``'s task-A weights (merged, new adapter and optimizer)."""
        from fst_env.harness import load_trained_policy

        policy = self._fresh_policy() if checkpoint is None else load_trained_policy(checkpoint, self._fresh_policy)
        config = self._config("rl", seed, self.task_b, self.settings.plasticity_steps, curve=False)
        agent = self._agent(config, policy)
        summary = self._train(agent, config, self.out / "runs" / f"seed{seed}" / f"plasticity-{init}")
        curve = curve_from_summary(summary, self.results["task_b"])
        self.results["plasticity"].setdefault(init, {})[str(seed)] = {
            "before": curve["per_problem"][0], "after": curve["per_problem"][-1], "curve": curve}
        if init == "base":  # the base model on B: the forward-transfer reference of the continual matrix
            for runs in self.results["continual"].values():
                if str(seed) in runs:
                    runs[str(seed)]["baseline"][1] = curve["accuracy"][0]
        self.log(f"  seed {seed} plasticity from {init}: B accuracy {curve['accuracy'][0]:.3f} -> "
                 f"{curve['accuracy'][-1]:.3f}")
        del agent

    def finish(self) -> dict[str, Any]:
        """Analysis, plots and the report from whatever finished; returns the analysis."""
        analysis = analyse(self.results)
        self.results["analysis"] = analysis
        self.save()
        plots: dict[str, str] = {}
        try:
            plots = make_plots(self.results, analysis, self.out)
        except Exception as exc:  # a plot must not cost the report
            self.results["errors"]["plots"] = f"{type(exc).__name__}: {exc}"
        self.results["plots"] = plots
        path = self.save()
        (self.out / "REPRODUCTION.md").write_text(render_report(self.results, analysis, plots))
        self.log(final_difference_line(analysis, self.results["task_a"]))
        for claim, key in (("(a) sample efficiency", "sample_efficiency"), ("(b) asymptote", "asymptote_difference"),
                           ("(c) KL at matched accuracy", "matched_kl"), ("(d) plasticity", "plasticity"),
                           ("(d) continual forgetting", "continual")):
            if key in analysis:
                self.log(f"{claim}: {analysis[key]['verdict']} ({analysis[key]['why']})")
        self.log(f"wrote {self.out / 'REPRODUCTION.md'}, {path} and {len(plots)} plots in "
                 f"{self.results['wall_time_s'] / 60:.1f} min")
        return analysis



def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def reproduce(mode: str = "full", out: str | Path = "runs/reproduce", *, seeds: int | None = None,
              model: str = "embedded", overrides: Sequence[str] = (), command: str = "fst reproduce",
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one mode and write ``REPRODUCTION.md``, ``reproduce.json`` and the plots into ``out``; returns the
    analysis. ``overrides``: ``--set`` strings (``reproduce.FIELD=...`` for the settings table, ``agent.*``,
    ``schedule.*`` and ``run.*`` for the run config)."""
    ours, theirs = split_overrides(overrides)
    settings = settings_for(mode, ours, seeds)
    config = base_config(model, settings, theirs)
    runner = Reproduction(mode, out, settings, config, command, log=log)
    return runner.run()
