"""The record both learners consume: one rollout of one problem under one context."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fst_env.context import Context


@dataclass
class Rollout:
    """One completion of one problem under one context, with what the env said about it.

    ``group`` identifies the problem (e.g. ``"fst/MathReasoning-v0/train/17"``): rollouts sharing it form a
    GRPO group whose advantage is normalised once, whichever context each rollout used. The token fields are
    filled by the generation backend and read by the slow learner; ``old_logprobs`` are the sampling
    policy's log-probs of ``completion_ids`` (for the importance ratio).
    """

    group: str
    problem: str
    context_id: int
    context: Context
    completion: str
    reward: float = 0.0
    feedback: str = ""
    verdict: str = ""
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    old_logprobs: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
