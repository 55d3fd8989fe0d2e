"""Fast learners: evolve the context population between slow (RL) steps, GEPA style, under the current weights.

This module is the fast channel's public face: it only re-exports names, so ``from fst_env.agents.fast import
X`` works for everything the fast learners offer. The code lives in four modules, each depending only on the
ones before it:

- :mod:`fst_env.agents.fast_bridge`: the gepa bridge (evaluate-fn and proposer shapes, reflective records, the
  rollout adapter gepa evaluates through, the strategy wrapper around a proposer, gepa's log);
- :mod:`fst_env.agents.fast_acceptance`: whether a child enters the population (:class:`ScoreAcceptance`,
  :class:`EvidenceAcceptance`);
- :mod:`fst_env.agents.fast_proposers`: :class:`ReflectionProposer` (a reflection LM rewrites the instructions)
  and :class:`NotesProposer` (LLM-free notes from recurring env feedback); the demonstrations proposer is in
  :mod:`fst_env.agents.demonstrations`;
- :mod:`fst_env.agents.fast_round`: the round (:class:`GepaFastLearner`, whose docstring gives its steps and
  contract) and the concrete :class:`ReflectiveFastLearner` and :class:`NotesFastLearner`.

Use from an agent (every T slow steps)::

    population = ContextPopulation({"instructions": "Solve the problem."}, max_size=4)
    learner = ReflectiveFastLearner(from_transformers(model, tokenizer), budget_metric_calls=96, seed=0)

    def evaluate(context, keys):            # current policy, this context, these problems -> scored Rollouts
        ...

    metrics = learner.round(population, evaluate, recent_rollouts, problem_keys)
    ids = population.assign_group(group_size, rng)   # contexts for the G rollouts of one RL problem
"""

from __future__ import annotations

from fst_env.agents.fast_acceptance import Acceptance, EvidenceAcceptance, ScoreAcceptance
from fst_env.agents.fast_bridge import (
    EvaluateFn,
    Proposer,
    ReflectiveDataset,
    RolloutAdapter,
    clean_text,
    format_feedback,
    parse_feedback,
)
from fst_env.agents.fast_proposers import NotesProposer, ReflectionProposer, note_meaning
from fst_env.agents.fast_round import (
    TRIAL_MODES,
    FastLearner,
    GepaFastLearner,
    NotesFastLearner,
    ReflectiveFastLearner,
    diff_summary,
)

# The names these had while everything lived in this one module (kept for existing imports).
_clean = clean_text
_RolloutAdapter = RolloutAdapter

__all__ = [
    "TRIAL_MODES",
    "Acceptance",
    "EvaluateFn",
    "EvidenceAcceptance",
    "FastLearner",
    "GepaFastLearner",
    "NotesFastLearner",
    "NotesProposer",
    "Proposer",
    "ReflectionProposer",
    "ReflectiveDataset",
    "ReflectiveFastLearner",
    "RolloutAdapter",
    "ScoreAcceptance",
    "clean_text",
    "diff_summary",
    "format_feedback",
    "note_meaning",
    "parse_feedback",
]
