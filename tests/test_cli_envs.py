"""`fst train --env module:ID` trains an env registered in the user's own file; env-id mistakes get one line."""

import subprocess
import sys
from pathlib import Path

import pytest

from fst_env.cli import _parse_env, main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("spec", "expected"), [
    ("fst/MathReasoning-v0", ("fst/MathReasoning-v0", {})),
    ("fst/MathReasoning-v0:difficulty=easy", ("fst/MathReasoning-v0", {"difficulty": "easy"})),
    ("examples.spelling_task:myorg/Spelling-v0", ("examples.spelling_task:myorg/Spelling-v0", {})),
    ("my_mod:myorg/Task-v0:n=3,name=x", ("my_mod:myorg/Task-v0", {"n": 3, "name": "x"})),
    ("mymod:CartPole-v1", ("mymod:CartPole-v1", {})),
    ("CartPole-v1:max_episode_steps=5", ("CartPole-v1", {"max_episode_steps": 5})),
])
def test_env_specs_parse_module_id_and_kwargs(spec, expected):
    assert _parse_env(spec) == expected


@pytest.mark.parametrize(("env", "needle"), [
    ("fst/MathReasonng-v0", "Did you mean 'fst/MathReasoning-v0'"),
    ("no_such_module_xyz:myorg/Task-v0", "cannot import module 'no_such_module_xyz'"),
    ("examples.spelling_task:myorg/Speling-v0", "Did you mean 'myorg/Spelling-v0'"),
])
def test_env_mistakes_are_one_line_with_a_suggestion(env, needle, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["train", "--model", "tiny", "--env", env, "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_custom_env_from_a_users_file_trains_from_the_cli(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "fst_env.cli", "train", "--model", "tiny", "--env",
         "examples.spelling_task:myorg/Spelling-v0", "--steps", "2", "--group-size", "2", "--groups-per-step", "1",
         "--fast-every", "1", "--max-new-tokens", "8", "--eval-problems", "2", "--run-dir", str(run_dir), "--quiet"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert (run_dir / "summary.json").exists()
    summary = (run_dir / "summary.json").read_text()
    assert "myorg/Spelling-v0" in summary  # held-out evaluation ran on the example's validation split


def test_missing_run_dir_and_nothing_to_resume_are_one_line(tmp_path, capsys):
    missing = tmp_path / "does-not-exist"
    assert main(["eval", "--run-dir", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--run-dir: {missing} does not exist" in err and len(err.splitlines()) == 1
    assert main(["train", "--model", "tiny", "--resume", "--run-dir", str(missing), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no checkpoint to resume from" in err and len(err.splitlines()) == 1
    assert not missing.exists()  # a failed resume creates nothing


def test_resume_refuses_flags_that_differ_from_the_saved_run(tmp_path, capsys):
    """--resume continues config.json; a flag that would change it (here --steps) is one error line, not ignored."""
    run_dir = tmp_path / "run"
    args = ["train", "--model", "tiny", "--steps", "1", "--group-size", "2", "--max-new-tokens", "4",
            "--eval-problems", "2", "--mode", "rl", "--run-dir", str(run_dir), "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args[:3], "--steps", "3", *args[5:], "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resume continues the run exactly as saved" in err and "stages=" in err and len(err.splitlines()) == 1
    assert main([*args, "--resume"]) == 0  # the same flags as the saved run resume as before
