"""One set of books for both FST drivers (``FSTAgent`` and ``FSTGRPOTrainer``).

What both keep the same way lives here, once:

- problem keys: :func:`problem_key` writes ``"<env_id>/<split>/<problem_id>"`` and :func:`parse_problem_key`
  reads it back (env ids contain ``/``, so the key is split from the right);
- :class:`EpisodeBuffer`: the bounded buffer of recent scored episodes (or rollouts) that fast rounds draw their
  problems and reflective records from; :class:`FeedbackBuffer` is its rollout-holding form;
- :class:`BudgetCounters`: the budget counters, with the one rule for what a fast round adds to them;
- :func:`fast_round_rollouts`: a fast round's evaluate function around a driver's own way of playing problems.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from fst_env.agents.episodes import Episode
from fst_env.agents.rollout import Rollout
from fst_env.context import Context
from fst_env.core import SPLITS

#: ``context_id`` of a rollout whose context is not a population member (a free-standing or fast-round context).
NO_CONTEXT_ID = -1


# ============================================================================================== problem keys
def problem_key(env_id: str, split: str, problem_id: int) -> str:
    """The group key of a problem, as everywhere in fst-env: ``"<env_id>/<split>/<problem_id>"``."""
    return f"{env_id}/{split}/{int(problem_id)}"


def parse_problem_key(key: str) -> tuple[str, str, int]:
    """Inverse of :func:`problem_key`: ``(env_id, split, problem_id)``; ValueError for anything else."""
    parts = key.rsplit("/", 2)
    if len(parts) != 3 or parts[1] not in SPLITS or not parts[2].isdigit():
        raise ValueError(f"not a problem key (expected '<env_id>/<split>/<problem_id>'): {key!r}")
    return parts[0], parts[1], int(parts[2])


def is_training_key(key: str) -> bool:
    """True when ``key`` is a problem key of a ``train`` split (held-out splits and other group keys: False)."""
    try:
        return parse_problem_key(key)[1] == "train"
    except ValueError:
        return False


# ============================================================================================== the buffer
def _encode(record: Any) -> dict[str, Any]:
    return record.to_dict() if isinstance(record, Episode) else asdict(record)


class EpisodeBuffer:
    """The most recent scored records (episodes, or rollouts), for fast rounds to draw problems and evidence from.

    Contract: holds at most ``max_records`` records of ``record_type`` (:class:`Episode` or :class:`Rollout`; the
    oldest are dropped first); a record is addressed by (problem key = ``record.group``, ``record.context_id``);
    iteration and :meth:`recent` go oldest first, so a fast learner fed them lets the freshest record of a
    (context, problem) pair win; :meth:`problem_keys` goes most recent first; :attr:`total_added` counts every
    record ever added (:meth:`since` uses it to find a batch's records); :meth:`state_dict` is JSON-serialisable
    and :meth:`load_state_dict` restores it (a plain list of record dicts, an older agent checkpoint, loads too).
    """

    def __init__(self, max_records: int = 4096, record_type: type = Episode) -> None:
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
            raise ValueError(f"{type(self).__name__}: max_records must be an int >= 1, got {max_records!r}")
        if record_type not in (Episode, Rollout):
            raise TypeError(f"{type(self).__name__}: record_type must be Episode or Rollout, got {record_type!r}")
        self.max_records = max_records
        self.record_type = record_type
        self._records: deque[Any] = deque(maxlen=max_records)
        self.total_added = 0

    def add(self, record: Any) -> None:
        """Record one scored episode (or rollout)."""
        if not isinstance(record, self.record_type):
            raise TypeError(f"{type(self).__name__}.add expects a {self.record_type.__name__}, "
                            f"got {type(record).__name__}")
        self._records.append(record)
        self.total_added += 1

    def extend(self, records: Iterable[Any]) -> None:
        """Record several, in order."""
        for record in records:
            self.add(record)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._records))

    def recent(self, n: int | None = None) -> list[Any]:
        """The last ``n`` records (default: all held), oldest first."""
        records = list(self._records)
        return records if n is None else records[max(len(records) - n, 0):]

    def since(self, mark: int) -> list[Any]:
        """The records added after :attr:`total_added` was ``mark`` (those still held), oldest first."""
        return self.recent(min(max(self.total_added - mark, 0), len(self._records)))

    def get(self, key: str, context_id: int) -> list[Any]:
        """Every held record of problem ``key`` under context ``context_id``, oldest first."""
        return [r for r in self._records if r.group == key and r.context_id == context_id]

    def by_key(self) -> dict[tuple[str, int], list[Any]]:
        """The held records grouped by (problem key, context id), each group oldest first."""
        grouped: dict[tuple[str, int], list[Any]] = {}
        for record in self._records:
            grouped.setdefault((record.group, record.context_id), []).append(record)
        return grouped

    def problem_keys(self, limit: int | None = None) -> list[str]:
        """Distinct problem keys, most recently seen first (at most ``limit``)."""
        keys = list(dict.fromkeys(r.group for r in reversed(self._records)))
        return keys if limit is None else keys[:limit]

    def clear(self) -> None:
        """Drop every record (``total_added`` keeps counting)."""
        self._records.clear()

    def state_dict(self) -> dict[str, Any]:
        """The buffer as JSON-serialisable data."""
        return {"max_records": self.max_records, "total_added": self.total_added,
                "records": [_encode(r) for r in self._records]}

    def load_state_dict(self, state: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        """Restore :meth:`state_dict` (replaces the current records); a bare list of record dicts keeps
        ``max_records`` and counts its records as added."""
        if isinstance(state, Mapping):
            self.max_records = int(state["max_records"])
            records, total = state["records"], int(state["total_added"])
        else:
            records, total = state, None
        decode = Episode.from_dict if self.record_type is Episode else (lambda d: Rollout(**d))
        self._records = deque((decode(r) for r in records), maxlen=self.max_records)
        self.total_added = len(self._records) if total is None else total

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)}/{self.max_records} {self.record_type.__name__.lower()}s, "
                f"{len(self.problem_keys())} problems)")


class FeedbackBuffer(EpisodeBuffer):
    """An :class:`EpisodeBuffer` of :class:`Rollout` records: what a TRL reward function scores is one rollout."""

    def __init__(self, max_records: int = 4096) -> None:
        super().__init__(max_records, Rollout)


# ============================================================================================== budget counters
#: What a fast round adds to each fast-round counter: the round itself (``None``: one per round) or a metric of it.
FAST_ROUND_COUNTERS: dict[str, str | None] = {"fast_rounds": None, "fast_rollouts": "metric_calls",
                                              "rollouts_reused": "rollouts_reused",
                                              "reflection_calls": "reflection_calls",
                                              "fast_proposals": "n_proposals", "fast_accepted": "n_accepted"}


class BudgetCounters(dict):
    """A driver's budget counters: a plain dict (JSON, pickling, ``==`` as a dict) that always holds the
    fast-round counters besides the driver's own ``names`` (each starting at its given value)."""

    def __init__(self, names: Mapping[str, float] = ()) -> None:
        names = dict(names)
        self._defaults: dict[str, float] = {**names, **{k: 0 for k in FAST_ROUND_COUNTERS if k not in names}}
        super().__init__(self._defaults)

    def count_fast_round(self, metrics: Mapping[str, Any]) -> None:
        """Add one fast round with these metrics (a fast learner's ``round`` result)."""
        for name, metric in FAST_ROUND_COUNTERS.items():
            self[name] += 1 if metric is None else int(metrics.get(metric, 0))

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Replace the counts with ``saved`` ones; a counter ``saved`` lacks (an older checkpoint) starts over."""
        self.clear()
        self.update({**self._defaults, **dict(saved)})

    def as_metrics(self) -> dict[str, float]:
        """The counters as ``budget/<name>`` metrics."""
        return {f"budget/{name}": value for name, value in self.items()}


# ============================================================================================== fast-round scoring
#: How a driver plays fast-round problems: (``(env_id, split, problem_id)`` per key, context) -> one scored
#: :class:`Episode` (or an already scored :class:`Rollout`) per problem, in order.
PlayFn = Callable[[list[tuple[str, str, int]], Context], Sequence[Any]]


def fast_round_rollouts(context: Context, keys: Sequence[str], play: PlayFn, *, return_rule: str = "sum",
                        env_id: str | None = None, step: int | None = None) -> list[Rollout]:
    """A fast round's evaluate function: ``context`` played on each problem key by ``play``, as Rollouts.

    Contract: every key must parse (:func:`parse_problem_key`) and, with ``env_id``, name that env (ValueError);
    ``play`` must return one record per key (ValueError otherwise); episodes become rollouts with
    ``Episode.as_rollout(return_rule)``; with ``step``, each rollout's ``info["step"]`` is set to it.
    """
    problems = [parse_problem_key(key) for key in keys]
    if env_id is not None:
        for key, (key_env, _, _) in zip(keys, problems, strict=True):
            if key_env != env_id:
                raise ValueError(f"fast round: problem {key!r} is not from {env_id}")
    played = list(play(problems, dict(context)))
    if len(played) != len(problems):
        raise ValueError(f"fast round: {len(played)} scored records for {len(problems)} problems")
    rollouts = [r.as_rollout(return_rule) if isinstance(r, Episode) else r for r in played]
    if step is not None:
        for rollout in rollouts:
            rollout.info["step"] = step
    return rollouts


__all__ = ["FAST_ROUND_COUNTERS", "NO_CONTEXT_ID", "BudgetCounters", "EpisodeBuffer", "FeedbackBuffer", "PlayFn",
           "fast_round_rollouts", "is_training_key", "parse_problem_key", "problem_key"]
