"""Fast weights as a population: up to K contexts kept on a per-problem Pareto front (FST / GEPA style).

Each candidate is a :data:`~fst_env.context.Context` with a stable integer id, its lineage (parent id, the fast
round that produced it, which components changed, the reflection text behind it) and its per-problem scores
from the latest re-scoring under the current policy weights. The Pareto bookkeeping is gepa's own: the
population builds a fresh :class:`gepa.core.state.GEPAState` from its current members whenever it needs one
(:meth:`ContextPopulation.to_gepa_state`) and uses gepa's dominance helpers and ``ParetoCandidateSelector``
on it. A fresh state rather than one long-lived state because gepa's state is append-only (no removal, so no
top-K pruning) and its scores go stale as soon as the slow weights move; rebuilding it from re-scored members
is cheap (a handful of candidates) and keeps gepa's semantics exact.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gepa.core.state import GEPAState, ValsetEvaluation
from gepa.gepa_utils import find_dominator_programs
from gepa.strategies.candidate_selector import ParetoCandidateSelector

from fst_env.context import Context

STATE_VERSION = 1


@dataclass
class Candidate:
    """One member of the population: a context, where it came from, and how it scored.

    ``scores`` maps a problem key (the :attr:`Rollout.group` string) to the candidate's score on that problem
    from the latest re-scoring; ``changed`` lists the components that differ from the parent; ``reflection`` is
    the text that proposed it (the reflection LM's raw reply, or the notes learner's rationale). A ``trial``
    candidate is a proposed child not judged yet: the collects sample it (so it gathers evidence against its
    parent), but it is no member: it has no scores, is never a parent, the best or on the front, and is not pruned.
    """

    id: int
    context: Context
    parent_id: int | None = None
    round: int = 0
    changed: list[str] = field(default_factory=list)
    reflection: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    trial: bool = False

    @property
    def mean_score(self) -> float:
        """Mean of the per-problem scores, ``-inf`` when the candidate has not been scored yet."""
        return sum(self.scores.values()) / len(self.scores) if self.scores else float("-inf")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return {"id": self.id, "context": dict(self.context), "parent_id": self.parent_id, "round": self.round,
                "changed": list(self.changed), "reflection": self.reflection, "scores": dict(self.scores),
                "trial": self.trial}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        """Inverse of :meth:`to_dict`."""
        return cls(id=int(data["id"]), context=_check_context(data["context"]), parent_id=data.get("parent_id"),
                   round=int(data.get("round", 0)), changed=list(data.get("changed", [])),
                   reflection=str(data.get("reflection", "")),
                   scores={str(k): float(v) for k, v in dict(data.get("scores", {})).items()},
                   trial=bool(data.get("trial", False)))


def _check_context(context: Any) -> Context:
    """A copy of ``context`` after checking it is a ``dict[str, str]`` (the fast weights must be plain text)."""
    if not isinstance(context, Mapping):
        raise TypeError(f"ContextPopulation: a context must be a dict[str, str], got {type(context).__name__}")
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("ContextPopulation: a context must map component names (str) to texts (str), "
                            f"got {key!r}: {type(value).__name__}")
    return dict(context)


class ContextPopulation:
    """The fast weights: up to ``max_size`` contexts on a per-problem Pareto front.

    Contract:
    - ids are stable integers, never reused (not even after :meth:`reset_to`), so logs and rollouts
      (:attr:`Rollout.context_id`) keep pointing at the right context;
    - scores are per candidate and per problem key, replaced wholesale by :meth:`set_scores` on re-scoring
      (old scores were measured under older weights and are not mixed in);
    - :meth:`pareto_front` is gepa's per-instance front with dominated candidates removed;
      :meth:`select_parent` samples from it with gepa's ``ParetoCandidateSelector`` (weight = number of
      problems a candidate is best on); :meth:`prune` keeps the front first, then the best means;
    - trial candidates (:meth:`add` with ``trial=True``) are in ``ids`` and in :meth:`assign_group` (the collects
      sample them) but not in ``member_ids``: scoring, the front, parent selection, :meth:`best` and
      :meth:`prune` see members only, until :meth:`promote` makes a trial a member or :meth:`remove` drops it;
    - :meth:`state_dict` is JSON-serialisable and :meth:`load_state_dict` restores it exactly.
    """

    def __init__(self, seed_context: Context, max_size: int = 4) -> None:
        if max_size < 1:
            raise ValueError(f"ContextPopulation: max_size must be >= 1, got {max_size}")
        self.max_size = max_size
        self.round = 0
        self._next_id = 0
        self._candidates: dict[int, Candidate] = {}
        self.seed_context = _check_context(seed_context)
        self._insert(Candidate(id=self._new_id(), context=dict(self.seed_context), round=0))

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return len(self._candidates)

    def __iter__(self) -> Iterator[Candidate]:
        return iter(list(self._candidates.values()))

    def __contains__(self, candidate_id: object) -> bool:
        return candidate_id in self._candidates

    def __getitem__(self, candidate_id: int) -> Candidate:
        try:
            return self._candidates[candidate_id]
        except KeyError:
            raise KeyError(f"ContextPopulation: no candidate with id {candidate_id}; "
                           f"current ids are {self.ids}") from None

    @property
    def ids(self) -> list[int]:
        """Current candidate ids, oldest first."""
        return list(self._candidates)

    @property
    def member_ids(self) -> list[int]:
        """Ids of the judged candidates (every one but the trials), oldest first."""
        return [c.id for c in self._members()]

    @property
    def trial_ids(self) -> list[int]:
        """Ids of the trial candidates (proposed, sampled by the collects, not judged yet), oldest first."""
        return [cid for cid, c in self._candidates.items() if c.trial]

    def context(self, candidate_id: int) -> Context:
        """A copy of the context of ``candidate_id`` (copies, so callers cannot edit the population by accident)."""
        return dict(self[candidate_id].context)

    def mean_scores(self) -> dict[int, float]:
        """Mean score per member id (``-inf`` for unscored members)."""
        return {c.id: c.mean_score for c in self._members()}

    def problem_keys(self) -> list[str]:
        """Every problem key any member has a score for, sorted."""
        return sorted({k for c in self._members() for k in c.scores})

    # ------------------------------------------------------------------ mutation
    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _members(self) -> list[Candidate]:
        return [c for c in self._candidates.values() if not c.trial]

    def _insert(self, candidate: Candidate) -> None:
        self._candidates[candidate.id] = candidate

    def new_round(self) -> int:
        """Start a fast round: advance and return the round counter recorded in new candidates' lineage."""
        self.round += 1
        return self.round

    def set_scores(self, candidate_id: int, scores: Mapping[str, float]) -> None:
        """Replace the scores of ``candidate_id`` with a fresh re-scoring (problem key -> score)."""
        self[candidate_id].scores = {str(k): float(v) for k, v in scores.items()}

    def add(self, child: Context, parent_id: int | None, scores: Mapping[str, float], *,
            reflection: str = "", changed: Sequence[str] | None = None, trial: bool = False) -> int:
        """Add ``child`` (proposed from ``parent_id``) with its per-problem ``scores``; return its new id.

        The population may exceed ``max_size`` until :meth:`prune`, so a round can add several children and
        then keep the best K. ``changed`` defaults to the components whose text differs from the parent's.
        ``trial=True`` adds it unjudged (no scores allowed): see the class contract.
        """
        if trial and scores:
            raise ValueError("ContextPopulation.add: a trial candidate has no scores until it is promoted")
        child = _check_context(child)
        if parent_id is not None and parent_id not in self._candidates:
            raise KeyError(f"ContextPopulation.add: parent id {parent_id} is not in the population {self.ids}")
        if changed is None:
            parent = self._candidates[parent_id].context if parent_id is not None else {}
            changed = sorted(k for k in set(child) | set(parent) if child.get(k, "") != parent.get(k, ""))
        candidate = Candidate(id=self._new_id(), context=child, parent_id=parent_id, round=self.round,
                              changed=list(changed), reflection=reflection,
                              scores={str(k): float(v) for k, v in scores.items()}, trial=trial)
        self._insert(candidate)
        return candidate.id

    def promote(self, candidate_id: int, scores: Mapping[str, float]) -> None:
        """Make trial ``candidate_id`` a member, with its per-problem ``scores``."""
        candidate = self[candidate_id]
        if not candidate.trial:
            raise ValueError(f"ContextPopulation.promote: candidate {candidate_id} is not a trial")
        candidate.trial = False
        self.set_scores(candidate_id, scores)

    def remove(self, candidate_id: int) -> None:
        """Drop trial ``candidate_id`` (a rejected child); members leave only through :meth:`prune`."""
        if not self[candidate_id].trial:
            raise ValueError(f"ContextPopulation.remove: candidate {candidate_id} is a member, not a trial")
        del self._candidates[candidate_id]

    def reset_to(self, seed_context: Context) -> int:
        """Drop every candidate and restart from ``seed_context`` (a new continual-learning stage); return its id."""
        self.seed_context = _check_context(seed_context)
        self._candidates = {}
        candidate = Candidate(id=self._new_id(), context=dict(self.seed_context), round=self.round)
        self._insert(candidate)
        return candidate.id

    # ------------------------------------------------------------------ gepa bridge
    def to_gepa_state(self, candidate_ids: Sequence[int] | None = None) -> tuple[GEPAState, list[int]]:
        """A gepa ``GEPAState`` holding the given candidates (default: all members) and the state-index -> id map.

        The state's per-instance front is computed by gepa itself from the candidates' scores. Lineage inside
        the state is kept only between candidates that are both present. ``GEPAState.__init__`` leaves the
        budget counters unset (``initialize_gepa_state`` sets them), so they are set here.
        """
        ids = self.member_ids if candidate_ids is None else list(candidate_ids)
        if not ids:
            raise ValueError("ContextPopulation.to_gepa_state: no candidates")
        first = self[ids[0]]
        state = GEPAState(dict(first.context), ValsetEvaluation(outputs_by_val_id={},
                                                                scores_by_val_id=dict(first.scores)))
        state.total_num_evals = 0
        state.num_full_ds_evals = 1
        position = {ids[0]: 0}
        for cid in ids[1:]:
            cand = self[cid]
            parents = [position[cand.parent_id]] if cand.parent_id in position else []
            position[cid] = state.update_state_with_new_program(
                parents, dict(cand.context), ValsetEvaluation(outputs_by_val_id={}, scores_by_val_id=dict(cand.scores)),
                None, 0)
        return state, ids

    def front_coverage(self) -> dict[int, int]:
        """For each member id, on how many problems it is (co-)best after dominated candidates are removed."""
        if not self.problem_keys():
            return dict.fromkeys(self.member_ids, 0)
        state, ids = self.to_gepa_state()
        keep = set(find_dominator_programs(state.get_pareto_front_mapping(), state.per_program_tracked_scores))
        coverage = dict.fromkeys(self.member_ids, 0)
        for front in state.get_pareto_front_mapping().values():
            for idx in front & keep:
                coverage[ids[idx]] += 1
        return coverage

    def pareto_front(self) -> list[int]:
        """Ids on the per-problem Pareto front (best on at least one problem, dominated ones pruned), oldest first.

        A candidate is dominated when every problem it is best on is also won by another front member (gepa's
        ``remove_dominated_programs``, visiting low means first). Empty when nothing has been scored.
        """
        coverage = self.front_coverage()
        return [cid for cid in self.member_ids if coverage[cid] > 0]

    def _rank(self) -> list[int]:
        """Ids from most to least worth keeping: front members by (coverage, mean), then the rest by mean.

        Ties fall back to the older id, which makes the order (and so pruning) deterministic.
        """
        coverage = self.front_coverage()

        def key(cid: int) -> tuple[int, int, float, int]:
            cand = self._candidates[cid]
            on_front = coverage[cid] > 0
            return (0 if on_front else 1, -coverage[cid] if on_front else 0, -cand.mean_score, cid)

        return sorted(self.member_ids, key=key)

    def prune(self, max_size: int | None = None) -> list[int]:
        """Keep at most ``max_size`` (default ``self.max_size``) members: the Pareto front first (most problems
        won, then best mean), then the best means; trials stay. Returns the removed ids."""
        limit = self.max_size if max_size is None else max_size
        if limit < 1:
            raise ValueError(f"ContextPopulation.prune: max_size must be >= 1, got {limit}")
        keep = set(self._rank()[:limit]) | set(self.trial_ids)
        removed = [cid for cid in self._candidates if cid not in keep]
        self._candidates = {cid: c for cid, c in self._candidates.items() if cid in keep}
        return removed

    def best(self) -> Candidate:
        """The member with the best mean score (ties: more problems won, then older); the oldest if unscored."""
        coverage = self.front_coverage()
        return self._candidates[min(self.member_ids, key=lambda cid: (-self._candidates[cid].mean_score,
                                                                         -coverage[cid], cid))]

    # ------------------------------------------------------------------ sampling
    def select_parent(self, rng: random.Random) -> int:
        """A parent id drawn by gepa's ``ParetoCandidateSelector``: P(k) = problems k is best on / total.

        Before any scoring there is no front, so the draw is uniform over the members.
        """
        if not self.problem_keys():
            return rng.choice(self.member_ids)
        state, ids = self.to_gepa_state()
        return ids[ParetoCandidateSelector(rng).select_candidate_idx(state)]

    def assign_group(self, group_size: int, rng: random.Random) -> list[int]:
        """Context ids for the ``group_size`` rollouts of one problem: ``group_size // K`` each for the K current
        candidates (trials included), the remainder given to distinct candidates drawn by ``rng``. Ordered by
        candidate age."""
        if group_size < 1:
            raise ValueError(f"ContextPopulation.assign_group: group_size must be >= 1, got {group_size}")
        ids = self.ids
        base, remainder = divmod(group_size, len(ids))
        extra = set(rng.sample(ids, remainder)) if remainder else set()
        return [cid for cid in ids for _ in range(base + (1 if cid in extra else 0))]

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the population, JSON-serialisable."""
        return {"version": STATE_VERSION, "max_size": self.max_size, "round": self.round, "next_id": self._next_id,
                "seed_context": dict(self.seed_context),
                "candidates": [c.to_dict() for c in self._candidates.values()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (replaces the current population)."""
        version = state.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"ContextPopulation.load_state_dict: unsupported state version {version!r} "
                             f"(expected {STATE_VERSION})")
        candidates = [Candidate.from_dict(c) for c in state["candidates"]]
        if not any(not c.trial for c in candidates):
            raise ValueError("ContextPopulation.load_state_dict: the state holds no candidates (or only trials)")
        next_id = int(state["next_id"])
        if any(c.id >= next_id for c in candidates):
            raise ValueError("ContextPopulation.load_state_dict: a candidate id is >= next_id; the state is corrupt")
        self.max_size = int(state["max_size"])
        self.round = int(state["round"])
        self._next_id = next_id
        self.seed_context = _check_context(state["seed_context"])
        self._candidates = {c.id: c for c in candidates}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ContextPopulation:
        """A population restored from :meth:`state_dict`."""
        population = cls(dict(state["seed_context"]), max_size=int(state["max_size"]))
        population.load_state_dict(state)
        return population

    def __repr__(self) -> str:
        means = ", ".join(f"{cid}: {m:.3f}" if math.isfinite(m) else f"{cid}: -" for cid, m in
                          self.mean_scores().items())
        trials = f", trials={self.trial_ids}" if self.trial_ids else ""
        return (f"ContextPopulation(size={len(self)}, max_size={self.max_size}, round={self.round}, "
                f"means={{{means}}}{trials})")
