"""fst-env: Fast-Slow Training for LLM agents.

Importing this package registers every ``fst/...`` env id with Gymnasium. It does not import torch: the
training parts (``fst_env.agents``, model loading, backends) import it when they are used.
"""

import os

# Generation runs many small parallel regions; OpenMP threads that spin-wait between them made a generate call
# 10x slower whenever anything else used the CPU (measured: 6.5 s vs 0.56 s). Passive waiting avoids that. It
# only applies if set before torch loads, and a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fst_env.cards import EnvCard, card, describe, markdown_table, register_env, registered_ids
from fst_env.core import SPLITS, VERDICTS, Outcome, Problem, TextEnv, TextSpace, Verdict
from fst_env.custom import register_task

from fst_env import envs as _envs  # noqa: F401  (registers the fst/ ids)  # isort: skip

__version__ = "0.1.0"

# The training API imports torch, so it loads on first use: `import fst_env` stays light.
_LAZY = {
    "train": ("fst_env.loop", "train"),
    "Schedule": ("fst_env.loop", "Schedule"),
    "Stage": ("fst_env.loop", "Stage"),
    "FSTAgent": ("fst_env.agents.fst_agent", "FSTAgent"),
    "FSTConfig": ("fst_env.agents.fst_agent", "FSTConfig"),
    "RLAgent": ("fst_env.agents.fst_agent", "RLAgent"),
    "PromptAgent": ("fst_env.agents.fst_agent", "PromptAgent"),
    "load_policy": ("fst_env.models", "load_policy"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'fst_env' has no attribute {name!r}")

__all__ = [  # noqa: RUF022  (grouped: env API, then the lazily loaded training API)
    "SPLITS",
    "VERDICTS",
    "EnvCard",
    "Outcome",
    "Problem",
    "TextEnv",
    "TextSpace",
    "Verdict",
    "card",
    "describe",
    "markdown_table",
    "register_env",
    "register_task",
    "registered_ids",
    "FSTAgent",
    "FSTConfig",
    "PromptAgent",
    "RLAgent",
    "Schedule",
    "Stage",
    "load_policy",
    "train",
]
