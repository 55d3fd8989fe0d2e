"""Shared by the TRL tests: a graded charset task registered as ENV_ID, and small builders for configs and trainers.

Importing this module registers ``fsttest/TrlCharset-v0`` (six train and four validation problems) once per session.
"""

from pathlib import Path

import trl
from datasets import Dataset

import fst_env
from fst_env.agents.fast import NotesFastLearner, ScoreAcceptance
from fst_env.agents.population import ContextPopulation
from fst_env.integrations.trl import FSTGRPOTrainer, fst_grpo_config
from fst_env.models import tiny_policy

ENV_ID = "fsttest/TrlCharset-v0"
ADVICE = "Use only letters and digits in the answer."
G = 4  # num_generations
ROWS = 8  # per_device_train_batch_size: two problems per step


def _charset_reward(response: str, problem: dict) -> tuple[float, str]:
    """A graded reward, so groups of a random model's completions have non-zero reward variance."""
    text = response.strip()
    good = sum(ch.isascii() and ch.isalnum() for ch in text) / len(text)
    if good >= 1.0:
        return 1.0, "Correct: only letters and digits."
    return good, f"Only {good:.0%} of the characters are letters or digits. {ADVICE}"


fst_env.register_task(ENV_ID, {"train": [{"prompt": f"Name item {i}."} for i in range(6)],
                               "validation": [{"prompt": f"Name thing {i}."} for i in range(4)]},
                      _charset_reward, summary="test task: answer with letters and digits only")

SEED_CONTEXT = {"instructions": "Answer in one word."}
SECOND_CONTEXT = {"instructions": "Reply with letters only."}


def _config(output_dir: Path, **overrides) -> trl.GRPOConfig:
    """A GRPOConfig for two CPU steps of ROWS rows in groups of G; keyword overrides replace the defaults."""
    settings = dict(max_steps=2, per_device_train_batch_size=ROWS, num_generations=G, max_completion_length=8,
                    report_to=[], bf16=False, gradient_checkpointing=False, logging_steps=1, use_cpu=True,
                    save_strategy="no", learning_rate=1e-3, seed=0)
    settings.update(overrides)
    return fst_grpo_config(str(output_dir), **settings)


def _population() -> ContextPopulation:
    """The seed context (id 0) and SECOND_CONTEXT (id 1, its child): two contexts to mix in each group."""
    population = ContextPopulation(dict(SEED_CONTEXT), max_size=4)
    population.add(dict(SECOND_CONTEXT), parent_id=0, scores={})
    return population


def _accept_all_notes() -> NotesFastLearner:
    """A NotesFastLearner that accepts every proposal (two problems a round, one proposal)."""
    # Accept every proposal: with a random tiny model a better minibatch score is luck, and this test is about the
    # plumbing (feedback -> notes -> population -> prompts), not about the notes helping.
    return NotesFastLearner(minibatch_size=2, proposals_per_round=1, seed=0,
                            acceptance=ScoreAcceptance(lambda before, after: True, "accept-all"))


def _trainer(tmp_path: Path, **kwargs) -> FSTGRPOTrainer:
    """An FSTGRPOTrainer of a fresh tiny policy on ENV_ID; ``args`` defaults to _config(), ``population`` too."""
    policy = tiny_policy(0)
    kwargs.setdefault("population", _population())
    return FSTGRPOTrainer(policy.model, ENV_ID, kwargs.pop("args", None) or _config(tmp_path),
                          processing_class=policy.tokenizer, **kwargs)


def _columns(data: Dataset, rows: list[int]) -> dict[str, list]:
    """The reward-function keyword columns (all but the prompt) of ``data``'s ``rows``, in that order."""
    return {name: [data[i][name] for i in rows] for name in data.column_names if name != "prompt"}
