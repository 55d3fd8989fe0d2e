"""The slow learner's policy-gradient losses and group-normalised advantages: pure tensor functions.

Why a module of its own: these are the objective's formulas (CISPO, PPO/GRPO clipping, REINFORCE, the k3 KL
estimate, the per-group advantage rule), with no model, tokenizer or optimizer in them, so they can be read and
tested on hand-computed tensors without building a learner. :mod:`fst_env.agents.slow` applies them in its step
and re-exports every public name here.

Shapes: token tensors ``[B, T]`` (``mask`` 1.0 on real completion tokens), per-sequence tensors ``[B]``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import torch

LossName = Literal["cispo", "grpo_clip", "reinforce"]
LOSSES: tuple[str, ...] = ("cispo", "grpo_clip", "reinforce")


# ------------------------------------------------------------------------------------------------ losses
def _sequence_mean(token_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's real tokens (a sequence with none gives 0)."""
    return (token_values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def _reduce(token_values: torch.Tensor, mask: torch.Tensor, row_weights: torch.Tensor | None) -> torch.Tensor:
    """Sequence mean then batch mean (``row_weights`` None), or ``sum_b row_weights[b] * sum_t value[b, t]``:
    the slow learner's weights make that the mean over episodes of each episode's token mean."""
    if row_weights is None:
        return _sequence_mean(token_values, mask).mean()
    return ((token_values * mask).sum(-1) * row_weights).sum()


def cispo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
               mask: torch.Tensor, tau: float = 4.0, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """CISPO: ``-sg(min(rho, tau)) * A * logprobs`` per token, averaged per sequence, then over sequences.

    Shapes: ``logprobs``, ``old_logprobs``, ``mask``: [B, T]; ``advantages``: [B]. ``rho`` is computed from
    detached log-probs, so the gradient is ``-min(rho, tau) * A * grad log pi`` for every token. ``row_weights``
    [B] replaces the two means by a weighted token sum (see :func:`_reduce`).
    """
    mask = mask.to(logprobs.dtype)
    weight = torch.exp(logprobs.detach() - old_logprobs).clamp(max=tau)
    token_loss = -weight * advantages[:, None] * logprobs
    return _reduce(token_loss, mask, row_weights)


def grpo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                   mask: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.2,
                   row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """PPO/GRPO clipped surrogate ``-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)``, sequence- then batch-mean.

    Tokens whose clipped term is the minimum get no gradient (the trust region CISPO avoids).
    """
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    token_loss = -torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    return _reduce(token_loss, mask, row_weights)


def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                   row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """On-policy REINFORCE with a baseline: ``-A * logprobs`` per token, sequence- then batch-mean."""
    mask = mask.to(logprobs.dtype)
    return _reduce(-advantages[:, None] * logprobs, mask, row_weights)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) on tokens sampled from pi: ``exp(d) - d - 1``, ``d = ref - logp``.

    Non-negative and unbiased, with much lower variance than ``-d`` (Schulman's k3).
    """
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


def group_advantages(rewards: Sequence[float] | torch.Tensor, groups: Sequence[Hashable],
                     eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Group-normalised advantages ``(r - mean_g) / (std_g + eps)``, one normalisation per group.

    A group is every rollout sharing a ``groups`` key (a problem), across all contexts it was tried with;
    ``std`` is the population std. Returns ``(advantages [N] float32, kept [N] bool, n_zero_variance_groups)``:
    a group whose rewards are all equal (a single rollout included) has no learning signal, so its rollouts get
    advantage 0 and ``kept = False``.
    """
    values = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    if len(groups) != values.numel():
        raise ValueError(f"group_advantages: {values.numel()} rewards but {len(groups)} group keys")
    if not torch.isfinite(values).all():
        raise ValueError("group_advantages: rewards must be finite")
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(groups):
        members.setdefault(key, []).append(index)
    advantages = torch.zeros_like(values)
    kept = torch.zeros(values.numel(), dtype=torch.bool)
    zero_variance = 0
    for indices in members.values():
        group = values[indices]
        if bool(group.max() == group.min()):
            zero_variance += 1
            continue
        advantages[indices] = (group - group.mean()) / (group.std(correction=0) + eps)
        kept[indices] = True
    return advantages.float(), kept, zero_variance
