"""Checkpoints carry a manifest; resume uses the newest one that validates, says what it skipped, never restarts."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import fst_env
from fst_env.agents.fst_agent import FSTAgent, FSTConfig
from fst_env.checkpoints import CheckpointError, checkpoint_problem, find_checkpoint, save_checkpoint
from fst_env.cli import main
from fst_env.loop import Schedule, Stage, latest_checkpoint, train
from fst_env.models import tiny_policy

TASK = "test/CheckpointEven-v0"
fst_env.register_task(TASK, {"train": [{"prompt": f"Say item {i}."} for i in range(12)],
                             "validation": [{"prompt": f"Say thing {i}."} for i in range(4)]},
                      reward_fn=lambda response, problem: (float(len(response) % 2 == 0), "Even length wanted."),
                      summary="checkpoint test task")
STEPS = 3
ADAPTER = "agent/slow/adapter/adapter_model.safetensors"


def _agent() -> FSTAgent:
    config = FSTConfig(group_size=2, groups_per_step=2, fast_every=2, fast_learner="notes", max_new_tokens=6,
                       fast_problems=2, fast_budget=8, proposals_per_round=1, population_size=2)
    return FSTAgent(tiny_policy(0), TASK, config)


def _schedule() -> Schedule:
    return Schedule([Stage(TASK, STEPS)], eval_problems=2, kl_prompts=0, checkpoint_every=1)


def _train(run_dir: Path, *, resume: bool) -> list[int]:
    """Train (or resume) the reference schedule; returns the update steps this call ran."""
    seen: list[int] = []
    train(_agent(), _schedule(), run_dir=run_dir, resume=resume, quiet=True, tensorboard=False,
          on_update=lambda step, metrics: seen.append(step))
    return seen


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A finished 3-update run: checkpoints step-2 (mid-stage) and step-3 (stage end) are kept."""
    run_dir = tmp_path_factory.mktemp("reference")
    assert _train(run_dir, resume=False) == [1, 2, 3]
    return run_dir


@pytest.fixture
def run(reference, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(reference, copy)
    return copy


def _step(run_dir: Path, n: int) -> Path:
    return run_dir / "checkpoints" / f"step-{n:08d}"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_every_file_is_in_the_manifest_with_its_size_and_sha256(reference):
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["latest", "step-00000002",
                                                                            "step-00000003"]
    for n in (2, 3):
        directory = _step(reference, n)
        manifest = json.loads((directory / "manifest.json").read_text())
        on_disk = {p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() and p.name != "manifest.json"}
        assert set(manifest["files"]) == on_disk and ADAPTER in on_disk and "agent/slow/optimizer.pt" in on_disk
        for name, entry in manifest["files"].items():
            data = (directory / name).read_bytes()
            assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
        assert checkpoint_problem(directory) is None


def test_intact_run_resumes_from_the_newest_checkpoint(run, capsys):
    assert _train(run, resume=True) == []  # step-3 is the end of the schedule: nothing left to run
    assert "checkpoint" not in capsys.readouterr().err


@pytest.mark.parametrize(("damage", "named"), [
    (lambda d: _truncate(d / ADAPTER), "adapter_model.safetensors is"),
    (lambda d: _truncate(d / "agent" / "slow" / "optimizer.pt"), "optimizer.pt is"),
    (lambda d: _truncate(d / "agent" / "agent.json"), "agent/agent.json is"),
    (lambda d: (d / "run.json").write_text(""), "run.json is 0 bytes"),
    (lambda d: (d / "run.json").unlink(), "run.json is missing"),
    (lambda d: (d / "run.json").write_text("{garbage"), "run.json is"),
    (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda d: (d / "manifest.json").write_text("[1, 2"), "manifest.json cannot be read"),
])
def test_a_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(run, reference, damage, named, capsys):
    damage(_step(run, 3))
    capsys.readouterr()
    assert _train(run, resume=True) == [3], "resumed from step-2, so update 3 runs again"
    err = [line for line in capsys.readouterr().err.splitlines() if "checkpoint" in line]
    assert len(err) == 1 and "step-00000003" in err[0] and named in err[0] and "using" in err[0], err
    # The redone update reproduces the original step 3 exactly, and the rewritten checkpoint validates.
    assert (_step(run, 3) / ADAPTER).read_bytes() == (_step(reference, 3) / ADAPTER).read_bytes()
    assert checkpoint_problem(_step(run, 3)) is None


def test_same_size_bit_flip_is_caught_by_the_digest(run):
    path = _step(run, 3) / ADAPTER
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "sha256" in checkpoint_problem(_step(run, 3))
    assert find_checkpoint(run, report=None) == _step(run, 2)


@pytest.mark.parametrize(("pointer", "named"), [
    ("step-99999999", "names step-99999999, which does not exist"),
    ("../../../etc", "not a step-N directory name"),
    ("", "is empty"),
    (None, "is missing"),
    (b"\xff\xfe\x00garbage", "not a step-N directory name"),
])
def test_a_bad_latest_pointer_is_reported_and_the_step_dirs_used(run, pointer, named, capsys):
    latest = run / "checkpoints" / "latest"
    if pointer is None:
        latest.unlink()
    elif isinstance(pointer, bytes):
        latest.write_bytes(pointer)
    else:
        latest.write_text(pointer)
    capsys.readouterr()
    assert _train(run, resume=True) == [], "resumed from step-3, the newest valid checkpoint"
    err = [line for line in capsys.readouterr().err.splitlines() if "checkpoint" in line]
    assert len(err) == 1 and named in err[0] and "step-00000003" in err[0], err


def test_nothing_valid_is_one_line_error_never_a_restart(run):
    _truncate(_step(run, 3) / ADAPTER)
    (_step(run, 2) / "run.json").write_text("")
    with pytest.raises(CheckpointError) as info:
        _train(run, resume=True)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "step-00000003: agent/slow/adapter" in message and "step-00000002: run.json" in message
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000003"]


def test_a_pointer_without_step_dirs_is_an_error_not_a_fresh_start(run):
    shutil.rmtree(_step(run, 2))
    shutil.rmtree(_step(run, 3))
    with pytest.raises(CheckpointError, match="names step-00000003, which does not exist"):
        latest_checkpoint(run)


def test_cli_resume_with_nothing_valid_exits_non_zero_with_one_line(run, capsys):
    for n in (2, 3):
        _truncate(_step(run, n) / "agent" / "agent.json")
    argv = ["train", "--model", "tiny", "--env", TASK, "--steps", str(STEPS), "--run-dir", str(run), "--resume",
            "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fst train: error: no checkpoint in") and "agent/agent.json is" in err


def test_cli_resume_with_garbage_saved_config_is_one_line(run, capsys):
    (run / "config.json").write_text("{not json")
    assert main(["train", "--model", "tiny", "--env", TASK, "--run-dir", str(run), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json: not a readable run config" in err


def _writer(step: int):
    def write(tmp: Path) -> None:
        (tmp / "agent").mkdir()
        (tmp / "agent" / "agent.json").write_text("{}")
        (tmp / "agent" / "torch_rng.pt").write_bytes(b"rng")
        position = {"stage": 0, "stage_step": step, "step": step, "evals": [], "stage_ends": [], "baseline": {}}
        (tmp / "run.json").write_text(json.dumps(position))
    return write


def test_old_checkpoints_are_pruned_only_after_the_new_one_validates(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(root, step, _writer(step), keep=2)
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000002", "step-00000003"]
    assert (root / "latest").read_text() == "step-00000003"

    def disk_full(tmp: Path) -> None:
        _writer(4)(tmp)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        save_checkpoint(root, 4, disk_full, keep=2)
    with pytest.raises(CheckpointError, match=r"run\.json says step 3 but the directory is step 4"):
        save_checkpoint(root, 4, _writer(3), keep=2)  # written, but does not validate
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000002", "step-00000003", "step-00000004"]
    assert (root / "latest").read_text() == "step-00000003", "latest still names the last good checkpoint"
    assert find_checkpoint(tmp_path, report=None) == root / "step-00000003"
    assert not list(root.glob(".step-*")), "no temp dirs left behind"


def test_a_new_run_removes_stale_higher_steps_after_its_first_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (5, 6):
        save_checkpoint(root, step, _writer(step))
    save_checkpoint(root, 1, _writer(1))  # a run started again in the same directory
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000001"]
    assert find_checkpoint(tmp_path, report=None) == root / "step-00000001"


def test_an_empty_run_dir_has_no_checkpoint(tmp_path):
    assert find_checkpoint(tmp_path) is None
