"""Run configuration: model, mode, agent settings and schedule, from a TOML/YAML file and/or flags.

A config file looks like::

    model = "embedded"          # "embedded", "tiny" (random test model), a local dir or a Hugging Face id
    mode = "fst"                # fst | rl | prompt
    seed = 0

    [agent]                     # any FSTConfig field
    group_size = 4
    fast_every = 3

    [schedule]
    eval_every = 5
    eval_problems = 16
    checkpoint_every = 5

    [[stages]]
    env_id = "fst/MathReasoning-v0"
    steps = 10
    env_kwargs = { difficulty = "easy" }
    reset_population = false

Unknown or invalid fields raise :class:`ConfigError` with one line naming the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fst_env.schedule import ConfigError, Schedule, Stage

MODES = ("fst", "rl", "prompt")
DEFAULT_ENV = "fst/MathReasoning-v0"
# Easy two- and three-term chain sums: the family the embedded 135M model solves sometimes (~8% sampled at T=0.7,
# ~16% greedy), so groups have reward variance; other families and envs start at or near 0 (README).
DEFAULT_ENV_KWARGS = {"difficulty": "easy", "families": "chain_sum"}
DEFAULT_ENV_SPEC = DEFAULT_ENV + ":" + ",".join(f"{k}={v}" for k, v in DEFAULT_ENV_KWARGS.items())  # as --env says it
DEFAULT_STEPS = 30

#: Named presets: the few agent and schedule values a setting changes on top of FSTConfig's and Schedule's own
#: defaults (they own every default; a preset only names differences). A run config's own ``agent`` / ``schedule``
#: tables, then command-line flags, override the preset. ``cpu``: sized so the README's main job takes minutes on a
#: 2-core CPU. ``paper``: FSTConfig's values unchanged (the paper's appendix where it states them: T=6, K=4, tau=4).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Measured 2026-12-02 (RL only, the embedded model, n=128 held-out chain sums, T=0.7): lr 3e-4, 4 problems x
    # G=4, 64 tokens took sampled accuracy 0.078 -> 0.133 (15 updates) -> 0.195 (30), +0.117 [+0.042, +0.192];
    # lr 1e-3 collapsed the policy within 3 updates (KL 2.3, reward 0); 2 problems x G=8 left most groups without
    # reward variance. A fast round every 10 updates keeps FST's extra cost to 3 rounds in the main job.
    "cpu": {
        "agent": {"group_size": 4, "groups_per_step": 4, "fast_every": 10, "fast_learner": "notes",
                  "max_new_tokens": 64, "temperature": 0.7, "lr": 3e-4, "fast_problems": 4, "fast_budget": 32,
                  "proposals_per_round": 2},
        # 128 problems resolve a ~10-point change (paired 95% interval about +-7.5 points); greedy off halves the
        # evaluation time (the sampled accuracy at the training temperature is the one reported).
        "schedule": {"eval_problems": 128, "eval_greedy": False},
    },
    "paper": {"agent": {}, "schedule": {}},
}
DEFAULT_PRESET = "cpu"


def _agent_config_type() -> Any:
    from fst_env.agents.fst_agent import FSTConfig

    return FSTConfig


@dataclass
class RunConfig:
    """What ``fst train`` runs."""

    model: str = "embedded"
    mode: str = "fst"
    preset: str = DEFAULT_PRESET
    seed: int = 0
    reflection_model: str | None = None
    reflection_api_model: str | None = None
    agent: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=lambda: [
        {"env_id": DEFAULT_ENV, "steps": DEFAULT_STEPS, "env_kwargs": dict(DEFAULT_ENV_KWARGS)}])

    def validate(self) -> RunConfig:
        if self.preset not in PRESETS:
            raise ConfigError(f"preset: must be one of {', '.join(PRESETS)}; got {self.preset!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode: must be one of {', '.join(MODES)}; got {self.mode!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed: must be an int, got {self.seed!r}")
        check_model("model", self.model, special=("embedded", "tiny"))
        if self.reflection_model is not None and not _is_http_url(self.reflection_model):
            check_model("reflection_model", self.reflection_model, special=("embedded",))
        if self.reflection_api_model is not None and (not isinstance(self.reflection_api_model, str)
                                                      or not self.reflection_api_model.strip()):
            raise ConfigError(f"reflection_api_model: must be the model name the endpoint serves, "
                              f"got {self.reflection_api_model!r}")
        for name in ("agent", "schedule"):
            if not isinstance(getattr(self, name), Mapping):
                raise ConfigError(f"{name}: must be a table of settings, got {getattr(self, name)!r}")
        self.agent_config()
        self.build_schedule()
        return self

    def agent_config(self) -> Any:
        """The validated FSTConfig this run config describes (mode sets the slow / fast channels)."""
        config_type = _agent_config_type()
        allowed = {f.name for f in dataclasses.fields(config_type)}
        for key in self.agent:
            if key not in allowed:
                raise ConfigError(f"agent.{key}: unknown field; allowed: {', '.join(sorted(allowed))}")
        channels = {"slow": self.mode != "prompt", "fast": self.mode != "rl"}
        for key, on in channels.items():  # mode decides the channels: a contradicting agent.slow/fast is an error
            if key in self.agent and not isinstance(self.agent[key], bool):
                raise ConfigError(f"agent.{key} must be true or false, got {self.agent[key]!r}")
            if key in self.agent and self.agent[key] is not on:
                raise ConfigError(f"agent.{key}: set by mode ({self.mode!r} means {key} = {str(on).lower()}), "
                                  f"got {self.agent[key]!r}; choose the mode instead (fst, rl, prompt)")
        agent = {**PRESETS[self.preset]["agent"], **self.agent}
        values = {**agent, "seed": agent.get("seed", self.seed), **channels}
        try:
            return config_type(**values).validate()
        except ValueError as exc:
            raise ConfigError(str(exc).replace("FSTConfig.", "agent.")) from None

    def build_schedule(self) -> Schedule:
        allowed = {f.name for f in dataclasses.fields(Schedule)} - {"stages"}
        for key, value in self.schedule.items():
            if key not in allowed:
                raise ConfigError(f"schedule.{key}: unknown field; allowed: {', '.join(sorted(allowed))}")
            if isinstance(value, bool) and key != "eval_greedy":  # bool is an int subclass: true would pass as 1
                raise ConfigError(f"schedule.{key}: must be {'a split name' if key == 'eval_split' else 'an int'}, "
                                  f"got {value!r}")
        stage_fields = {f.name for f in dataclasses.fields(Stage)}
        stages = []
        if not isinstance(self.stages, list) or not self.stages:
            raise ConfigError("stages: a list of at least one {env_id, steps} table is required")
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, Mapping):
                raise ConfigError(f"stages[{i}]: must be a table with env_id and steps, got {stage!r}")
            for key in stage:
                if key not in stage_fields:
                    raise ConfigError(f"stages[{i}].{key}: unknown field; allowed: {', '.join(sorted(stage_fields))}")
            missing = [k for k in ("env_id", "steps") if k not in stage]
            if missing:
                raise ConfigError(f"stages[{i}].{missing[0]}: required")
            kwargs = stage.get("env_kwargs", {})
            if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
                raise ConfigError(f"stages[{i}].env_kwargs: must be a table with string keys, got {kwargs!r}")
            if not isinstance(stage.get("reset_population", False), bool):
                raise ConfigError(f"stages[{i}].reset_population: must be true or false, "
                                  f"got {stage['reset_population']!r}")
            stages.append(Stage(**stage))
        return Schedule(stages, **{**PRESETS[self.preset]["schedule"], **self.schedule}).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        allowed = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in allowed:
                raise ConfigError(f"{key}: unknown field; allowed: {', '.join(sorted(allowed))}")
        return cls(**dict(data))


# A Hugging Face model id: "name" or "owner/name" (letters, digits, '.', '_', '-').
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def _is_http_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def check_model(field_name: str, value: Any, *, special: tuple[str, ...]) -> None:
    """Raise ConfigError unless ``value`` is something load_policy can load: one of ``special``, an existing
    model directory or ``.gguf`` file, or a Hugging Face model id. A path that does not exist is named as such."""
    allowed = f"{', '.join(map(repr, special))}, a model directory, a .gguf file or a Hugging Face id"
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{field_name}: must be {allowed}; got {value!r}")
    if value in special:
        return
    if _is_http_url(value):
        raise ConfigError(f"{field_name}: {value!r} is a URL; weights load from {allowed} (an OpenAI-compatible "
                          "endpoint is agent.backend = 'openai' with backend_kwargs base_url and model)")
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():  # what from_pretrained reads first
            raise ConfigError(f"{field_name}: {value!r} is a directory without config.json, not a model directory")
        return
    if path.is_file():
        if path.suffix == ".gguf":
            return
        raise ConfigError(f"{field_name}: {value!r} is a file but not a .gguf; must be {allowed}")
    # A path-shaped name (or one whose first component is a local directory) was meant as a path: say it is missing.
    first_is_dir = len(path.parts) > 1 and Path(path.parts[0]).expanduser().is_dir()
    if value.startswith(("/", "./", "../", "~")) or value.endswith(".gguf") or "\\" in value or first_is_dir:
        raise ConfigError(f"{field_name}: {value!r} does not exist; must be {allowed}")
    if not _HUB_ID.fullmatch(value):
        raise ConfigError(f"{field_name}: {value!r} is neither an existing path nor a Hugging Face id; "
                          f"must be {allowed}")


def load_config(path: str | Path) -> RunConfig:
    """Read a TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON config file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config: file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config: {path.name} must end in .toml, .yaml, .yml or .json")
    except (ValueError, ImportError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config: {path} could not be parsed: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: {path} must hold a table of settings")
    return RunConfig.from_dict(data)
