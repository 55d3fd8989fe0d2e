"""fst reproduce: CLI wiring, a miniature run on the tiny model, shared evaluation across arms, honest verdicts and
the claim helpers on hand-made curves with known answers."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from fst_env import reproduce as rp
from fst_env.cli import main, make_parser
from fst_env.metrics import _sigmoid
from fst_env.reproduce_report import _baseline_check

# Seconds, not minutes: 2 seeds, 2 updates per arm, 2 held-out problems, 8-token completions.
MINI = ["reproduce", "--model", "tiny", "--quick", "--seeds", "2", "--set", "reproduce.steps=2",
        "--set", "reproduce.eval_every=1",
        "--set", "reproduce.eval_problems=2", "--set", "reproduce.kl_prompts=1", "--set", "reproduce.fast_every=1",
        "--set", "reproduce.continual=true", "--set", "reproduce.continual_steps=1",
        "--set", "reproduce.plasticity=true", "--set", "reproduce.plasticity_steps=1",
        "--set", "reproduce.bootstrap=100", "--set", "reproduce.fit_bootstrap=10", "--set", "agent.max_new_tokens=8"]


def curve(samples, accuracy, *, problems=4, kl=None, fast=None):
    """A hand-made run curve: every problem at the given accuracy (so per-seed means are exact)."""
    return {"step": list(range(len(samples))), "rl_samples": list(samples),
            "fast_rollouts": list(fast or [0] * len(samples)), "accuracy": list(accuracy),
            "ci": [[0.0, 1.0]] * len(samples), "accuracy_greedy": list(accuracy),
            "per_problem": [[float(a)] * problems for a in accuracy],
            "kl": list(kl) if kl is not None else [None] * len(samples), "entropy": [None] * len(samples),
            "n": problems, "k": 1, "wall_time_s": 1.0, "counters": {}, "best_context": {}}


def hand_results(curves, *, plasticity=None, continual=None, mode="quick"):
    settings = rp.settings_for(mode, ["reproduce.bootstrap=200", "reproduce.fit_bootstrap=10"])
    return {"mode": mode, "command": "fst reproduce --quick", "model": "tiny", "seeds": [0, 1, 2],
            "settings": rp.dataclasses.asdict(settings), "task_a": "A", "task_b": "B",
            "curves": {arm: {str(i): c for i, c in enumerate(cs)} for arm, cs in curves.items()},
            "plasticity": {init: {str(i): r for i, r in enumerate(rs)} for init, rs in (plasticity or {}).items()},
            "continual": {arm: {str(i): r for i, r in enumerate(rs)} for arm, rs in (continual or {}).items()},
            "errors": {}, "timing": {}, "wall_time_s": 60.0, "loadavg_start": [1.0, 1.0, 1.0],
            "loadavg_end": [1.0, 1.0, 1.0], "fast_learner": "notes", "scaling": [], "plan": {}}


# ------------------------------------------------------------------------------------------ CLI wiring
def test_parser_wires_the_reproduce_subcommand():
    args = make_parser().parse_args(["reproduce", "--quick", "--seeds", "4", "--out", "x", "--set",
                                     "reproduce.steps=2", "--set", "agent.lr=1e-4"])
    assert args.func.__name__ == "cmd_reproduce" and args.quick and args.seeds == 4 and args.out == "x"
    assert args.set == ["reproduce.steps=2", "agent.lr=1e-4"] and args.model == "embedded"
    assert make_parser().parse_args(["reproduce"]).out == "runs/reproduce"


def test_reproduce_help_imports_nothing_heavy():
    probe = ("import sys\nfrom fst_env.cli import main\ntry:\n    main(['reproduce', '--help'])\nexcept SystemExit:\n"
             "    pass\nprint('HEAVY:' + ','.join(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "--quick" in done.stdout and done.stdout.rsplit("HEAVY:", 1)[-1].strip() == ""


@pytest.mark.parametrize("setting, message", [("reproduce.nope=1", "unknown reproduce field"),
                                              ("reproduce.seeds=0", "reproduce.seeds: must be an int >= 1"),
                                              ("reproduce.continual=3", "reproduce.continual: must be true or false"),
                                              ("agent.nope=1", "agent.nope: unknown field")])
def test_bad_settings_are_one_line_errors(setting, message, tmp_path, capsys):
    assert main(["reproduce", "--model", "tiny", "--out", str(tmp_path / "r"), "--set", setting]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written before the settings validate


def test_settings_come_from_the_table_and_the_cpu_preset():
    quick, full = rp.settings_for("quick"), rp.settings_for("full")
    assert quick.seeds == full.seeds == 3 and quick.budget_minutes == 15 and full.budget_minutes == 60
    assert full.plasticity and full.continual and full.eval_every and full.steps % full.eval_every  # no duplicate
    assert rp.plan(full)["evaluations"] // full.seeds == 3 * (1 + full.steps // full.eval_every + 1) + 2 * 2 + 2 * 3
    assert (quick.tau, quick.kl_coef, quick.population_size) == (4.0, 0.001, 4)  # the paper's values
    assert rp.settings_for("quick", ["reproduce.kl_coef=0"], seeds=5).kl_coef == 0.0
    config = rp.base_config("tiny", quick)
    preset = rp.PRESETS["cpu"]["agent"]
    agent = config.agent_config()
    for field in ("group_size", "groups_per_step", "fast_learner", "max_new_tokens", "temperature", "lr"):
        if field in preset:
            assert getattr(agent, field) == preset[field], field
    assert config.stages[0]["env_id"] == rp.RunConfig().stages[0]["env_id"]
    assert config.stages[0]["steps"] == quick.steps == 4
    assert rp.task_b_stage(config, quick)["env_kwargs"]["difficulty"] == "medium"


# ------------------------------------------------------------------------------------------ a miniature run
def test_miniature_run_writes_every_section_and_shares_evaluation_across_arms(tmp_path, monkeypatch):
    from fst_env.agents.fst_agent import FSTAgent

    calls = []
    original = FSTAgent.evaluate

    def recording(self, env_id=None, **kwargs):
        result = original(self, env_id, **kwargs)
        arm = "prompt" if self.slow is None else "rl" if self.fast is None else "fst"
        calls.append((arm, self.config.seed, env_id, json.dumps(kwargs, sort_keys=True), len(result["per_problem"])))
        return result

    monkeypatch.setattr(FSTAgent, "evaluate", recording)
    out = tmp_path / "rep"
    assert main([*MINI, "--out", str(out)]) == 0

    report = (out / "REPRODUCTION.md").read_text()
    for heading in ("## FST minus RL-only", "## (a) Sample efficiency", "## (b) Asymptote",
                    "## (c) KL to the base at matched accuracy", "## (d) Plasticity and continual learning",
                    "## How it was run", "| setting | paper | here | why |"):
        assert heading in report, heading
    line = (r"FST minus RL-only, final held-out accuracy on \S+: [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] "
            r"\(95% t interval over 2 seeds, each the mean over the same 2 problems")
    assert re.search(line, report)
    assert "Command: `fst reproduce --quick --out" in report and "load average" in report
    assert "Fast learner in this mode: `notes`" in report
    assert "Check: before training, every arm scored the same on every problem in all 2 seeds" in report
    for claim in ("(a)", "(b)", "(c)", "(d)"):
        section = report.split(f"## {claim}")[1].split("\n## ")[0]
        assert re.search(r"\*\*(Agrees with the paper|Disagrees with the paper|Not resolvable at this scale)\*\*",
                         section), claim

    data = json.loads((out / "reproduce.json").read_text())
    assert data["seeds"] == [0, 1] and not data["errors"]
    assert set(data["curves"]) == {"fst", "rl", "prompt"} and set(data["plasticity"]) == {"fst", "rl"}
    assert set(data["continual"]) == {"fst", "rl"}
    for key in ("final_difference", "sample_efficiency", "asymptote", "matched_kl", "plasticity", "continual"):
        assert key in data["analysis"], key
    for name in data["plots"].values():
        assert (out / name).stat().st_size > 0

    # Every arm of a seed evaluated task A with the same settings and seed (hence the same problems and sampling
    # seeds: FSTAgent.evaluate derives them from config seed, task, split, problem and sample only).
    task_a = data["task_a_stage"]["env_id"]
    for seed in (0, 1):
        per_arm = {arm: sorted({c[1:] for c in calls if c[0] == arm and c[1] == seed and c[2] == task_a
                                and "medium" not in c[3]}) for arm in ("fst", "rl", "prompt")}
        assert per_arm["fst"] and per_arm["fst"] == per_arm["rl"] == per_arm["prompt"], per_arm
    curves = data["curves"]
    for seed in ("0", "1"):
        assert curves["fst"][seed]["rl_samples"] == curves["rl"][seed]["rl_samples"] == curves["prompt"][seed][
            "rl_samples"]
        # Before training every arm has the same weights and context: the same baseline, problem by problem.
        assert curves["fst"][seed]["per_problem"][0] == curves["rl"][seed]["per_problem"][0] == \
            curves["prompt"][seed]["per_problem"][0]


def test_a_crashing_arm_keeps_the_others(tmp_path, monkeypatch):
    original = rp.Reproduction._train

    def flaky(self, agent, config, run_dir):
        if config.mode == "rl" and "continual" not in run_dir.name and "plasticity" not in run_dir.name:
            raise RuntimeError("simulated crash in the RL arm")
        return original(self, agent, config, run_dir)

    monkeypatch.setattr(rp.Reproduction, "_train", flaky)
    out = tmp_path / "rep"
    assert main([*MINI, "--seeds", "1", "--set", "reproduce.continual=false", "--out", str(out)]) == 0
    data = json.loads((out / "reproduce.json").read_text())
    assert "simulated crash" in data["errors"]["seed0/rl"]
    assert set(data["curves"]) == {"fst", "prompt"} and "fst" in data["plasticity"]
    report = (out / "REPRODUCTION.md").read_text()
    assert "## Runs that failed" in report and "not measured (an arm failed" in report
    assert report.count("FST or RL-only did not finish on task A") == 2  # (a) and (b) say why they have no verdict


# ------------------------------------------------------------------------------------------ honest verdicts
def test_report_says_not_resolvable_when_nothing_moved():
    flat = [curve([0, 8, 16], [0.25, 0.25, 0.25], kl=[0.0, 1e-4, 2e-4]) for _ in range(3)]
    results = hand_results({"fst": flat, "rl": flat, "prompt": flat})
    analysis = rp.analyse(results)
    report = rp.render_report(results, analysis)
    assert analysis["sample_efficiency"]["verdict"] == "not resolvable"
    assert "RL-only never rose above its starting accuracy" in report and "FST: n/a" in report
    assert "samples to reach its peak are not defined" in report
    assert analysis["asymptote"]["fst"]["identifiable"] is False
    assert "not identifiable at this scale" in report
    assert analysis["matched_kl"]["verdict"] == "not resolvable"
    assert "includes 0: no resolvable difference" in report
    assert "Continual: **Not measured in this mode**" in report  # quick mode: the continual schedule is off
    assert "Plasticity: **Not measured in this mode**" in report


def test_report_says_not_reached_when_fst_never_gets_to_rl_peak():
    samples = [0, 8, 16, 24]
    rl = [curve(samples, [0.1, 0.3, 0.5, 0.6]) for _ in range(3)]
    fst = [curve(samples, [0.1, 0.2, 0.25, 0.3]) for _ in range(3)]
    results = hand_results({"fst": fst, "rl": rl})
    analysis = rp.analyse(results)
    eff = analysis["sample_efficiency"]
    assert eff["seeds_fst_reached"] == 0 and eff["verdict"] == "disagree"
    assert all(math.isnan(row["fst_samples_to_rl_peak"]) for row in eff["per_seed"])
    report = rp.render_report(results, analysis)
    assert "FST: not reached" in report and "(not reached in 3)" in report and "**Disagrees with the paper**" in report
    assert "excludes 0: RL-only higher" in report


def test_rl_gain_within_noise_is_not_resolvable():
    samples = [0, 8]
    # RL's final point is higher on one problem of four in one seed only: its peak is within noise.
    rl = [curve(samples, [0.0, 0.0]) for _ in range(3)]
    rl[0]["per_problem"][1] = [1.0, 0.0, 0.0, 0.0]
    rl[0]["accuracy"][1] = 0.25
    fst = [curve(samples, [0.0, 0.0]) for _ in range(3)]
    eff = rp.sample_efficiency(fst, rl)
    assert eff["seeds_rl_improved"] == 1 and eff["verdict"] == "not resolvable"
    assert "within sampling noise" in eff["why"]


# ------------------------------------------------------------------------------------------ helpers, known answers
def test_sample_efficiency_ratio_on_known_curves():
    samples = [0, 8, 16, 24]
    rl = [curve(samples, [0.1, 0.2, 0.3, 0.4])]
    fst = [curve(samples, [0.1, 0.4, 0.45, 0.5], fast=[0, 10, 20, 30])]
    eff = rp.sample_efficiency(fst * 3, rl * 3)
    row = eff["per_seed"][0]
    assert row["rl_peak"] == 0.4 and row["rl_samples_to_peak"] == 24 and row["fst_samples_to_rl_peak"] == 8
    assert row["fst_total_samples_to_rl_peak"] == 18 and row["ratio"] == pytest.approx(3.0)
    assert eff["ratio_median"] == pytest.approx(3.0) and eff["verdict"] == "agree"


def test_asymptote_recovers_a_known_sigmoid_and_refuses_short_curves():
    samples = np.array([0, 50, 100, 200, 400, 800, 1600, 3200], dtype=float)
    truth = _sigmoid(samples, 0.6, 1.5, 300.0, 0.1)
    curves = [curve(samples.tolist(), truth.tolist()) for _ in range(3)]
    draws = rp.bootstrap_indices(3, 4, 4)  # every resample of identical seeds and problems is the same curve
    fit = lower = rp.asymptote(curves, draws)
    assert fit["identifiable"], fit["reason"]
    assert fit["A"] == pytest.approx(0.6, abs=0.01) and fit["C_mid"] == pytest.approx(300, rel=0.05)
    assert fit["ci_low"] <= 0.6 + 0.01 and fit["ci_high"] >= 0.6 - 0.01

    short = [curve(samples[:4].tolist(), truth[:4].tolist()) for _ in range(3)]
    fit = rp.asymptote(short, draws)
    assert not fit["identifiable"] and "evaluation points" in fit["reason"]
    # Still rising at the last point: the midpoint lies beyond the data, so A is an extrapolation.
    rising = _sigmoid(samples, 0.9, 2.0, 20000.0, 0.1)
    fit = rp.asymptote([curve(samples.tolist(), rising.tolist()) for _ in range(3)], draws)
    assert not fit["identifiable"] and "extrapolation" in fit["reason"]

    higher = rp.asymptote([curve(samples.tolist(), _sigmoid(samples, 0.8, 1.5, 300.0, 0.1).tolist())] * 3, draws)
    diff = rp.asymptote_difference(higher, lower)
    assert diff["mean"] == pytest.approx(0.2, abs=0.02) and diff["verdict"] == "agree"


def test_matched_kl_picks_the_point_closest_to_the_common_target():
    fst = [curve([0, 8, 16, 24], [0.1, 0.3, 0.5, 0.5], kl=[0.0, 0.01, 0.02 + 0.001 * i, 0.03]) for i in range(3)]
    rl = [curve([0, 8, 16, 24], [0.1, 0.2, 0.4, 0.52], kl=[0.0, 0.02, 0.05, 0.08 + 0.002 * i]) for i in range(3)]
    prompt = [curve([0, 8, 16, 24], [0.1, 0.3, 0.3, 0.3], kl=[0.0] * 4) for _ in range(3)]
    out = rp.matched_kl({"fst": fst, "rl": rl, "prompt": prompt})
    assert out["target"] == pytest.approx(0.5)  # min(best FST 0.5, best RL 0.52)
    assert out["arms"]["fst"]["index"] == 2 and out["arms"]["rl"]["index"] == 3
    assert out["arms"]["fst"]["kl_mean"] == pytest.approx(0.021)
    assert out["arms"]["rl"]["kl_mean"] == pytest.approx(0.082)
    assert out["reduction"] == pytest.approx(1 - 0.021 / 0.082)
    assert out["arms"]["prompt"]["kl_mean"] == 0.0 and out["verdict"] == "agree"
    assert rp.matched_kl({"fst": fst, "rl": rl}, target=0.25)["arms"]["rl"]["index"] == 1
    no_kl = [curve([0, 8], [0.1, 0.2]) for _ in range(3)]
    assert rp.matched_kl({"fst": no_kl, "rl": no_kl})["verdict"] == "not resolvable"


def test_plasticity_and_continual_on_known_numbers():
    ones, zeros, half = [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]
    runs = {"fst": [{"before": zeros, "after": ones}] * 3, "rl": [{"before": zeros, "after": half}] * 3}
    out = rp.plasticity(runs)
    assert out["inits"]["fst"]["gain"]["mean"] == 1.0 and out["inits"]["rl"]["gain"]["mean"] == 0.5
    assert out["difference"]["mean"] == pytest.approx(0.5) and out["difference"]["n"] == 3  # seeds
    assert out["verdict"] == "agree"

    def run(a_after_a, a_after_b):
        return {"matrix": [[np.mean(a_after_a), 0.0], [np.mean(a_after_b), 0.5]], "baseline": [0.0, None],
                "per_problem": {"A_after_A": a_after_a, "A_after_B": a_after_b, "B_after_A": zeros,
                                "B_after_B": half}}

    cont = rp.continual({"fst": [run(ones, ones)] * 3, "rl": [run(ones, half)] * 3})
    assert cont["arms"]["fst"]["forgetting"]["mean"] == 0.0 and cont["arms"]["rl"]["forgetting"]["mean"] == 0.5
    assert cont["arms"]["rl"]["backward_transfer"]["mean"] == -0.5
    assert cont["difference"]["mean"] == pytest.approx(-0.5) and cont["verdict"] == "agree"


def test_curve_from_summary_keeps_one_point_per_step():
    def row(step, acc):
        return {"step": step, "rl_samples": 8 * step, "fast_rollouts": 0, "k": 1, "accuracy": {"t": acc},
                "ci": {"t": [0.0, 1.0]}, "accuracy_greedy": {"t": acc}, "per_problem": {"t": [acc, acc]},
                "n": {"t": 2}, "kl": 0.01 * step}

    summary = {"baseline_row": row(0, 0.0), "evals": [row(2, 0.5), row(2, 0.5), row(3, 0.75)]}
    c = rp.curve_from_summary(summary, "t")
    assert c["step"] == [0, 2, 3] and c["accuracy"] == [0.0, 0.5, 0.75] and c["kl"] == [0.0, 0.02, 0.03]


def test_plan_counts_the_work():
    s = rp.settings_for("full", ["reproduce.plasticity_base=true", "reproduce.steps=8",
                                  "reproduce.eval_every=2"])
    counts = rp.plan(s)
    assert counts["evaluations"] == s.seeds * (3 * (1 + 4 + 1) + 3 * 2 + 2 * 3)  # 8 steps, every 2: 0,2,4,6,8,8
    assert counts["train_calls"] == s.seeds * (3 + 3 + 2)
    assert rp.plan(rp.settings_for("quick"))["train_calls"] == 3 * 3  # quick: no plasticity, no continual


def test_differences_pair_the_same_seed_when_an_arm_lost_one():
    samples = [0, 8, 16]
    fst = {str(k): curve(samples, [0.1, 0.1 * k, 0.2 * k]) for k in range(3)}
    rl = {str(k): curve(samples, [0.1, 0.1 * k, 0.2 * k]) for k in (1, 2)}  # seed 0 crashed
    results = hand_results({})
    results["curves"] = {"fst": fst, "rl": rl}
    analysis = rp.analyse(results)
    assert analysis["paired_seeds"] == [1, 2]
    assert analysis["final_difference"]["mean"] == 0.0 and analysis["final_difference"]["n"] == 2  # seeds 1, 2
    assert analysis["final_difference"]["problem_level"]["n"] == 8
    assert [row["seed"] for row in analysis["sample_efficiency"]["per_seed"]] == [1, 2]
    assert analysis["curves"]["fst"]["seeds"] == 3  # the arm's own curve keeps every seed it has


def test_a_bad_task_b_is_a_one_line_error_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["reproduce", "--model", "tiny", "--out", str(out), "--set", "reproduce.task_b_env=fst/Nope-v0"]) == 2
    assert "fst/Nope-v0" in capsys.readouterr().err and not out.exists()


def test_shared_baseline_check_names_the_seeds_that_differ():
    same = curve([0, 8], [0.5, 0.5])
    other = curve([0, 8], [0.5, 0.5])
    other["per_problem"][0] = [1.0, 0.0, 1.0, 0.0]
    check = rp.shared_baseline({"fst": {"0": same, "1": same}, "rl": {"0": same, "1": other}})
    assert check == {"seeds_checked": 2, "seeds_identical": 1, "differing": [1]}
    assert "**Check failed**" in _baseline_check({"shared_baseline": check})


def test_report_says_what_the_fast_channel_did():
    flat = [curve([0, 8, 16], [0.25, 0.25, 0.25]) for _ in range(3)]
    fst = [dict(c, counters={"fast_rounds": 2, "fast_rollouts": 40, "fast_proposals": 2, "fast_accepted": a})
           for c, a in zip(flat, (0, 1, 0), strict=True)]
    results = hand_results({"fst": fst, "rl": flat, "prompt": flat})
    report = rp.render_report(results, rp.analyse(results))
    # Summed over seeds; an arm whose counters predate the proposal counts says so instead of printing 0.
    assert "fst: 6 fast rounds, 6 proposals, 1 accepted, 120 fast-round rollouts over 3 seeds" in report
    assert "prompt: 0 fast rounds, proposals and acceptances not recorded by this version" in report


def test_differences_take_seeds_as_the_independent_units():
    # Three seeds whose runs differ by luck: within each seed the difference is consistent over 64 problems, so
    # pairs of (seed, problem) look decisive, but across seeds the sign is not settled.
    fst = [[1.0] * 5 + [0.0] * 59, [1.0] * 17 + [0.0] * 47, [1.0] * 7 + [0.0] * 57]
    rl = [[1.0] * 13 + [0.0] * 51, [1.0] * 19 + [0.0] * 45, [1.0] * 17 + [0.0] * 47]
    diff = rp.across_seeds(fst, rl)
    assert diff["n"] == diff["seeds"] == 3
    assert diff["per_seed"] == pytest.approx([-8 / 64, -2 / 64, -10 / 64])
    assert diff["mean"] == pytest.approx(-20 / 192)
    # t interval over the 3 seed means (t_0.975,2 = 4.303): includes 0.
    half = 4.303 * np.std(diff["per_seed"], ddof=1) / np.sqrt(3)
    assert diff["ci_low"] == pytest.approx(diff["mean"] - half, abs=1e-3)
    assert diff["ci_high"] == pytest.approx(diff["mean"] + half, abs=1e-3)
    assert diff["sign"] == "includes 0"
    assert diff["problem_level"]["n"] == 192 and diff["problem_level"]["sign"] == "negative"
    assert rp.across_seeds(fst[:1], rl[:1])["sign"] == "unknown"  # one seed: no interval over seeds


def test_sample_efficiency_is_not_judged_when_fst_accepted_no_context():
    samples = [0, 8, 16]
    rl = [curve(samples, [0.1, 0.3, 0.4]) for _ in range(3)]
    fst = [dict(curve(samples, [0.1, 0.1, 0.2]), counters={"fast_proposals": 4, "fast_accepted": 0})
           for _ in range(3)]
    analysis = rp.analyse(hand_results({"fst": fst, "rl": rl, "prompt": rl}))
    assert analysis["sample_efficiency"]["verdict"] == "not resolvable"
    assert "0 of 12 proposals" in analysis["sample_efficiency"]["why"]
    fst[0]["counters"]["fast_accepted"] = 1  # one accepted context: the comparison stands
    assert rp.analyse(hand_results({"fst": fst, "rl": rl, "prompt": rl}))["sample_efficiency"]["verdict"] == "disagree"
