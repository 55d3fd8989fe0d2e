"""The analysis of ``fst reproduce``: each of the paper's four claims measured from the runs' raw curves.

Why a module of its own: this is the statistics of the reproduction (mean curves with bootstrap bands over seeds
and problems, paired intervals, the sample-efficiency ratio, the sigmoid asymptote, KL at matched accuracy,
plasticity and continual forgetting, and each claim's verdict): a function of the runs' raw results alone (numpy
and the statistics of :mod:`fst_env.metrics`; no model, no runs), so it is tested on hand-made curves. The arms it
compares (:data:`ARMS`) are defined here, the lowest module that needs them; :mod:`fst_env.reproduce` runs them and
re-exports every public name here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ARMS = ("fst", "rl", "prompt")
SLOW_ARMS = ("fst", "rl")
MATCH_TOLERANCE = 0.1  # matched accuracies further apart than this are not a matched-KL comparison


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
            "accuracy_greedy": [float(r["accuracy_greedy"][task]) if "accuracy_greedy" in r else None
                                for r in ordered],  # None where schedule.eval_greedy was off
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


def across_seeds(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> dict[str, Any]:
    """``a - b`` where ``a[s]`` and ``b[s]`` are seed ``s``'s per-problem values (paired problem by problem).

    Each seed is one training run per arm, and its problems share that run's luck, so the seeds are the
    independent units: the mean of the per-seed mean differences with a 95% t interval over seeds (``n`` =
    seeds; no interval below 2). ``problem_level`` is the same difference paired over the (seed, problem) pairs:
    evaluation noise alone, right for these particular runs but too narrow for the method (a 3-seed full run whose
    FST arm accepted no context, so trained like RL-only with other sampling seeds, gave -0.104 [-0.162, -0.046]
    there and [-0.266, +0.057] over seeds).
    """
    n = min(len(a), len(b))
    per_seed = [float(np.mean(np.subtract(x, y))) for x, y in zip(a[:n], b[:n], strict=True)]
    seed_level = mean_interval(per_seed)
    return {**seed_level, "sign": _sign(seed_level["ci_low"], seed_level["ci_high"]), "seeds": n,
            "per_seed": per_seed,
            "problem_level": paired([v for x in a[:n] for v in x], [v for y in b[:n] for v in y])}


def _sign(low: float, high: float) -> str:
    """``positive`` / ``negative`` when the interval excludes 0, ``includes 0`` otherwise, ``unknown`` without one."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "unknown"
    return "positive" if low > 0 else "negative" if high < 0 else "includes 0"


def final_difference(fst: Sequence[Mapping[str, Any]], rl: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """FST minus RL-only final held-out accuracy, paired by problem within each seed, interval over seeds
    (:func:`across_seeds`)."""
    seeds = min(len(fst), len(rl))
    diff = across_seeds([c["per_problem"][-1] for c in fst[:seeds]], [c["per_problem"][-1] for c in rl[:seeds]])
    return {**diff, "problems": len(fst[0]["per_problem"][-1]) if seeds else 0}


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
    rl_gain = across_seeds([c["per_problem"][-1] for c in rl], [c["per_problem"][0] for c in rl])
    summary = {"per_seed": per_seed, "seeds_rl_improved": improved, "seeds_fst_reached": reached,
               "ratio_median": float(np.median(ratios)) if ratios else math.nan,
               "ratio_min": float(np.min(ratios)) if ratios else math.nan,
               "ratio_max": float(np.max(ratios)) if ratios else math.nan, "rl_gain": rl_gain}
    if improved == 0:
        verdict, why = "not resolvable", ("RL-only never rose above its starting accuracy, so its peak is the "
                                          "baseline both arms share and FST 'reaches' it at 0 samples")
    elif rl_gain["sign"] != "positive":
        state = {"includes 0": "includes 0", "negative": "lies below 0"}.get(rl_gain["sign"], "cannot be formed")
        verdict, why = "not resolvable", (f"RL-only's own gain (final minus start, interval over seeds) has an "
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
    minus RL-init gain, paired by problem within each seed, interval over seeds (:func:`across_seeds`)."""
    out: dict[str, Any] = {"inits": {}}
    gains: dict[str, list[list[float]]] = {}
    for init, seeds in runs.items():
        gains[init] = [list(np.subtract(s["after"], s["before"])) for s in seeds]
        out["inits"][init] = {"before": float(np.mean([v for s in seeds for v in s["before"]])),
                              "after": float(np.mean([v for s in seeds for v in s["after"]])),
                              "gain": across_seeds([s["after"] for s in seeds], [s["before"] for s in seeds]),
                              "seeds": len(seeds)}
    return _fst_minus_rl(out, gains, agree_sign="positive", missing="no plasticity run from the {} weights",
                         agree="RL on task B gained more from the FST weights",
                         disagree="RL on task B gained more from the RL weights", quantity="gain")


def continual(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Forgetting and transfer of the A-then-B schedule per arm (:func:`continual_metrics` per seed, averaged), and
    FST minus RL-only forgetting of task A, paired by problem within each seed, interval over seeds."""
    from fst_env.metrics import continual_metrics

    out: dict[str, Any] = {"arms": {}}
    forgetting: dict[str, list[list[float]]] = {}
    for arm, seeds in runs.items():
        per_seed = []
        for s in seeds:
            baseline = s.get("baseline")
            metrics = continual_metrics(s["matrix"], baseline=baseline if baseline and None not in baseline else None)
            per_seed.append(metrics.as_dict())
        forgetting[arm] = [list(np.subtract(s["per_problem"]["A_after_A"], s["per_problem"]["A_after_B"]))
                           for s in seeds]
        out["arms"][arm] = {name: mean_interval([m[name] for m in per_seed])
                            for name in ("average_accuracy", "forgetting", "backward_transfer", "forward_transfer")}
        out["arms"][arm]["matrix_mean"] = np.mean([s["matrix"] for s in seeds], axis=0).tolist()
        out["arms"][arm]["seeds"] = len(seeds)
    return _fst_minus_rl(out, forgetting, agree_sign="negative", missing="no continual run for {}",
                         agree="FST forgot less of task A", disagree="FST forgot more of task A",
                         quantity="forgetting")


def _fst_minus_rl(out: dict[str, Any], values: Mapping[str, Sequence[Sequence[float]]], *, agree_sign: str,
                  missing: str, agree: str, disagree: str, quantity: str) -> dict[str, Any]:
    """``out`` with the FST minus RL-only difference of ``values`` (per seed, per problem; :func:`across_seeds`)
    and its verdict: "agree" when the interval excludes 0 on the paper's side (``agree_sign``), "disagree" on the
    other, else "not resolvable"."""
    absent = [name for name in SLOW_ARMS if name not in values]
    if absent:
        return {**out, "verdict": "not resolvable", "why": missing.format(", ".join(absent))}
    n = min(len(values["fst"]), len(values["rl"]))
    diff = across_seeds(values["fst"][:n], values["rl"][:n])
    other = {"positive": "negative", "negative": "positive"}[agree_sign]
    verdict = {agree_sign: "agree", other: "disagree"}.get(diff["sign"], "not resolvable")
    why = {"agree": f"{agree}; the interval excludes 0", "disagree": f"{disagree}; the interval excludes 0"}.get(
        verdict, f"the interval of the {quantity} difference includes 0" if diff["sign"] == "includes 0"
        else "fewer than 2 seeds: no interval")
    return {**out, "difference": diff, "verdict": verdict, "why": why}


def _unless_fast_inert(claim: dict[str, Any], fst: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``claim`` as it is, unless no FST seed accepted a context: then its fast channel changed nothing and a
    verdict from per-seed counts (no interval) only compares RL trajectories that drew different samples."""
    counters = [c.get("counters", {}) for c in fst]
    if claim["verdict"] not in ("agree", "disagree") or not counters or any(
            "fast_accepted" not in c for c in counters) or sum(int(c["fast_accepted"]) for c in counters):
        return claim
    proposals = sum(int(c.get("fast_proposals", 0)) for c in counters)
    return {**claim, "verdict": "not resolvable",
            "why": f"no FST seed accepted a context (0 of {proposals} proposals), so FST's weights trained as "
                   f"RL-only's do and the per-seed comparison ({claim['why']}) is run-to-run spread"}


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
        analysis["sample_efficiency"] = _unless_fast_inert(
            sample_efficiency(paired_curves["fst"], paired_curves["rl"], seeds=analysis["paired_seeds"]),
            paired_curves["fst"])
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

