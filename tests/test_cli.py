"""The fst command line, end to end on the tiny model."""

import json
import subprocess
import sys

import pytest

from fst_env.cli import main, make_parser

COMMANDS = ("envs", "train", "eval", "compare", "plot")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_example_driven_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"fst {command}" in text


def test_envs_lists_cards_and_markdown(capsys):
    assert main(["envs", "fst/MathReasoning-v0"]) == 0
    assert "reward range" in capsys.readouterr().out
    assert main(["envs", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| id |")


@pytest.mark.parametrize(
    ("argv", "field"),
    [(["train", "--model", "tiny", "--env", "fst/MathReasoning-v0:difficulty=extreme"], "stages[0].env_kwargs"),
     (["train", "--model", "tiny", "--env", "fst/Nope-v0"], "stages[0].env_id"),
     (["train", "--model", "tiny", "--group-size", "1"], "agent.group_size"),
     (["train", "--model", "tiny", "--steps", "0"], "stages[0].steps")],
)
def test_invalid_settings_give_one_clear_line(argv, field, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err


def test_config_file_errors_name_the_field(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('model = "tiny"\n[agent]\ngrup_size = 4\n')
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "agent.grup_size: unknown field; allowed:" in err and "group_size" in err
    config.write_text('mode = "both"\n')
    assert main(["train", "--config", str(config)]) == 2
    assert "mode: must be one of fst, rl, prompt" in capsys.readouterr().err


TINY = ["--model", "tiny", "--steps", "2", "--eval-problems", "2", "--max-new-tokens", "8", "--fast-every", "1",
        "--env", "fst/MathReasoning-v0:difficulty=easy"]


@pytest.mark.slow
def test_train_eval_plot_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "fst_env.cli", "train", *TINY, "--run-dir", str(run_dir), "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "TensorBoard: tensorboard --logdir" in out.stdout and "accuracy_vs_samples.png" in out.stdout
    for name in ("config.json", "summary.json", "scalars.csv", "accuracy_vs_samples.png", "accuracy_matrix.png",
                 "training_reward.png"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert json.loads((run_dir / "summary.json").read_text())["counters"]["fast_rounds"] == 2

    out = subprocess.run([sys.executable, "-m", "fst_env.cli", "eval", "--run-dir", str(run_dir), "--problems", "2",
                          "--context", "none"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "fst/MathReasoning-v0" in out.stdout and "context=none" in out.stdout

    (run_dir / "accuracy_matrix.png").unlink()
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "accuracy_matrix.png").exists()


@pytest.mark.slow
def test_compare_runs_three_modes_on_one_schedule(tmp_path):
    root = tmp_path / "cmp"
    assert main(["compare", *TINY[:-2], "--steps", "1", "--env", "fst/StarGraph-v0", "--run-dir", str(root),
                 "--quiet"]) == 0
    summary = (root / "summary.md").read_text()
    for mode in ("fst", "rl", "prompt"):
        assert f"| {mode} | fst/StarGraph-v0 |" in summary
        assert (root / f"accuracy_matrix_{mode}.png").exists()
    assert (root / "accuracy_vs_samples.png").exists()
    assert "ScaleRL-style fit" in summary and "| fst | n/a" in summary  # 1 step: too few points to fit
    rl = json.loads((root / "rl" / "summary.json").read_text())["counters"]
    prompt = json.loads((root / "prompt" / "summary.json").read_text())["counters"]
    assert rl["fast_rounds"] == 0 and prompt["slow_steps"] == 0


def test_parser_builds():
    assert make_parser().prog == "fst"


def test_compare_summary_fits_the_sigmoid_when_there_are_enough_points():
    from fst_env.cli import _sigmoid_cells

    def accuracy(c):
        return 0.1 + (0.7 - 0.1) / (1 + (400 / c) ** 1.5)

    evals = [{"rl_samples": c, "fast_rollouts": 0, "accuracy": {"t": accuracy(c)}} for c in (100, 200, 400, 800, 1600)]
    cells = _sigmoid_cells({"baseline": {"t": 0.1}, "evals": evals}).split(" | ")
    assert float(cells[0]) == pytest.approx(0.7, abs=0.02) and float(cells[1]) == pytest.approx(400, rel=0.1)
    assert _sigmoid_cells({"baseline": {"t": 0.1}, "evals": evals[:1]}).startswith("n/a")
