"""The training loop: schedules, evaluation matrix, TensorBoard/CSV logs, checkpoints, kill-and-resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import fst_env
from fst_env.agents.fst_agent import FSTAgent, FSTConfig
from fst_env.loop import ConfigError, Schedule, Stage, latest_checkpoint, train
from fst_env.models import tiny_policy

EVEN = "test/LoopEven-v0"
ODD = "test/LoopOdd-v0"


def _parity(want: int):
    def reward(response: str, problem: dict) -> tuple[float, str]:
        ok = len(response) % 2 == want
        return (1.0, "Correct.") if ok else (0.0, f"Format error: the length must be {'even' if want == 0 else 'odd'}.")
    return reward


for env_id, want in ((EVEN, 0), (ODD, 1)):
    fst_env.register_task(env_id, {"train": [{"prompt": f"Say item {i}."} for i in range(12)],
                                   "validation": [{"prompt": f"Say thing {i}."} for i in range(6)]},
                          reward_fn=_parity(want), summary="test task")


def agent(**overrides) -> FSTAgent:
    config = dict(group_size=4, groups_per_step=2, fast_every=2, fast_learner="notes", max_new_tokens=10,
                  fast_problems=3, fast_budget=24, proposals_per_round=1, population_size=2)
    return FSTAgent(tiny_policy(0), EVEN, FSTConfig(**{**config, **overrides}))


def test_schedule_validation_names_the_field():
    with pytest.raises(ConfigError, match=r"stages\[0\].env_id"):
        Schedule([Stage("fst/Nope-v0", 2)]).validate()
    with pytest.raises(ConfigError, match=r"stages\[0\].steps"):
        Schedule([Stage(EVEN, 0)]).validate()
    with pytest.raises(ConfigError, match=r"stages\[0\].env_kwargs"):
        Schedule([Stage("fst/MathReasoning-v0", 1, {"difficulty": "extreme"})]).validate()
    with pytest.raises(ConfigError, match="eval_split"):
        Schedule([Stage(EVEN, 1)], eval_split="dev").validate()


def test_two_stage_run_writes_matrix_logs_and_checkpoints(tmp_path):
    schedule = Schedule([Stage(EVEN, 2), Stage(ODD, 2, reset_population=True)], eval_every=1, eval_problems=3,
                        kl_prompts=2, checkpoint_every=1)
    summary = train(agent(), schedule, run_dir=tmp_path, quiet=True)
    assert summary["steps"] == 4 and summary["tasks"] == [EVEN, ODD]
    assert len(summary["accuracy_matrix"]) == 2 and set(summary["accuracy_matrix"][0]) == {EVEN, ODD}
    assert set(summary["continual"]) >= {"forgetting", "backward_transfer", "forward_transfer"}
    assert len(summary["evals"]) == 4 + 2 and all("kl" in e for e in summary["evals"])
    # TensorBoard events are real: read them back with tensorboard's reader.
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("slow/loss", "rollout/reward_mean", f"eval/accuracy/{EVEN}", "eval/kl", "budget/rl_samples",
                "population/size", "fast/n_proposals"):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("slow/loss")] == [1, 2, 3, 4]
    assert "fast/best_context/text_summary" in events.Tags()["tensors"]
    csv_header = (tmp_path / "scalars.csv").read_text().splitlines()[0].split(",")
    assert "slow/loss" in csv_header and csv_header[0] == "step"
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    assert len(list((tmp_path / "checkpoints").glob("step-*"))) == 2, "old checkpoints pruned"


def test_population_reset_at_stage_start(tmp_path):
    a = agent(fast_every=1)
    seen = []
    schedule = Schedule([Stage(EVEN, 2), Stage(ODD, 1, reset_population=True)], eval_problems=2, kl_prompts=0)
    train(a, schedule, quiet=True, on_update=lambda step, m: seen.append((step, len(a.population))))
    assert a.population.round >= 1
    assert seen[-1][0] == 3


def test_single_env_shortcut_and_missing_steps():
    a = agent(fast=False)
    summary = train(a, EVEN, steps=2, quiet=True, tensorboard=False)
    assert summary["steps"] == 2 and a.counters["slow_steps"] == 2
    with pytest.raises(ConfigError, match="steps"):
        train(a, EVEN)


def test_too_few_problems_is_a_clear_error():
    fst_env.register_task("test/LoopTiny-v0", [{"prompt": "only one"}], reward_fn=_parity(0))
    a = FSTAgent(tiny_policy(0), "test/LoopTiny-v0", FSTConfig(group_size=2, groups_per_step=2, fast=False,
                                                              max_new_tokens=4))
    with pytest.raises(ConfigError, match="distinct problems"):
        train(a, Schedule([Stage("test/LoopTiny-v0", 1)], eval_split="train", eval_problems=1, kl_prompts=0),
              quiet=True)


CLI = [sys.executable, "-m", "fst_env.cli", "train", "--model", "tiny", "--env", "fst/MathReasoning-v0:difficulty=easy",
       "--steps", "6", "--checkpoint-every", "1", "--eval-problems", "2", "--max-new-tokens", "12", "--quiet"]


def _reached(run_dir: Path, name: str) -> bool:
    latest = latest_checkpoint(run_dir)
    return latest is not None and latest.name >= name


def _scalars_by_step(run_dir: Path) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for line in (run_dir / "scalars.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(row)
    return rows


def _final_adapter(run_dir: Path) -> dict:
    return load_file(str(latest_checkpoint(run_dir) / "agent" / "slow" / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run([*CLI, "--run-dir", str(straight)], check=True, env=env, timeout=600, capture_output=True)

    process = subprocess.Popen([*CLI, "--run-dir", str(killed)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not _reached(killed, "step-00000002"):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    stopped_at = json.loads((latest_checkpoint(killed) / "run.json").read_text())["step"]
    assert stopped_at < 6, "the run was killed before it finished"

    subprocess.run([*CLI, "--run-dir", str(killed), "--resume"], check=True, env=env, timeout=600,
                   capture_output=True)
    a, b = _final_adapter(straight), _final_adapter(killed)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    final, reference = _scalars_by_step(killed), _scalars_by_step(straight)
    assert final[6]["slow/loss"] == reference[6]["slow/loss"]
    assert json.loads((killed / "summary.json").read_text())["accuracy_matrix"] == \
        json.loads((straight / "summary.json").read_text())["accuracy_matrix"]


# ----------------------------------------------------------------------------- a broken reward function stops the run
def _register_broken(env_id: str, fail_every: int) -> None:
    calls = []

    def reward(response: str, problem: dict) -> float:
        calls.append(1)
        if len(calls) % fail_every == 0:
            raise ZeroDivisionError("the grader divided by zero\non a second line")
        return float(len(response) % 2 == 0)

    fst_env.register_task(env_id, {"train": [{"prompt": f"Say item {i}."} for i in range(12)],
                                   "validation": [{"prompt": f"Say thing {i}."} for i in range(6)]},
                          reward_fn=reward, summary="test task")


def test_training_stops_on_a_reward_function_that_always_raises(tmp_path):
    from fst_env.loop import BrokenTaskError

    _register_broken("test/LoopBroken-v0", fail_every=1)
    with pytest.raises(BrokenTaskError) as caught:
        train(agent(fast_every=100), "test/LoopBroken-v0", steps=50, run_dir=tmp_path, quiet=True)
    message = str(caught.value)
    # Nearly all 32 are errors; a rollout the env rejects before scoring (e.g. an empty completion) is not.
    failed = re.search(r"(\d+) of the last 32 rollouts", message)
    assert "\n" not in message and "test/LoopBroken-v0" in message and failed and int(failed[1]) > 16
    assert "ZeroDivisionError: the grader divided by zero on a second line" in message


def test_occasional_errors_are_logged_not_fatal(tmp_path):
    _register_broken("test/LoopFlaky-v0", fail_every=4)  # 25% errors: below the stop threshold
    seen = []
    summary = train(agent(fast_every=100), "test/LoopFlaky-v0", steps=3, run_dir=tmp_path, quiet=True,
                    on_update=lambda step, metrics: seen.append(metrics))
    assert summary["steps"] == 3
    rates = [m["rollout/error_rate"] for m in seen]
    assert all(0.0 < r < 0.5 for r in rates) and all(m["rollout/timeout_rate"] == 0.0 for m in seen)
    assert "rollout/error_rate" in (tmp_path / "scalars.csv").read_text().splitlines()[0]


def test_cli_prints_a_broken_task_as_one_line_and_exits_1(monkeypatch, capsys):
    from fst_env import cli
    from fst_env.loop import BrokenTaskError

    def broken(args, *rest):
        raise BrokenTaskError("training stopped: test/X-v0: 32 of the last 32 rollouts could not be scored")

    monkeypatch.setattr(cli, "cmd_train", broken)
    assert cli.main(["train"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test/X-v0" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- multi-turn games train on episodes
@pytest.mark.parametrize("env_id", ["fst/Bargain-v0", "fst/WordGuess-v0"])
def test_multi_turn_games_train_on_whole_episodes(env_id):
    # The tiny model's byte-level prompts are long: give it room for three turns of a game's growing conversation.
    config = FSTConfig(group_size=2, groups_per_step=2, fast_every=2, fast_learner="notes", max_new_tokens=6,
                       fast_problems=2, fast_budget=8, proposals_per_round=1, population_size=2,
                       max_context_tokens=6000, backend="hf")
    a = FSTAgent(tiny_policy(0, max_positions=8192), env_id, config)
    seen = []
    summary = train(a, Schedule([Stage(env_id, 2)], eval_problems=1, kl_prompts=1), quiet=True, tensorboard=False,
                    on_update=lambda step, m: seen.append(m))
    assert summary["steps"] == 2 and a.counters["fast_rounds"] == 1
    assert a.counters["rl_turns"] > a.counters["rl_samples"] == 2 * 2 * 2  # episodes went past their first move
    assert all(m["rollout/turns_mean"] > 1 and m["slow/n_turns"] > m["slow/n_episodes"] for m in seen)
    # The tiny model earns no reward in these games, so give each group a winner and take a slow step on whole
    # real episodes: every turn is trained, each under the exact chat-template conversation its sampler saw.
    episodes = a.collect([0, 1])
    for group in {e.group for e in episodes}:
        members = [e for e in episodes if e.group == group]
        for e in members:
            e.turns[-1].reward = float(e is members[0])
    metrics = a.slow_step(episodes)
    assert metrics["slow/skipped"] == 0.0 and metrics["slow/n_pieces"] == sum(len(e.turns) for e in episodes)
    # No earlier step trained (no reward), so the learner still equals the sampler: the ratio is 1 on every turn.
    assert metrics["slow/ratio_min"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["slow/ratio_max"] == pytest.approx(1.0, abs=1e-4)


def test_greedy_evaluation_can_be_switched_off(tmp_path):
    """schedule.eval_greedy = false: one sampled pass per evaluation, no greedy keys, and the report still reads."""
    from fst_env.cli import final_report

    a = agent(fast=False)
    calls = []
    evaluate = a.evaluate
    a.evaluate = lambda *args, **kwargs: calls.append(kwargs.get("greedy", False)) or evaluate(*args, **kwargs)
    summary = train(a, Schedule([Stage(EVEN, 1)], eval_problems=2, kl_prompts=0, eval_greedy=False), quiet=True,
                    run_dir=tmp_path / "run", tensorboard=False)
    assert calls == [False, False]  # baseline and final, sampled only
    for row in (summary["baseline_row"], *summary["evals"]):
        assert "accuracy" in row and not any(key.endswith("_greedy") for key in row)
    report = final_report(summary, tmp_path / "run", "rl")
    assert "[sampled mean@1" in report and "[greedy" not in report
    with pytest.raises(ConfigError, match="eval_greedy"):
        Schedule([Stage(EVEN, 1)], eval_greedy="no").validate()
