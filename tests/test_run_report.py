"""What a run shows a person: the baseline and every evaluation in TensorBoard, intervals in the summary, readable
plots, and a final report with before/after intervals, wall time and where everything is."""

from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import fst_env
from fst_env.agents.fst_agent import FSTAgent, FSTConfig
from fst_env.cli import final_report
from fst_env.loop import Schedule, Stage, train
from fst_env.models import tiny_policy
from fst_env.plots import plot_run

TASK = "test/ReportEven-v0"
fst_env.register_task(TASK, {"train": [{"prompt": f"Say item {i}."} for i in range(8)],
                             "validation": [{"prompt": f"Say thing {i}."} for i in range(6)]},
                      reward_fn=lambda response, problem: float(len(response) % 2 == 0), summary="test task")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("report") / "run"
    agent = FSTAgent(tiny_policy(0), TASK, FSTConfig(group_size=2, groups_per_step=1, fast_every=2,
                                                     fast_learner="notes", max_new_tokens=6, fast_problems=2,
                                                     fast_budget=8, proposals_per_round=1, population_size=2))
    summary = train(agent, Schedule([Stage(TASK, 2)], eval_every=1, eval_problems=6, kl_prompts=2),
                    run_dir=run_dir, quiet=True)
    return run_dir, summary


def test_baseline_and_every_evaluation_reach_tensorboard(run):
    run_dir, _ = run
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars(f"eval/accuracy/{TASK}")]
    assert steps[0] == 0 and {1, 2} <= set(steps)
    for tag in (f"eval/accuracy_ci_low/{TASK}", f"eval/accuracy_ci_high/{TASK}", f"eval/accuracy_greedy/{TASK}"):
        assert next(e.step for e in events.Scalars(tag)) == 0, tag


def test_summary_rows_carry_intervals_and_per_problem_results(run):
    _, summary = run
    for row in [summary["baseline_row"], *summary["evals"]]:
        low, high = row["ci"][TASK]
        assert 0.0 <= low <= row["accuracy"][TASK] <= high <= 1.0
        assert row["n"][TASK] == 6 and len(row["per_problem"][TASK]) == 6
    assert summary["baseline"] == summary["baseline_row"]["accuracy"] and summary["wall_time_s"] > 0


def test_plots_are_readable_sizes(run):
    run_dir, _ = run
    for path in plot_run(run_dir):
        width, height = Image.open(path).size
        assert width >= 900 and height >= 400, (path.name, width, height)


def test_final_report_has_intervals_paired_change_wall_time_and_paths(run):
    run_dir, summary = run
    report = final_report(summary, run_dir, "fst")
    assert "of wall time" in report and "95% intervals" in report and "n=6" in report
    assert "change " in report and ("excludes 0" in report or "includes 0" in report)
    assert f"checkpoint: {run_dir / 'checkpoints'}" in report and "accuracy_vs_samples.png" in report
    assert "[instructions]" in report and "{" not in report.split("best context:")[1].split("run directory")[0]
