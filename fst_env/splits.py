"""Disjoint train / validation / test splits for procedurally generated tasks.

A problem's split is decided by a hash of its prompt text, not by the seed that generated it, so the same
question can never appear in two splits even when two seeds happen to generate it. Problem ``k`` of a split
is the first prompt in a deterministic stream of candidates ``(seed, split, k, attempt)`` whose hash falls in
that split's bucket: O(1) per problem, independent of ``k``, and cached.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from fst_env.core import SPLITS, Problem

#: Percent of the hash space each split owns.
SPLIT_PERCENT: dict[str, range] = {"train": range(0, 80), "validation": range(80, 90), "test": range(90, 100)}


def _hash64(*parts: object) -> int:
    text = "\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def split_of(prompt: str) -> str:
    """The split a prompt belongs to (stable across processes and Python versions)."""
    bucket = _hash64("split", prompt) % 100
    return next(name for name, owned in SPLIT_PERCENT.items() if bucket in owned)


class ProceduralSplit:
    """Problem ``k`` of one split of a generator ``generate(index) -> Problem`` (deterministic in ``index``)."""

    def __init__(self, generate: Callable[[int], Problem], *, seed: int, split: str, size: int,
                 max_attempts: int = 2000) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if size < 1:
            raise ValueError(f"split size must be >= 1, got {size}")
        self.generate = generate
        self.seed = seed
        self.split = split
        self.size = size
        self.max_attempts = max_attempts
        self._cache: dict[int, Problem] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, problem_id: int) -> Problem:
        cached = self._cache.get(problem_id)
        if cached is not None:
            return cached
        if not 0 <= problem_id < self.size:
            raise IndexError(f"problem_id {problem_id} outside [0, {self.size}) of split {self.split!r}")
        for attempt in range(self.max_attempts):
            index = _hash64(self.seed, self.split, problem_id, attempt) % (1 << 31)
            problem = self.generate(index)
            if split_of(problem.prompt) == self.split:
                self._cache[problem_id] = problem
                return problem
        raise RuntimeError(f"no prompt for split {self.split!r} after {self.max_attempts} attempts: the "
                           "generator's problem space is too small for disjoint splits")
