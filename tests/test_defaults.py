"""One source of defaults: FSTConfig (plus the named preset) gives the same agent through the CLI and a TOML file."""

import dataclasses

import pytest

from fst_env.agents.fst_agent import FSTConfig
from fst_env.cli import build_config, make_parser
from fst_env.config import DEFAULT_PRESET, PRESETS, RunConfig, load_config
from fst_env.schedule import ConfigError


def _cli(*argv):
    return build_config(make_parser().parse_args(["train", *argv]))


def test_cli_minimal_toml_and_fstconfig_with_the_preset_agree(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('mode = "fst"\n')
    expected = dataclasses.replace(FSTConfig(**PRESETS[DEFAULT_PRESET]["agent"]), seed=0)
    assert _cli().agent_config() == expected
    assert load_config(toml).validate().agent_config() == expected
    assert RunConfig().validate().agent_config() == expected
    assert _cli().build_schedule() == load_config(toml).validate().build_schedule()


def test_paper_preset_is_fstconfig_unchanged(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "paper"\n')
    assert load_config(toml).validate().agent_config() == FSTConfig()
    assert _cli("--preset", "paper").agent_config() == FSTConfig()


def test_flags_and_set_override_in_order(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("[agent]\ngroup_size = 6\ntemperature = 0.7\n")
    config = _cli("--config", str(toml), "--temperature", "0.5", "--lr", "1e-4", "--eval-k", "2",
                  "--set", "agent.tau=2", "--set", "agent.group_size=8", "--set", "schedule.kl_prompts=0",
                  "--set", "run.seed=3")
    agent = config.agent_config()
    assert (agent.temperature, agent.lr, agent.tau, agent.group_size, agent.seed) == (0.5, 1e-4, 2, 8, 3)
    schedule = config.build_schedule()
    assert (schedule.eval_k, schedule.kl_prompts) == (2, 0)


def test_greedy_evaluation_switch_through_set_and_toml(tmp_path):
    assert _cli().build_schedule().eval_greedy is False  # the cpu preset: sampled only (half the evaluation time)
    assert _cli("--preset", "paper").build_schedule().eval_greedy is True  # Schedule's own default
    assert _cli("--set", "schedule.eval_greedy=true").build_schedule().eval_greedy is True
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "paper"\n[schedule]\neval_greedy = false\n')
    assert load_config(toml).validate().build_schedule().eval_greedy is False
    with pytest.raises(ConfigError, match=r"schedule\.kl_prompts"):
        _cli("--set", "schedule.kl_prompts=true")  # other schedule fields still refuse a bool


@pytest.mark.parametrize(("setting", "needle"), [
    ("agent.tau", "expected SECTION.FIELD=VALUE"),
    ("tau=2", "expected SECTION.FIELD=VALUE"),
    ("model.x=1", "expected SECTION.FIELD=VALUE"),
    ("run.nope=1", "run.nope: unknown field"),
    ("agent.nope=1", "agent.nope: unknown field"),
    ("agent.temperature=-1", "temperature"),
])
def test_bad_set_is_one_config_error(setting, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as info:
        _cli("--set", setting)
    assert len(str(info.value).splitlines()) == 1


def test_unknown_preset_is_one_line(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "fast"\n')
    with pytest.raises(ConfigError, match="preset: must be one of cpu, paper"):
        load_config(toml).validate()


def test_example_run_toml_loads_and_names_every_section():
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parents[1] / "examples" / "run.toml").validate()
    schedule = config.build_schedule()
    assert [s.env_id for s in schedule.stages] == ["fst/MathReasoning-v0", "myorg/Spelling-v0"]
    assert config.agent_config().group_size == 4 and schedule.eval_every == 3


@pytest.mark.slow
def test_example_run_toml_trains_from_the_cli(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "fst_env.cli", "train", "--config", "examples/run.toml", "--model", "tiny",
         "--steps", "1", "--group-size", "2", "--groups-per-step", "1", "--max-new-tokens", "8",
         "--eval-problems", "2", "--run-dir", str(run_dir), "--quiet"],
        capture_output=True, text=True, timeout=600, cwd=repo)
    assert out.returncode == 0, out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["stages"]) == 2 and len(summary["accuracy_matrix"]) == 2
