"""fst-env: Fast-Slow Training for LLM agents.

Importing this package registers every ``fst/...`` env id with Gymnasium. It does not import torch: the
training parts (``fst_env.agents``, model loading, backends) import it when they are used.
"""

from fst_env.cards import EnvCard, card, describe, markdown_table, register_env, registered_ids
from fst_env.core import SPLITS, VERDICTS, Outcome, Problem, TextEnv, TextSpace, Verdict
from fst_env.custom import register_task

from fst_env import envs as _envs  # noqa: F401  (registers the fst/ ids)  # isort: skip

__version__ = "0.1.0"

__all__ = [
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
]
