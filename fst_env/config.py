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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fst_env.schedule import ConfigError, Schedule, Stage

MODES = ("fst", "rl", "prompt")
DEFAULT_ENV = "fst/MathReasoning-v0"


def _agent_config_type() -> Any:
    from fst_env.agents.fst_agent import FSTConfig

    return FSTConfig


@dataclass
class RunConfig:
    """What ``fst train`` runs."""

    model: str = "embedded"
    mode: str = "fst"
    seed: int = 0
    reflection_model: str | None = None
    reflection_api_model: str | None = None
    agent: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    # Easy problems by default: the embedded 135M model gets some right, so groups have reward variance to learn from.
    stages: list[dict[str, Any]] = field(default_factory=lambda: [
        {"env_id": DEFAULT_ENV, "steps": 6, "env_kwargs": {"difficulty": "easy"}}])

    def validate(self) -> RunConfig:
        if self.mode not in MODES:
            raise ConfigError(f"mode: must be one of {', '.join(MODES)}; got {self.mode!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed: must be an int, got {self.seed!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"model: must be 'embedded', 'tiny', a directory or a model id; got {self.model!r}")
        self.agent_config()
        self.build_schedule()
        return self

    def agent_config(self) -> Any:
        config_type = _agent_config_type()
        allowed = {f.name for f in dataclasses.fields(config_type)}
        for key in self.agent:
            if key not in allowed:
                raise ConfigError(f"agent.{key}: unknown field; allowed: {', '.join(sorted(allowed))}")
        values = {**self.agent, "seed": self.agent.get("seed", self.seed)}
        values.update({"slow": self.mode != "prompt", "fast": self.mode != "rl"})
        try:
            return config_type(**values).validate()
        except ValueError as exc:
            raise ConfigError(str(exc).replace("FSTConfig.", "agent.")) from None

    def build_schedule(self) -> Schedule:
        allowed = {f.name for f in dataclasses.fields(Schedule)} - {"stages"}
        for key in self.schedule:
            if key not in allowed:
                raise ConfigError(f"schedule.{key}: unknown field; allowed: {', '.join(sorted(allowed))}")
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
            stages.append(Stage(**stage))
        return Schedule(stages, **self.schedule).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        allowed = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in allowed:
                raise ConfigError(f"{key}: unknown field; allowed: {', '.join(sorted(allowed))}")
        return cls(**dict(data))


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
