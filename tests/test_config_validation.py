"""Every run-config field is checked up front: one line naming the field, the value and what is allowed."""

import math

import pytest

from fst_env.agents.fst_agent import FSTConfig
from fst_env.agents.slow import LoraSettings
from fst_env.cli import main
from fst_env.config import RunConfig
from fst_env.schedule import ConfigError

# (field, value for FSTConfig, the same value in TOML, a phrase the message must hold)
BAD_AGENT = [
    ("temperature", 0, "0", "> 0"),
    ("temperature", "1.0", '"1.0"', "finite number > 0"),
    ("temperature", math.nan, "nan", "finite number > 0"),
    ("temperature", math.inf, "inf", "finite number > 0"),
    ("top_p", 0, "0", "in (0, 1]"),
    ("top_p", 1.5, "1.5", "in (0, 1]"),
    ("lr", -1e-5, "-1e-5", "> 0, or unset"),
    ("lr", 0.0, "0.0", "> 0, or unset"),
    ("lr", "1e-5", '"1e-5"', "> 0, or unset"),
    ("tau", 0.5, "0.5", ">= 1"),
    ("tau", math.inf, "inf", ">= 1"),
    ("kl_coef", -0.1, "-0.1", ">= 0"),
    ("kl_coef", math.nan, "nan", ">= 0"),
    ("micro_batch_size", 0, "0", "int >= 1"),
    ("micro_batch_size", True, "true", "int >= 1"),
    ("micro_batch_size", 2.5, "2.5", "int >= 1"),
    ("lora_alpha", 0, "0", "> 0"),
    ("lora_alpha", "32", '"32"', "> 0"),
    ("group_size", True, "true", "int >= 1"),
    ("loss", "ppo", '"ppo"', "one of cispo, grpo_clip, reinforce"),
    ("loss", 1, "1", "one of cispo, grpo_clip, reinforce"),
    ("backend", "torch", '"torch"', "one of fast, hf, openai, vllm"),
    ("backend_kwargs", [1], "[1]", "a table with string keys"),
    ("backend_kwargs", {"nope": 1}, "{ nope = 1 }", "'nope' not accepted by backend 'fast'; allowed: batch_size"),
    ("full_finetune", "no", '"no"', "true or false"),
    ("learner_autocast", "on", '"on"', "true or false"),
    ("slow", 1, "1", "true or false"),
    ("fast", "yes", '"yes"', "true or false"),
]


@pytest.mark.parametrize(("field", "value", "toml", "phrase"), BAD_AGENT)
def test_fstconfig_names_the_field_value_and_what_is_allowed(field, value, toml, phrase):
    with pytest.raises(ValueError) as info:
        FSTConfig(**{field: value}).validate()
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert f"FSTConfig.{field}" in message and phrase in message, message
    if field != "backend_kwargs":
        assert repr(value) in message, message


@pytest.mark.parametrize(("field", "value", "toml", "phrase"), BAD_AGENT)
def test_config_file_with_a_bad_agent_field_is_one_line_exit_2(tmp_path, capsys, field, value, toml, phrase):
    config = tmp_path / "run.toml"
    config.write_text(f'model = "tiny"\n[agent]\n{field} = {toml}\n')
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"fst train: error: agent.{field}") and phrase in err, err
    assert not (tmp_path / "run").exists(), "nothing ran"


def test_agent_channels_contradicting_the_mode_are_an_error(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('model = "tiny"\nmode = "fst"\n[agent]\nslow = false\n')
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "agent.slow: set by mode ('fst' means slow = true), got False" in err
    RunConfig(model="tiny", mode="rl", agent={"slow": True, "fast": False}).validate()  # agreeing is fine


def test_backend_kwargs_are_checked_against_the_chosen_backend():
    with pytest.raises(ValueError, match="backend 'openai' needs base_url, model"):
        FSTConfig(backend="openai").validate()
    with pytest.raises(ValueError, match="'batch' not accepted by backend 'hf'; allowed: batch_size"):
        FSTConfig(backend="hf", backend_kwargs={"batch": 4}).validate()
    FSTConfig(backend="openai", backend_kwargs={"base_url": "http://127.0.0.1:1/v1", "model": "m"}).validate()
    FSTConfig(backend="vllm", backend_kwargs={"gpu_memory_utilization": 0.5}).validate()  # engine args pass through


def test_good_values_pass():
    FSTConfig(temperature=0.7, top_p=0.9, lr=1e-5, tau=1, kl_coef=0, micro_batch_size=1, lora_alpha=16.0,
              loss="grpo_clip", backend="hf", backend_kwargs={"batch_size": 4}).validate()
    FSTConfig(lr=None, top_p=1, full_finetune=True, lora_alpha=8).validate()


@pytest.mark.parametrize(("settings", "phrase"), [
    ({"alpha": "32"}, "LoraSettings.alpha must be a finite number > 0, got '32'"),
    ({"alpha": True}, "LoraSettings.alpha must be a finite number > 0, got True"),
    ({"alpha": math.inf}, "LoraSettings.alpha must be a finite number > 0, got inf"),
    ({"rank": 2.0}, "LoraSettings.rank must be an int >= 1, got 2.0"),
    ({"dropout": "0"}, "LoraSettings.dropout must be a number in [0, 1), got '0'"),
    ({"dropout": 1.0}, "LoraSettings.dropout must be a number in [0, 1), got 1.0"),
    ({"target_modules": 5}, "LoraSettings.target_modules must be 'all-linear' or module names, got 5"),
    ({"target_modules": ("q_proj", "")}, "LoraSettings.target_modules must be 'all-linear' or module names"),
])
def test_lora_settings(settings, phrase):
    with pytest.raises(ValueError) as info:
        LoraSettings(**settings).validate()
    assert str(info.value).startswith(phrase) and len(str(info.value).splitlines()) == 1
    LoraSettings(rank=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"]).validate()


BAD_TOP = [
    ('model = "/nonexistent/model-dir"', "model: '/nonexistent/model-dir' does not exist"),
    ('model = "./missing.gguf"', "model: './missing.gguf' does not exist"),
    ('model = "http://127.0.0.1:8000/v1"', "is a URL"),
    ('model = "two words"', "neither an existing path nor a Hugging Face id"),
    ("model = 5", "model: must be 'embedded', 'tiny'"),
    ('model = "tiny"\nseed = true', "seed: must be an int, got True"),
    ('model = "tiny"\nreflection_model = "/nonexistent/reflector"', "reflection_model: '/nonexistent/reflector'"),
    ('model = "tiny"\nreflection_api_model = ""', "reflection_api_model: must be the model name"),
    ('model = "tiny"\nagent = 3', "agent: must be a table of settings, got 3"),
    ('model = "tiny"\n[schedule]\neval_every = true', "schedule.eval_every: must be an int, got True"),
    ('model = "tiny"\n[[stages]]\nenv_id = "fst/MathReasoning-v0"\nsteps = 1\nenv_kwargs = 4',
     "stages[0].env_kwargs: must be a table with string keys, got 4"),
    ('model = "tiny"\n[[stages]]\nenv_id = "fst/MathReasoning-v0"\nsteps = 1\nreset_population = "yes"',
     "stages[0].reset_population: must be true or false, got 'yes'"),
]


@pytest.mark.parametrize(("toml", "phrase"), BAD_TOP)
def test_config_file_with_a_bad_run_field_is_one_line_exit_2(tmp_path, capsys, toml, phrase):
    config = tmp_path / "run.toml"
    config.write_text(toml + "\n")
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and phrase in err, err


def test_model_forms_load_policy_accepts(tmp_path):
    for name in ("embedded", "tiny", "gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        RunConfig(model=name).validate()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with pytest.raises(ConfigError, match=r"directory without config\.json"):
        RunConfig(model=str(model_dir)).validate()
    (model_dir / "config.json").write_text("{}")
    RunConfig(model=str(model_dir)).validate()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    RunConfig(model=str(gguf)).validate()
    with pytest.raises(ConfigError, match=r"is a file but not a \.gguf"):
        RunConfig(model=str(model_dir / "config.json")).validate()


def test_model_flag_is_checked_too(tmp_path, capsys):
    assert main(["train", "--model", "/nonexistent/model-dir", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model: '/nonexistent/model-dir' does not exist" in err
