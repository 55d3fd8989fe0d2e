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

This module imports no torch at import time (the analysis and report functions are numpy only); the runs import
it when they start.
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
from fst_env.schedule import ConfigError

ARMS = ("fst", "rl", "prompt")
SLOW_ARMS = ("fst", "rl")
MATCH_TOLERANCE = 0.1  # matched accuracies further apart than this are not a matched-KL comparison
PRESET = "cpu"  # the tuned preset this command reads its task, temperature, lr and sizes from, at run time

# ----------------------------------------------------------------------------------------------- the settings
#: The sizes of both modes, in one table: ``field: (quick, full, what it is)``. Everything not here (task, difficulty,
#: temperature, lr, G, problems per update, completion length, fast learner and its budget) comes from the ``cpu``
#: preset in fst_env/config.py at run time. ``--set reproduce.FIELD=VALUE`` overrides a cell for one run.
#: Budgets (embedded model, 2 shared cores): quick <= 15 min, full <= 60 min; the lead times and tunes them.
SETTINGS_TABLE: dict[str, tuple[Any, Any, str]] = {
    "seeds": (3, 3, "training seeds per arm; every arm of a seed shares the held-out problems and eval seeds"),
    "steps": (2, 7, "updates per arm on task A (full: with eval_every 2, points at 0, 2, 4, 6, 7)"),
    "eval_every": (0, 2, "evaluate every N updates (0: before and after only); the stage end is always evaluated, "
                         "again if N divides steps"),
    "eval_problems": (8, 12, "held-out problems per evaluation (the same first N of the validation split)"),
    "eval_k": (1, 1, "samples per held-out problem (mean@k)"),
    "kl_prompts": (4, 6, "held-out prompts for KL(policy || base) at every evaluation of task A"),
    "fast_every": (2, 3, "T: a fast round every T updates (paper: 6)"),
    "population_size": (4, 4, "K: contexts kept (paper: 4)"),
    "kl_coef": (0.001, 0.001, "KL penalty to the initial weights (paper: 0.001)"),
    "tau": (4.0, 4.0, "CISPO cap on the importance weight (paper: 4)"),
    "plasticity": (False, True, "run the plasticity probe (fresh RL-only on task B from the FST and RL weights)"),
    "plasticity_steps": (1, 2, "RL-only updates on task B in the plasticity probe"),
    "plasticity_base": (False, False, "also probe plasticity from the base weights (the paper's reference)"),
    "continual": (False, True, "run the continual schedule (FST and RL continue from task A on task B)"),
    "continual_steps": (1, 2, "updates on task B in the continual schedule"),
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
        for name in ("plasticity", "plasticity_base", "continual"):
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
                           eval_k=settings.eval_k, kl_prompts=settings.kl_prompts, checkpoint_every=0)
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


# ----------------------------------------------------------------------------------------------- curves
def curve_from_summary(summary: Mapping[str, Any], task: str) -> dict[str, Any]:
    """One run's held-out curve on ``task``: the baseline row then every evaluation, one point per step.

    The loop evaluates the stage end even when ``eval_every`` has just evaluated the same step; with common random
    numbers both rows measure the same thing, so the later one is kept.
    """
    rows: dict[int, Mapping[str, Any]] = {}
    for row in [summary["baseline_row"], *summary["evals"]]:
        rows[int(row["step"])] = row
    ordered = [rows[s] for s in sorted(rows)]
    return {"step": [int(r["step"]) for r in ordered],
            "rl_samples": [int(r["rl_samples"]) for r in ordered],
            "fast_rollouts": [int(r.get("fast_rollouts", 0)) for r in ordered],
            "accuracy": [float(r["accuracy"][task]) for r in ordered],
            "ci": [list(r["ci"][task]) for r in ordered],
            "accuracy_greedy": [float(r["accuracy_greedy"][task]) for r in ordered],
            "per_problem": [list(r["per_problem"][task]) for r in ordered],
            "kl": [None if r.get("kl") is None else float(r["kl"]) for r in ordered],
            "entropy": [None if r.get("entropy") is None else float(r["entropy"]) for r in ordered],
            "n": int(ordered[-1]["n"][task]), "k": int(ordered[-1].get("k", 1)),
            "wall_time_s": float(summary.get("wall_time_s", 0.0)), "counters": dict(summary.get("counters", {})),
            "best_context": dict(summary.get("best_context") or {})}


def _stack(curves: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(samples[points], per_problem[seeds, points, problems])`` over the points every seed has."""
    points = min(len(c["per_problem"]) for c in curves)
    problems = min(len(c["per_problem"][0]) for c in curves)
    samples = np.asarray(curves[0]["rl_samples"][:points], dtype=float)
    values = np.asarray([[row[:problems] for row in c["per_problem"][:points]] for c in curves], dtype=float)
    return samples, values


def bootstrap_indices(n_seeds: int, n_problems: int, resamples: int, seed: int = 0) -> list[tuple[np.ndarray,
                                                                                                   np.ndarray]]:
    """``resamples`` draws of (seed indices, problem indices), each with replacement; shared by every arm so
    that differences between arms are bootstrapped pairwise."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, n_seeds, n_seeds), rng.integers(0, n_problems, n_problems)) for _ in range(resamples)]


def _resampled_means(values: np.ndarray, draws: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``[draws, points]``: the mean curve of each (seeds, problems) resample of ``values[seeds, points, problems]``."""
    return np.asarray([values[s][:, :, p].mean(axis=(0, 2)) for s, p in draws])


def mean_curve(curves: Sequence[Mapping[str, Any]], draws: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Mean held-out accuracy over seeds at each evaluation point, with a 95% percentile band from ``draws``."""
    samples, values = _stack(curves)
    boot = _resampled_means(values, draws)
    low, high = np.quantile(boot, [0.025, 0.975], axis=0)
    fast = np.asarray([c["fast_rollouts"][:len(samples)] for c in curves], dtype=float).mean(axis=0)
    return {"rl_samples": samples.tolist(), "fast_rollouts": fast.tolist(),
            "accuracy": values.mean(axis=(0, 2)).tolist(), "low": low.tolist(), "high": high.tolist(),
            "seeds": len(curves), "problems": int(values.shape[2])}


# ----------------------------------------------------------------------------------------------- statistics
def mean_interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean of ``values`` with a 95% Student-t interval (none for a single value)."""
    from fst_env.metrics import paired_difference

    array = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if array.size == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    if array.size == 1:
        return {"mean": float(array[0]), "ci_low": math.nan, "ci_high": math.nan, "n": 1}
    # The t interval of the mean of a - 0 is the one-sample t interval of a.
    diff = paired_difference(array, np.zeros_like(array))
    return {"mean": diff.mean, "ci_low": diff.ci_low, "ci_high": diff.ci_high, "n": diff.n}


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``a - b`` over the same units with its 95% t interval and whether the interval excludes 0."""
    from fst_env.metrics import paired_difference

    if len(a) != len(b) or len(a) < 2:
        return {"mean": float(np.mean(np.subtract(a, b))) if len(a) == len(b) and len(a) else math.nan,
                "ci_low": math.nan, "ci_high": math.nan, "n": len(a), "sign": "unknown"}
    diff = paired_difference(a, b).as_dict()
    return {**diff, "sign": _sign(diff["ci_low"], diff["ci_high"])}


def _sign(low: float, high: float) -> str:
    """``positive`` / ``negative`` when the interval excludes 0, ``includes 0`` otherwise, ``unknown`` without one."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "unknown"
    return "positive" if low > 0 else "negative" if high < 0 else "includes 0"


def final_difference(fst: Sequence[Mapping[str, Any]], rl: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """FST minus RL-only final held-out accuracy, paired by (seed, problem) and pooled over seeds."""
    seeds = min(len(fst), len(rl))
    a = [v for c in fst[:seeds] for v in c["per_problem"][-1]]
    b = [v for c in rl[:seeds] for v in c["per_problem"][-1]]
    return {**paired(a, b), "seeds": seeds, "problems": len(fst[0]["per_problem"][-1]) if seeds else 0}


# ----------------------------------------------------------------------------------------------- claim (a)
def sample_efficiency(fst: Sequence[Mapping[str, Any]], rl: Sequence[Mapping[str, Any]], *,
                      seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Per seed: RL-only's peak, the RL samples at which RL and FST first reach it, and the ratio.

    ``rl_improved`` says whether RL-only rose above its start at all (if not, its peak is the shared baseline and
    the ratio says nothing). FST's samples are also given with its fast-round rollouts added (``fst_total``).
    """
    from fst_env.metrics import sample_efficiency_ratio, samples_to_reach

    per_seed = []
    labels = list(seeds) if seeds is not None else list(range(min(len(fst), len(rl))))
    for label, f, r in zip(labels, fst, rl, strict=False):
        peak = float(np.max(r["accuracy"]))
        total = np.add(f["rl_samples"], f["fast_rollouts"]).tolist()
        fst_needed = samples_to_reach(f["rl_samples"], f["accuracy"], peak)
        per_seed.append({"seed": label, "rl_peak": peak, "rl_start": float(r["accuracy"][0]),
                         "rl_improved": peak > float(r["accuracy"][0]),
                         "rl_samples_to_peak": samples_to_reach(r["rl_samples"], r["accuracy"], peak),
                         "fst_samples_to_rl_peak": fst_needed,
                         "fst_total_samples_to_rl_peak": samples_to_reach(total, f["accuracy"], peak),
                         "ratio": sample_efficiency_ratio(r["rl_samples"], r["accuracy"], f["rl_samples"],
                                                          f["accuracy"])})
    # inf (FST already at RL-only's peak before training) stays in: it is the largest ratio, not a missing one.
    ratios = [s["ratio"] for s in per_seed if s["rl_improved"] and not math.isnan(s["ratio"])]
    reached = sum(1 for s in per_seed if s["rl_improved"] and not math.isnan(s["fst_samples_to_rl_peak"]))
    improved = sum(1 for s in per_seed if s["rl_improved"])
    rl_gain = paired([v for c in rl for v in c["per_problem"][-1]], [v for c in rl for v in c["per_problem"][0]])
    summary = {"per_seed": per_seed, "seeds_rl_improved": improved, "seeds_fst_reached": reached,
               "ratio_median": float(np.median(ratios)) if ratios else math.nan,
               "ratio_min": float(np.min(ratios)) if ratios else math.nan,
               "ratio_max": float(np.max(ratios)) if ratios else math.nan, "rl_gain": rl_gain}
    if improved == 0:
        verdict, why = "not resolvable", ("RL-only never rose above its starting accuracy, so its peak is the "
                                          "baseline both arms share and FST 'reaches' it at 0 samples")
    elif rl_gain["sign"] != "positive":
        state = {"includes 0": "includes 0", "negative": "lies below 0"}.get(rl_gain["sign"], "cannot be formed")
        verdict, why = "not resolvable", (f"RL-only's own gain (final minus start, paired over problems) has an "
                                          f"interval that {state}, so its peak is within sampling noise (FST "
                                          f"reached it in {reached} of {improved} seeds)")
    elif reached * 2 <= improved:
        verdict, why = "disagree", f"FST did not reach RL-only's peak in {improved - reached} of {improved} seeds"
    elif summary["ratio_median"] > 1:
        verdict, why = "agree", f"FST reached RL-only's peak with {summary['ratio_median']:.2f}x fewer RL samples"
    else:
        verdict, why = "disagree", "FST needed as many RL samples as RL-only, or more"
    return {**summary, "verdict": verdict, "why": why}


# ----------------------------------------------------------------------------------------------- claim (b)
def asymptote(curves: Sequence[Mapping[str, Any]], draws: Sequence[tuple[np.ndarray, np.ndarray]], *,
              min_points: int = 5, max_width: float = 0.3) -> dict[str, Any]:
    """The sigmoid fit of the mean curve (R0 fixed at the mean starting accuracy), its bootstrap interval for the
    asymptote A, and whether A is identifiable at this scale (``identifiable`` with the reason when it is not)."""
    from fst_env.metrics import fit_sigmoid

    samples, values = _stack(curves)
    mean = values.mean(axis=(0, 2))
    out: dict[str, Any] = {"n_points": len(samples), "A": math.nan, "B": math.nan, "C_mid": math.nan,
                           "R0": float(mean[0]), "r2": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                           "boot_A": [], "boot_failed": 0}
    if len(samples) < min_points:  # not identifiable whatever a fit would say: spare the fits
        return {**out, "identifiable": False,
                "reason": f"only {len(samples)} evaluation points (at least {min_points} are needed for a 3-parameter "
                          "curve with its start fixed)"}
    try:
        fit = fit_sigmoid(samples, mean, r0=float(mean[0]))
    except ValueError as exc:
        return {**out, "identifiable": False, "reason": f"the fit failed: {str(exc).splitlines()[0]}"}
    out.update(A=fit.A, B=fit.B, C_mid=fit.C_mid, r2=fit.r2)
    boot: list[float] = []
    for curve in _resampled_means(values, draws):
        try:
            boot.append(fit_sigmoid(samples, curve, r0=float(curve[0])).A)
        except ValueError:
            boot.append(math.nan)
    finite = [v for v in boot if math.isfinite(v)]
    out.update(boot_A=boot, boot_failed=len(boot) - len(finite))
    if finite:
        out.update(ci_low=float(np.quantile(finite, 0.025)), ci_high=float(np.quantile(finite, 0.975)))
    reasons = []
    if fit.C_mid > float(samples.max()):
        reasons.append(f"the fitted midpoint ({fit.C_mid:.0f} samples) lies beyond the last measured point "
                       f"({samples.max():.0f}): A is an extrapolation")
    if float(np.ptp(mean)) == 0:
        reasons.append("the mean curve is flat (the same accuracy at every point): the curve's shape, and so "
                       "its asymptote, is not determined by these data")
    elif fit.A >= 0.999 or (fit.A <= 0.001 and float(mean.max()) > 0.001):
        reasons.append(f"A sits at a bound of the fit ({fit.A:.3f})")
    if len(finite) < 0.5 * max(len(boot), 1):
        reasons.append(f"{len(boot) - len(finite)} of {len(boot)} bootstrap fits failed")
    elif finite and out["ci_high"] - out["ci_low"] > max_width:
        reasons.append(f"the bootstrap interval of A is {out['ci_high'] - out['ci_low']:.2f} wide "
                       f"(more than {max_width})")
    return {**out, "identifiable": not reasons, "reason": "; ".join(reasons)}


def asymptote_difference(fst: Mapping[str, Any], rl: Mapping[str, Any]) -> dict[str, Any]:
    """FST's asymptote minus RL-only's, bootstrapped pairwise (the same resamples), with a verdict."""
    a, b = np.asarray(fst["boot_A"], dtype=float), np.asarray(rl["boot_A"], dtype=float)
    both = np.isfinite(a) & np.isfinite(b) if a.shape == b.shape else np.zeros(0, dtype=bool)
    diff = (a - b)[both] if both.size else np.zeros(0)
    low, high = (float(v) for v in np.quantile(diff, [0.025, 0.975])) if diff.size else (math.nan, math.nan)
    out = {"mean": fst["A"] - rl["A"], "ci_low": low, "ci_high": high, "n_boot": int(diff.size),
           "sign": _sign(low, high)}
    if not (fst["identifiable"] and rl["identifiable"]):
        which = [name for name, fit in (("FST", fst), ("RL-only", rl)) if not fit["identifiable"]]
        return {**out, "verdict": "not resolvable",
                "why": f"the asymptote is not identifiable at this scale for {' and '.join(which)}"}
    verdict = {"positive": "agree", "negative": "disagree"}.get(out["sign"], "not resolvable")
    why = {"agree": "FST's asymptote is higher and the interval of the difference excludes 0",
           "disagree": "FST's asymptote is lower and the interval of the difference excludes 0"}.get(
        verdict, "the interval of the difference includes 0")
    return {**out, "verdict": verdict, "why": why}


# ----------------------------------------------------------------------------------------------- claim (c)
def matched_kl(curves: Mapping[str, Sequence[Mapping[str, Any]]], target: float | None = None, *,
               tolerance: float = MATCH_TOLERANCE) -> dict[str, Any]:
    """Each arm's KL to the base where its mean accuracy is closest to a common target, with intervals over seeds.

    The target defaults to the highest mean accuracy both FST and RL-only reach after training started (the
    minimum over the two arms of their best point past the baseline). An arm's matched point is the evaluation
    (past the baseline; the earliest on a tie) whose mean accuracy over seeds is closest to it. ``tolerance``:
    matched accuracies further apart than this are not a matched comparison.
    """
    arms = {name: list(c) for name, c in curves.items() if c and all(v is not None for x in c for v in x["kl"])}
    out: dict[str, Any] = {"target": math.nan, "arms": {}}
    if not all(name in arms for name in SLOW_ARMS):
        missing = [name for name in SLOW_ARMS if name not in arms]
        return {**out, "verdict": "not resolvable", "why": f"no KL measured for {', '.join(missing)} "
                                                           "(schedule.kl_prompts = 0, or the arm failed)"}
    means = {}
    for name, arm in arms.items():
        points = min(len(c["accuracy"]) for c in arm)
        means[name] = (np.mean([c["accuracy"][:points] for c in arm], axis=0),
                       np.asarray([c["kl"][:points] for c in arm], dtype=float))
    if any(len(means[name][0]) < 2 for name in SLOW_ARMS):
        return {**out, "verdict": "not resolvable", "why": "no evaluation after training started"}
    if target is None:
        target = float(min(means[name][0][1:].max() for name in SLOW_ARMS))
    out["target"] = target
    for name, (accuracy, kl) in means.items():
        index = 1 + int(np.argmin(np.abs(accuracy[1:] - target)))
        out["arms"][name] = {"index": index, "accuracy": float(accuracy[index]), "kl_per_seed": kl[:, index].tolist(),
                             **{f"kl_{k}": v for k, v in mean_interval(kl[:, index].tolist()).items()}}
    fst, rl = out["arms"]["fst"], out["arms"]["rl"]
    diff = paired(fst["kl_per_seed"], rl["kl_per_seed"])
    reduction = 1 - fst["kl_mean"] / rl["kl_mean"] if rl["kl_mean"] > 0 else math.nan
    out.update(difference=diff, reduction=reduction)
    start = float(np.mean([means[name][0][0] for name in SLOW_ARMS]))
    if target <= start:
        verdict, why = "not resolvable", ("neither FST nor RL-only rose above the shared starting accuracy, so there "
                                          "is no trained accuracy to match KL at")
    elif abs(fst["accuracy"] - rl["accuracy"]) > tolerance:
        verdict, why = "not resolvable", (f"the matched points' accuracies differ by "
                                          f"{abs(fst['accuracy'] - rl['accuracy']):.2f} (> {tolerance})")
    elif diff["sign"] == "negative":
        verdict, why = "agree", "FST's KL is lower at matched accuracy and the interval over seeds excludes 0"
    elif diff["sign"] == "positive":
        verdict, why = "disagree", "FST's KL is higher at matched accuracy and the interval over seeds excludes 0"
    else:
        verdict, why = "not resolvable", (f"the FST-minus-RL KL interval over {diff['n']} seeds "
                                          + ("includes 0" if diff["sign"] == "includes 0" else "cannot be formed"))
    return {**out, "verdict": verdict, "why": why}


# ----------------------------------------------------------------------------------------------- claim (d)
def plasticity(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Task-B accuracy gain of fresh RL from each init (``before``/``after`` per-problem lists per seed), and FST-init
    minus RL-init gain paired by (seed, problem) and pooled over seeds."""
    out: dict[str, Any] = {"inits": {}}
    gains: dict[str, list[float]] = {}
    for init, seeds in runs.items():
        before = [v for s in seeds for v in s["before"]]
        after = [v for s in seeds for v in s["after"]]
        gains[init] = list(np.subtract(after, before))
        out["inits"][init] = {"before": float(np.mean(before)), "after": float(np.mean(after)),
                              "gain": paired(after, before), "seeds": len(seeds)}
    if not all(name in gains for name in SLOW_ARMS):
        missing = [name for name in SLOW_ARMS if name not in gains]
        return {**out, "verdict": "not resolvable", "why": f"no plasticity run from the {', '.join(missing)} weights"}
    n = min(len(gains["fst"]), len(gains["rl"]))
    diff = paired(gains["fst"][:n], gains["rl"][:n])
    verdict = {"positive": "agree", "negative": "disagree"}.get(diff["sign"], "not resolvable")
    why = {"agree": "RL on task B gained more from the FST weights; the interval excludes 0",
           "disagree": "RL on task B gained more from the RL weights; the interval excludes 0"}.get(
        verdict, "the interval of the gain difference includes 0" if diff["sign"] == "includes 0"
        else "too few paired problems for an interval")
    return {**out, "difference": diff, "verdict": verdict, "why": why}


def continual(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Forgetting and transfer of the A-then-B schedule per arm (:func:`continual_metrics` per seed, averaged), and
    FST minus RL-only forgetting of task A paired by (seed, problem)."""
    from fst_env.metrics import continual_metrics

    out: dict[str, Any] = {"arms": {}}
    forgetting: dict[str, list[float]] = {}
    for arm, seeds in runs.items():
        per_seed = []
        for s in seeds:
            baseline = s.get("baseline")
            metrics = continual_metrics(s["matrix"], baseline=baseline if baseline and None not in baseline else None)
            per_seed.append(metrics.as_dict())
        forgetting[arm] = list(np.subtract(
            [v for s in seeds for v in s["per_problem"]["A_after_A"]],
            [v for s in seeds for v in s["per_problem"]["A_after_B"]]))
        out["arms"][arm] = {name: mean_interval([m[name] for m in per_seed])
                            for name in ("average_accuracy", "forgetting", "backward_transfer", "forward_transfer")}
        out["arms"][arm]["matrix_mean"] = np.mean([s["matrix"] for s in seeds], axis=0).tolist()
        out["arms"][arm]["seeds"] = len(seeds)
    if not all(name in forgetting for name in SLOW_ARMS):
        missing = [name for name in SLOW_ARMS if name not in forgetting]
        return {**out, "verdict": "not resolvable", "why": f"no continual run for {', '.join(missing)}"}
    n = min(len(forgetting["fst"]), len(forgetting["rl"]))
    diff = paired(forgetting["fst"][:n], forgetting["rl"][:n])
    verdict = {"negative": "agree", "positive": "disagree"}.get(diff["sign"], "not resolvable")
    why = {"agree": "FST forgot less of task A; the interval excludes 0",
           "disagree": "FST forgot more of task A; the interval excludes 0"}.get(
        verdict, "the interval of the forgetting difference includes 0" if diff["sign"] == "includes 0"
        else "too few paired problems for an interval")
    return {**out, "difference": diff, "verdict": verdict, "why": why}


# ----------------------------------------------------------------------------------------------- analysis
def analyse(results: Mapping[str, Any]) -> dict[str, Any]:
    """Every claim's numbers and verdict from the raw ``results`` (curves, continual and plasticity runs)."""
    settings = results["settings"]
    curves = {arm: [results["curves"][arm][s] for s in sorted(results["curves"].get(arm, {}), key=int)]
              for arm in ARMS if results["curves"].get(arm)}
    analysis: dict[str, Any] = {"arms_measured": sorted(curves)}
    usable = [arm for arm in curves if len(curves[arm]) >= 1]
    if usable:
        n_problems = min(len(c["per_problem"][0]) for arm in usable for c in curves[arm])
        # The same rng seed for every arm: arms with the same number of seeds get the same resamples (paired).
        arm_draws = {arm: bootstrap_indices(len(curves[arm]), n_problems, int(settings["bootstrap"]))
                     for arm in usable}
        analysis["curves"] = {arm: mean_curve(curves[arm], arm_draws[arm]) for arm in usable}
        fits = int(settings["fit_bootstrap"])
        analysis["asymptote"] = {arm: asymptote(curves[arm], arm_draws[arm][:fits],
                                                min_points=settings["min_fit_points"],
                                                max_width=settings["max_asymptote_width"]) for arm in usable}
    analysis["shared_baseline"] = shared_baseline(results["curves"])
    # Paired comparisons use only the seeds both FST and RL-only finished (pairs are (seed, problem)).
    by_seed = _common_seeds(results["curves"])
    analysis["paired_seeds"] = [int(k) for k in by_seed.get("fst", {})]
    paired_curves = {arm: list(runs.values()) for arm, runs in by_seed.items()}
    if all(arm in paired_curves for arm in SLOW_ARMS):
        analysis["final_difference"] = final_difference(paired_curves["fst"], paired_curves["rl"])
        analysis["sample_efficiency"] = sample_efficiency(paired_curves["fst"], paired_curves["rl"],
                                                          seeds=analysis["paired_seeds"])
        analysis["asymptote_difference"] = asymptote_difference(analysis["asymptote"]["fst"],
                                                                analysis["asymptote"]["rl"])
    analysis["matched_kl"] = matched_kl(paired_curves)
    plast = {init: list(runs.values()) for init, runs in _common_seeds(results.get("plasticity", {})).items()}
    analysis["plasticity"] = plasticity(plast) if plast else {
        "verdict": "not measured" if not settings.get("plasticity", True) else "not resolvable",
        "why": "the plasticity probe is off in this mode (reproduce.plasticity = false)"
        if not settings.get("plasticity", True) else "no plasticity run finished", "inits": {}}
    cont = {arm: list(runs.values()) for arm, runs in _common_seeds(results.get("continual", {})).items()}
    analysis["continual"] = continual(cont) if cont else {
        "verdict": "not measured" if not settings.get("continual") else "not resolvable",
        "why": "the continual schedule is off in this mode (reproduce.continual = false)"
        if not settings.get("continual") else "no continual run finished", "arms": {}}
    return analysis


def shared_baseline(curves: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Whether, in each seed, every arm's first evaluation (before any training: the same weights and seed context)
    gave the same per-problem results, as evaluation with shared problems and sampling seeds must."""
    seeds = sorted({seed for runs in curves.values() for seed in runs}, key=int)
    same = {}
    for seed in seeds:
        firsts = [runs[seed]["per_problem"][0] for runs in curves.values() if seed in runs]
        if len(firsts) > 1:
            same[seed] = all(first == firsts[0] for first in firsts)
    return {"seeds_checked": len(same), "seeds_identical": sum(same.values()),
            "differing": [int(seed) for seed, ok in same.items() if not ok]}


def _common_seeds(groups: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``groups[name][seed]`` restricted, when both FST and RL-only are present, to the seeds both have (in seed
    order), so that FST-minus-RL differences pair the same seed; otherwise every seed of each group."""
    present = {name: runs for name, runs in groups.items() if runs}
    if all(name in present for name in SLOW_ARMS):
        keep = set(present["fst"]) & set(present["rl"])
    else:
        keep = {seed for runs in present.values() for seed in runs}
    order = sorted(keep, key=int)
    return {name: {seed: runs[seed] for seed in order if seed in runs}
            for name, runs in present.items() if any(seed in runs for seed in order)}


# ----------------------------------------------------------------------------------------------- the report
PAPER = {
    "a": "up to 3x fewer samples than RL to reach RL's peak (abstract); averaged over CodeIO, Math and HoVer-hard at "
         "32k training samples FST ~37.5% vs RL ~34.8% (hero figure, read off the curve)",
    "b": "ScaleRL sigmoid asymptote A, FST vs RL: CodeIO 47.4% vs 43.0%, Math (Polaris) 49.2% vs 46.4%, HoVer-hard "
         "25.0% vs 17.3% (printed on the figure): FST higher on all three",
    "c": "up to 70% less KL to the base at matched reward (abstract); read off the curves: CodeIO ~75%, HoVer ~45%, "
         "Physics ~65% lower",
    "d": "fresh RL on HoVer-hard for 400 steps: from Math checkpoints base 20.2%, RL-init 0.0%, FST-init 16.7%; from "
         "Physics 18.3% / 19.9% / 24.2%. Continual HoVer -> CodeIO -> Physics: RL stalls on CodeIO (20.7% vs FST "
         "37.7%)",
}


def _num(value: Any, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a" if value is None or math.isnan(value) else ("inf" if value > 0 else "-inf")
    return format(value, fmt)


def _interval(d: Mapping[str, Any], fmt: str = "+.3f") -> str:
    if not (math.isfinite(d.get("ci_low", math.nan)) and math.isfinite(d.get("ci_high", math.nan))):
        return f"{_num(d.get('mean'), fmt)} (no interval: n = {d.get('n', 0)})"
    return f"{_num(d['mean'], fmt)} [{_num(d['ci_low'], fmt)}, {_num(d['ci_high'], fmt)}]"


def final_difference_line(analysis: Mapping[str, Any], task: str) -> str:
    """The one line every mode prints: FST minus RL-only final accuracy with its 95% interval."""
    diff = analysis.get("final_difference")
    if diff is None:
        return f"FST minus RL-only, final held-out accuracy on {task}: not measured (an arm failed; see errors)"
    sign = {"positive": "excludes 0: FST higher", "negative": "excludes 0: RL-only higher",
            "includes 0": "includes 0: no resolvable difference"}.get(diff["sign"], "no interval")
    return (f"FST minus RL-only, final held-out accuracy on {task}: {_interval(diff)} (95% t interval over "
            f"n={diff['n']} (seed, problem) pairs = {diff['seeds']} seeds x {diff['problems']} problems, same "
            f"problems and eval seeds; {sign})")


def render_report(results: Mapping[str, Any], analysis: Mapping[str, Any],
                  plots: Mapping[str, str] | None = None) -> str:
    """REPRODUCTION.md: claim by claim, what was measured (n, intervals), the paper's figure, the verdict, and how
    the numbers were made (command, wall time, machine load, settings and every scaling from the paper)."""
    plots = plots or {}
    task_a, task_b = results["task_a"], results["task_b"]
    s = results["settings"]
    wall = results.get("wall_time_s", math.nan)
    lines = [f"# Reproduction of FST's claims in miniature ({results['mode']} mode)", "",
             f"Command: `{results['command']}`", "",
             f"Wall time: {_num(wall / 60 if math.isfinite(wall) else math.nan, '.1f')} min (budget "
             f"{s['budget_minutes']} min). Machine: {results.get('machine', {}).get('cpus', '?')} CPUs, load average "
             f"(1, 5, 15 min) at start {results.get('loadavg_start')}, at end {results.get('loadavg_end')}. "
             f"Model: {results['model']}. Seeds: {', '.join(map(str, results['seeds']))}.",
             "", f"Task A: `{task_a}`. Task B (plasticity, continual): `{task_b}`.", "",
             "Every arm of a seed is evaluated on the same held-out problems with the same sampling seeds (common "
             "random numbers); differences are paired by (seed, problem). Intervals are 95%. "
             + _baseline_check(analysis), "",
             "## FST minus RL-only", "", final_difference_line(analysis, task_a), ""]
    if results.get("errors"):
        lines += ["## Runs that failed", ""]
        lines += [f"- `{key}`: {msg.splitlines()[-1] if msg else 'failed'}" for key, msg in results["errors"].items()]
        lines.append("")

    # (a)
    eff = analysis.get("sample_efficiency")
    lines += ["## (a) Sample efficiency", "", f"Paper: {PAPER['a']}.", ""]
    for arm, curve in analysis.get("curves", {}).items():
        cells = ", ".join(f"{int(x)}: {y:.3f} [{lo:.3f}, {hi:.3f}]" for x, y, lo, hi in
                          zip(curve["rl_samples"], curve["accuracy"], curve["low"], curve["high"], strict=True))
        lines.append(f"- {arm} (mean over {curve['seeds']} seeds x {curve['problems']} problems; RL samples: "
                     f"accuracy [bootstrap band]): {cells}")
    if eff:
        lines.append("")
        for row in eff["per_seed"]:
            reached = ("n/a" if not row["rl_improved"] else "not reached" if math.isnan(row["fst_samples_to_rl_peak"])
                       else f"{row['fst_samples_to_rl_peak']:.0f} RL samples "
                            f"({_num(row['fst_total_samples_to_rl_peak'], '.0f')} with fast-round rollouts)")
            lines.append(f"- seed {row['seed']}: RL-only peak {row['rl_peak']:.3f} (start {row['rl_start']:.3f}) at "
                         f"{_num(row['rl_samples_to_peak'], '.0f')} RL samples; FST: {reached}; ratio "
                         f"{_num(row['ratio'], '.2f') if row['rl_improved'] else 'n/a (RL-only did not improve)'}")
        improved, reached = eff["seeds_rl_improved"], eff["seeds_fst_reached"]
        lines += ["", f"Seeds where RL-only improved: {improved} of {len(eff['per_seed'])}"
                  + ("; without an improvement, samples to reach its peak are not defined" if not improved else
                     f"; FST reached RL-only's peak in {reached} of them"
                     + (f" (not reached in {improved - reached})" if reached < improved else ""))
                  + f". Ratio median {_num(eff['ratio_median'], '.2f')} (min {_num(eff['ratio_min'], '.2f')}, "
                  f"max {_num(eff['ratio_max'], '.2f')}). RL-only's own gain, final minus start: "
                  f"{_interval(eff['rl_gain'])}.", "", _verdict(eff)]
    if not eff:
        lines += ["", _verdict(MISSING_ARMS)]
    lines += _plot_line(plots, "curves")

    # (b)
    lines += ["", "## (b) Asymptote (ScaleRL sigmoid, R0 fixed at the start)", "", f"Paper: {PAPER['b']}.", ""]
    for arm, fit in analysis.get("asymptote", {}).items():
        state = "identifiable" if fit["identifiable"] else f"not identifiable at this scale: {fit['reason']}"
        lines.append(f"- {arm}: A = {_num(fit['A'])} [{_num(fit['ci_low'])}, {_num(fit['ci_high'])}] "
                     f"(bootstrap, {len(fit['boot_A']) - fit['boot_failed']} of {len(fit['boot_A'])} fits), "
                     f"C_mid = {_num(fit['C_mid'], '.0f')} samples, B = {_num(fit['B'], '.2f')}, "
                     f"R^2 = {_num(fit['r2'], '.2f')}, {fit['n_points']} points; {state}")
    if "asymptote_difference" in analysis:
        d = analysis["asymptote_difference"]
        lines += ["", f"FST minus RL-only asymptote: {_num(d['mean'], '+.3f')} [{_num(d['ci_low'], '+.3f')}, "
                      f"{_num(d['ci_high'], '+.3f')}] (paired bootstrap, {d['n_boot']} resamples).", "", _verdict(d)]
    else:
        lines += ["", _verdict(MISSING_ARMS)]

    # (c)
    kl = analysis["matched_kl"]
    lines += ["", "## (c) KL to the base at matched accuracy", "", f"Paper: {PAPER['c']}.", "",
              f"Measured at every evaluation: exact per-token KL(policy || base) over the vocabulary on "
              f"{s['kl_prompts']} held-out task-A prompts without a context, sampled from the current policy; the "
              "base is the same model with its LoRA adapter disabled. Intervals: t over seeds.", ""]
    if kl.get("arms"):
        lines.append(f"Target accuracy {kl['target']:.3f} (the highest mean accuracy both FST and RL-only reach).")
        for arm, row in kl["arms"].items():
            note = " (base weights: KL is 0 by construction)" if arm == "prompt" else ""
            if abs(row["accuracy"] - kl["target"]) > MATCH_TOLERANCE:
                note += f"; it never came within {MATCH_TOLERANCE} of the target"
            value = {"mean": row["kl_mean"], "ci_low": row["kl_ci_low"], "ci_high": row["kl_ci_high"],
                     "n": row["kl_n"]}
            lines.append(f"- {arm}: at evaluation {row['index']} (accuracy {row['accuracy']:.3f}) KL per token "
                         f"{_interval(value, '.2e')} over {row['kl_n']} seeds{note}")
        lines += ["", f"FST minus RL-only KL (paired by seed): {_interval(kl['difference'], '+.2e')}; reduction "
                      f"{_num(100 * kl['reduction'] if math.isfinite(kl['reduction']) else math.nan, '.0f')}%."]
    lines += ["", _verdict(kl)]
    lines += _plot_line(plots, "kl")

    # (d)
    plast, cont = analysis["plasticity"], analysis["continual"]
    lines += ["", "## (d) Plasticity and continual learning", "", f"Paper: {PAPER['d']}.", "",
              (f"Plasticity probe: fresh RL-only (new LoRA adapter and optimizer, seed context) for "
               f"{s['plasticity_steps']} updates on task B from each init's task-A weights (merged)."
               if s.get("plasticity", True) else "Plasticity probe: off in this mode."), ""]
    for init, row in plast.get("inits", {}).items():
        lines.append(f"- from {init} weights: task-B accuracy {row['before']:.3f} -> {row['after']:.3f}, gain "
                     f"{_interval(row['gain'])} over {row['gain']['n']} (seed, problem) pairs")
    if "difference" in plast:
        lines.append(f"\nFST-init minus RL-init gain: {_interval(plast['difference'])} "
                     f"(n={plast['difference']['n']}).")
    lines += ["", "Plasticity: " + _verdict(plast), ""]
    if cont.get("arms"):
        lines.append(f"Continual schedule: task A for {s['steps']} updates, then task B for {s['continual_steps']}, "
                     "the same agent throughout (FST keeps both channels, RL-only its one).")
        for arm, row in cont["arms"].items():
            m = row["matrix_mean"]
            lines.append(f"- {arm}: accuracy matrix (rows: after A, after B; columns: A, B) "
                         f"[[{m[0][0]:.3f}, {m[0][1]:.3f}], [{m[1][0]:.3f}, {m[1][1]:.3f}]]; forgetting "
                         f"{_interval(row['forgetting'])}, average accuracy {_interval(row['average_accuracy'], '.3f')}"
                         f", backward transfer {_interval(row['backward_transfer'])} ({row['seeds']} seeds)")
        if "difference" in cont:
            lines.append(f"\nFST minus RL-only forgetting of task A: {_interval(cont['difference'])} "
                         f"(n={cont['difference']['n']}).")
    lines += ["", "Continual: " + _verdict(cont)]
    lines += _plot_line(plots, "plasticity")

    lines += ["", "## How it was run", "", _learner_note(results), "",
              "| setting | paper | here | why |", "|---|---|---|---|"]
    lines += [f"| {name} | {paper} | {ours} | {why} |" for name, paper, ours, why in results.get("scaling", [])]
    lines += ["", "Settings of this mode (`fst_env/reproduce.py` SETTINGS_TABLE, `--set reproduce.FIELD=VALUE`):", "",
              "| field | value |", "|---|---|"]
    lines += [f"| {k} | {json.dumps(v)} |" for k, v in s.items()]
    counts = results.get("plan", {})
    if counts:
        lines += ["", f"Planned work: {counts['train_calls']} training runs, {counts['updates']} updates, "
                      f"{counts['evaluations']} evaluations (each: sampled and greedy accuracy on the held-out "
                      "problems, plus KL on its prompts)."]
    if results.get("timing"):
        timing = ", ".join(f"{k} {v:.0f}" for k, v in results["timing"].items())
        lines += ["", f"Seconds per run (an arm's includes its continual stage): {timing}."]
    lines += ["", "Every number above is in `reproduce.json` (raw per-problem curves under `curves`, `plasticity`, "
                  "`continual`; the analysis under `analysis`)."]
    return "\n".join(lines) + "\n"


def _baseline_check(analysis: Mapping[str, Any]) -> str:
    check = analysis.get("shared_baseline") or {}
    if not check.get("seeds_checked"):
        return "(No seed had two arms to check the shared evaluation against.)"
    if not check["differing"]:
        return (f"Check: before training, every arm scored the same on every problem in all {check['seeds_checked']} "
                "seeds, as shared evaluation requires.")
    return (f"**Check failed**: before training, the arms' per-problem results differ in seeds "
            f"{', '.join(map(str, check['differing']))}, although they start from the same weights and context; "
            "paired differences there carry sampling noise that shared evaluation should have removed.")


MISSING_ARMS = {"verdict": "not resolvable",
                "why": "FST or RL-only did not finish on task A (see the runs that failed)"}


def _verdict(claim: Mapping[str, Any]) -> str:
    verdict = claim.get("verdict", "not resolvable")
    label = {"agree": "**Agrees with the paper**", "disagree": "**Disagrees with the paper**",
             "not resolvable": "**Not resolvable at this scale**", "not measured": "**Not measured in this mode**"}
    return f"{label.get(verdict, verdict)}: {claim.get('why', '')}."


def _plot_line(plots: Mapping[str, str], key: str) -> list[str]:
    return ["", f"![{key}]({plots[key]})"] if key in plots else []


def _learner_note(results: Mapping[str, Any]) -> str:
    learner = results.get("fast_learner", "?")
    if learner == "reflective":
        why = ("the paper's reflective learner, with the reflection LM "
               f"{results.get('reflection_model') or 'of the policy itself (its base weights)'}")
    else:
        why = ("not the paper's reflective learner (a frozen GPT-5.2 rewriting the prompt): the embedded SmolLM2-135M "
               "answers the reflection prompt with unusable text and there is no offline reflection LM on this "
               "machine, so the preset's LLM-free learner is used (notes: rules from the env's feedback and hints; "
               "demonstrations: the policy's own correct rollouts)")
    return f"Fast learner in this mode: `{learner}`; {why}. The FST and fast-only arms use the same learner."


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


def make_plots(results: Mapping[str, Any], analysis: Mapping[str, Any], out: Path) -> dict[str, str]:
    """The report's figures (accuracy curves, KL against accuracy, plasticity and forgetting intervals)."""
    from fst_env.plots import reproduction_curves, reproduction_intervals, reproduction_kl

    plots: dict[str, str] = {}
    n = f"{len(results['seeds'])} seeds x {results['settings']['eval_problems']} problems"
    if analysis.get("curves"):
        peak = None
        eff = analysis.get("sample_efficiency")
        if eff and eff["per_seed"]:
            peak = float(np.mean([row["rl_peak"] for row in eff["per_seed"]]))
        series = {arm: {"x": c["rl_samples"], "y": c["accuracy"], "low": c["low"], "high": c["high"]}
                  for arm, c in analysis["curves"].items()}
        plots["curves"] = reproduction_curves(
            series, out / "accuracy_vs_rl_samples.png", title=f"(a) {results['task_a']}: held-out accuracy ({n})",
            hline=peak, hline_label="RL-only peak (mean over seeds)").name
    kl_series = {}
    for arm in ARMS:
        curves = [results["curves"].get(arm, {})[k] for k in sorted(results["curves"].get(arm, {}), key=int)]
        if curves and all(v is not None for c in curves for v in c["kl"]) and arm in analysis.get("curves", {}):
            points = min(len(c["kl"]) for c in curves)
            kl = np.asarray([c["kl"][:points] for c in curves], dtype=float)
            rows = [mean_interval(kl[:, i].tolist()) for i in range(points)]
            curve = analysis["curves"][arm]
            kl_series[arm] = {"kl": [r["mean"] for r in rows], "kl_low": [r["ci_low"] for r in rows],
                              "kl_high": [r["ci_high"] for r in rows], "acc": curve["accuracy"][:points],
                              "acc_low": curve["low"][:points], "acc_high": curve["high"][:points]}
    if kl_series:
        target = analysis["matched_kl"].get("target")
        plots["kl"] = reproduction_kl(kl_series, out / "kl_vs_accuracy.png",
                                      title=f"(c) KL to the base against accuracy ({n})",
                                      target=target if target is not None and math.isfinite(target) else None).name
    rows = []
    for init, row in analysis["plasticity"].get("inits", {}).items():
        rows.append((f"task-B gain, RL from {init} weights", row["gain"]["mean"], row["gain"]["ci_low"],
                     row["gain"]["ci_high"]))
    if "difference" in analysis["plasticity"]:
        d = analysis["plasticity"]["difference"]
        rows.append(("FST-init minus RL-init gain", d["mean"], d["ci_low"], d["ci_high"]))
    for arm, row in analysis["continual"].get("arms", {}).items():
        f = row["forgetting"]
        rows.append((f"forgetting of A, {arm} (over seeds)", f["mean"], f["ci_low"], f["ci_high"]))
    if "difference" in analysis["continual"]:
        d = analysis["continual"]["difference"]
        rows.append(("FST minus RL forgetting", d["mean"], d["ci_low"], d["ci_high"]))
    if "final_difference" in analysis:
        d = analysis["final_difference"]
        rows.append(("FST minus RL final accuracy on A", d["mean"], d["ci_low"], d["ci_high"]))
    if rows:
        plots["plasticity"] = reproduction_intervals(
            rows, out / "differences.png", title="(d) plasticity, forgetting and the final FST-RL difference",
            xlabel="accuracy difference (fraction of problems), 95% interval").name
    return plots


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
