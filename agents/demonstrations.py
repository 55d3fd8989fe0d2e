"""An LLM-free fast learner whose context is worked examples: the policy's own recent correct training rollouts.

A small model cannot rewrite its instructions usefully, but it can imitate its own successes. Each proposal adds
one demonstration to the ``demonstrations`` component of the parent: a training problem (its prompt shortened)
and the completion the policy itself produced for it when the env judged it correct. Candidates are kept and
pruned on the per-problem Pareto front with the same minibatch acceptance test as the other learners
(:class:`~fst_env.agents.fast.GepaFastLearner`), and a context never exceeds ``token_budget`` tokens of
demonstrations (oldest dropped first).

What may enter a context, and why:
- only rollouts whose verdict is ``"correct"`` and whose reward reaches ``perfect_score``: a failed rollout's
  text (and its feedback, which may name the expected answer) never does; feedback is not used at all;
- only rollouts of *training* problems: a problem key whose split is anything but ``train`` (``validation``,
  ``test``) is refused, so held-out text cannot leak into the prompt that is later evaluated on it;
- text is cleaned (control characters removed, valid UTF-8) and bounded: model output is untrusted.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gepa.proposer.reflective_mutation.reflection_lm import ReflectionProposal

from fst_env.agents.bookkeeping import is_training_key
from fst_env.agents.fast_bridge import EvaluateFn, ReflectiveDataset, clean_text
from fst_env.agents.fast_round import GepaFastLearner
from fst_env.agents.population import ContextPopulation
from fst_env.agents.rollout import Rollout

#: Separates demonstrations inside the component (a line no cleaned demonstration can contain on its own).
SEPARATOR = "\n\n### Example\n"
_HEADER = "Worked examples of solved problems (your own earlier correct answers):"


def chars_over_four(text: str) -> int:
    """The fallback token count: characters / 4, rounded up."""
    return (len(text) + 3) // 4


#: True when a problem key (``env/split/id``) names a training problem; held-out splits are refused.
training_key = is_training_key


class DemonstrationsProposer:
    """A :class:`~fst_env.agents.fast.Proposer` that adds one worked example per proposal from a pool.

    :meth:`set_pool` (called by the learner each round) takes the recent rollouts and keeps the eligible ones
    (correct, training split; one per problem, the shortest correct completion). A proposal for a parent adds the
    first pool demonstration (in an order shuffled with ``seed``) whose problem the parent does not already
    demonstrate, then drops the parent's oldest demonstrations until the component fits ``token_budget``
    (``count_tokens``, default :func:`chars_over_four`). No eligible demonstration -> no proposal.
    """

    def __init__(self, token_budget: int = 512, *, max_demonstrations: int = 4, max_prompt_chars: int = 400,
                 max_completion_chars: int = 800, perfect_score: float = 1.0,
                 count_tokens: Callable[[str], int] | None = None, seed: int = 0) -> None:
        if token_budget < 16 or max_demonstrations < 1 or max_prompt_chars < 40 or max_completion_chars < 8:
            raise ValueError("DemonstrationsProposer: token_budget >= 16, max_demonstrations >= 1, "
                             "max_prompt_chars >= 40 and max_completion_chars >= 8 are required")
        self.token_budget = token_budget
        self.max_demonstrations = max_demonstrations
        self.max_prompt_chars = max_prompt_chars
        self.max_completion_chars = max_completion_chars
        self.perfect_score = perfect_score
        self.count_tokens = count_tokens or chars_over_four
        self.rng = random.Random(seed)
        self.pool: list[tuple[str, str]] = []  # (problem key, demonstration text)

    def eligible(self, rollout: Rollout) -> bool:
        """A rollout may become a demonstration: correct, full reward, a training problem, a non-empty answer."""
        return (rollout.verdict == "correct" and float(rollout.reward) >= self.perfect_score
                and training_key(rollout.group) and bool(rollout.completion.strip()))

    def render(self, rollout: Rollout) -> str:
        """One demonstration: the problem (shortened) and the policy's own correct completion."""
        problem = clean_text(rollout.problem.strip(), self.max_prompt_chars)
        answer = clean_text(rollout.completion.strip(), self.max_completion_chars)
        # A completion that contains the separator would split into fake examples when parsed back.
        answer = answer.replace("### Example", "# Example")
        return f"Problem: {problem}\nAnswer: {answer}"

    def set_pool(self, rollouts: Sequence[Rollout]) -> None:
        """Replace the pool with the eligible rollouts (the shortest correct completion per problem)."""
        best: dict[str, Rollout] = {}
        for rollout in rollouts:
            if self.eligible(rollout):
                kept = best.get(rollout.group)
                if kept is None or len(rollout.completion) < len(kept.completion):
                    best[rollout.group] = rollout
        keys = sorted(best)
        self.rng.shuffle(keys)
        self.pool = [(key, self.render(best[key])) for key in keys]

    @staticmethod
    def parse(text: str) -> list[str]:
        """The demonstrations in a component text (inverse of :meth:`compose`)."""
        return [part.strip() for part in text.split(SEPARATOR)[1:] if part.strip()]

    def compose(self, demonstrations: Sequence[str]) -> str:
        """The component text for these demonstrations (empty for none)."""
        return _HEADER + "".join(SEPARATOR + d for d in demonstrations) if demonstrations else ""

    def fit(self, demonstrations: list[str]) -> list[str]:
        """The newest demonstrations that fit the count and the token budget (oldest dropped first)."""
        kept = list(demonstrations)[-self.max_demonstrations:]
        while kept and self.count_tokens(self.compose(kept)) > self.token_budget:
            kept.pop(0)
        return kept

    def reflect(self, candidate: dict[str, str], reflective_dataset: ReflectiveDataset,
                components_to_update: list[str]) -> tuple[ReflectionProposal, DemonstrationsProposer]:
        """gepa's ``ReflectionLM`` protocol: a new demonstrations text per component, the added example's key as
        the rationale."""
        new_texts: dict[str, str] = {}
        rationale: dict[str, str] = {}
        for name in components_to_update:
            existing = self.parse(candidate.get(name, ""))
            for key, demo in self.pool:
                if demo in existing:
                    continue
                kept = self.fit([*existing, demo])
                if demo not in kept:  # alone it does not fit the budget: try the next one
                    continue
                new_texts[name] = self.compose(kept)
                rationale[name] = f"added a worked example from training problem {key}"
                break
        return ReflectionProposal(new_texts=new_texts, raw_lm_outputs=rationale), self

    def __call__(self, candidate: Mapping[str, str], reflective_dataset: ReflectiveDataset,
                 components_to_update: list[str]) -> dict[str, str]:
        return self.reflect(dict(candidate), reflective_dataset, components_to_update)[0].new_texts


class DemonstrationFastLearner(GepaFastLearner):
    """The fast round with :class:`DemonstrationsProposer`: worked examples from the policy's own correct
    training rollouts, under :class:`GepaFastLearner`'s loop, Pareto pruning and acceptance test."""

    def __init__(self, token_budget: int = 512, minibatch_size: int = 3, proposals_per_round: int = 4,
                 budget_metric_calls: int | None = None, seed: int = 0, *, component: str = "demonstrations",
                 max_demonstrations: int = 4, count_tokens: Callable[[str], int] | None = None,
                 **kwargs: Any) -> None:
        self.demonstrations = DemonstrationsProposer(token_budget, max_demonstrations=max_demonstrations,
                                                     perfect_score=kwargs.get("perfect_score", 1.0),
                                                     count_tokens=count_tokens, seed=seed)
        super().__init__(self.demonstrations, components=(component,), minibatch_size=minibatch_size,
                         proposals_per_round=proposals_per_round, budget_metric_calls=budget_metric_calls, seed=seed,
                         **kwargs)

    def round(self, population: ContextPopulation, evaluate: EvaluateFn, recent_rollouts: Sequence[Rollout] = (),
              problem_keys: Sequence[str] = (), *, evidence: Sequence[Rollout] | None = None) -> dict[str, Any]:
        """One fast round; the demonstration pool is the recent rollouts' eligible ones (see the module doc)."""
        self.demonstrations.set_pool(recent_rollouts)
        metrics = super().round(population, evaluate, recent_rollouts, problem_keys, evidence=evidence)
        metrics["demonstration_pool"] = len(self.demonstrations.pool)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """The loop's rng plus the proposer's (which orders the pool), so a resumed run continues identically."""
        version, internal, gauss = self.demonstrations.rng.getstate()
        return {**super().state_dict(), "demonstrations_rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        if "demonstrations_rng" in state:
            version, internal, gauss = state["demonstrations_rng"]
            self.demonstrations.rng.setstate((version, tuple(internal), gauss))
