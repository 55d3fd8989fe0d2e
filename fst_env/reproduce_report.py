"""The report of ``fst reproduce``: REPRODUCTION.md's text and its figures, from the results and their analysis.

Why a module of its own: turning measured numbers into prose (the paper's figures next to ours, every interval
with its n, the verdict of each claim, how the numbers were made) and plots is separate from computing them
(:mod:`fst_env.reproduce_analysis`) and from running the arms (:mod:`fst_env.reproduce`); it reads only the
``results`` and ``analysis`` mappings. :mod:`fst_env.reproduce` re-exports every public name here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fst_env.reproduce_analysis import ARMS, MATCH_TOLERANCE, mean_interval

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
    within = diff.get("problem_level")
    noise = (f"; paired over the {within['n']} (seed, problem) pairs, i.e. evaluation noise of these runs alone: "
             f"{_interval(within)}" if within else "")
    return (f"FST minus RL-only, final held-out accuracy on {task}: {_interval(diff)} (95% t interval over "
            f"{diff['seeds']} seeds, each the mean over the same {diff['problems']} problems and eval seeds: a seed "
            f"is one training run per arm, so seeds are the independent units{noise}; {sign})")


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
             "random numbers); differences are paired by problem within a seed, and their intervals are over seeds "
             "(each seed is one training run per arm, so its problems are not independent units). Intervals are "
             "95%. "
             + _baseline_check(analysis), "",
             "## FST minus RL-only", "", final_difference_line(analysis, task_a), "", _fast_channel_line(results),
             ""]
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
                     f"{_interval(row['gain'])} over {row['gain']['n']} seeds")
    if "difference" in plast:
        lines.append(f"\nFST-init minus RL-init gain: {_interval(plast['difference'])} "
                     f"(over {plast['difference']['n']} seeds).")
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
                         f"(over {cont['difference']['n']} seeds).")
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
                      f"{counts['evaluations']} evaluations (each: sampled "
                      f"{'and greedy ' if s.get('eval_greedy', True) else ''}accuracy on the held-out "
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


def _fast_channel_line(results: Mapping[str, Any]) -> str:
    """What the fast channel did on task A, per arm with one, summed over seeds (from each run's counters)."""
    parts = []
    for arm in ("fst", "prompt"):
        runs = [run.get("counters", {}) for run in results.get("curves", {}).get(arm, {}).values()]
        if not runs:
            continue
        total = {name: sum(int(c.get(name, 0)) for c in runs) for name in ("fast_rounds", "fast_rollouts")}
        if all("fast_accepted" in c and "fast_proposals" in c for c in runs):
            proposals = sum(int(c["fast_proposals"]) for c in runs)
            accepted = sum(int(c["fast_accepted"]) for c in runs)
            judged = f"{proposals} proposals, {accepted} accepted"
        else:
            judged = "proposals and acceptances not recorded by this version"
        parts.append(f"{arm}: {total['fast_rounds']} fast rounds, {judged}, {total['fast_rollouts']} fast-round "
                     f"rollouts over {len(runs)} seeds")
    if not parts:
        return "Fast channel: no arm with fast rounds ran."
    return ("Fast channel on task A (a context changes the policy only once a proposal is accepted): "
            + "; ".join(parts) + ".")


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

