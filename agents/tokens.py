"""Scoring completion tokens under a model: the padded batch layout, per-token log-probs, and KL drift.

Why a module of its own: the slow learner, the held-out KL measurements (:mod:`fst_env.metrics`), the episode
tests and the benchmarks all score (prompt, completion) token lists the same way, and none of them needs the
learner's optimizer or adapter handling. :class:`TokenBatch` packs tokens in the layout the generation backends
decode in; :func:`token_logprobs` is the learner's differentiable ``log_softmax(logits / temperature)``, with
one forward per distinct prompt when rows repeat a prompt (the G samples of a problem);
:func:`measure_drift` is the one exact KL(current || base) and entropy measurement every KL figure comes from.
:mod:`fst_env.agents.slow` re-exports every public name here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fst_env.agents.losses import kl_k3
from fst_env.backends.base import repeated_prompts
from fst_env.peft_utils import core_model


# ------------------------------------------------------------------------------------------ token scoring
@dataclass
class TokenBatch:
    """Prompts left-padded to one width, completions right-padded after them: ``[pad.. prompt | completion ..pad]``.

    This is the layout the generation backend decodes in, with positions counting real tokens only, so a
    completion token's log-prob here is computed as at sampling time. ``targets``/``mask``: [B, C].
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def collate(cls, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                pad_id: int, device: torch.device | str) -> TokenBatch:
        """Pack token lists (every prompt non-empty) into one padded batch on ``device``."""
        if len(prompt_ids) != len(completion_ids) or not prompt_ids:
            raise ValueError("TokenBatch.collate: need as many prompts as completions, at least one")
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("TokenBatch.collate: a prompt has no tokens (nothing to predict its completion from)")
        width = max(len(p) for p in prompt_ids)
        length = max(max(len(c) for c in completion_ids), 1)
        batch = len(prompt_ids)
        input_ids = torch.full((batch, width + length), pad_id, dtype=torch.long)
        attention = torch.zeros((batch, width + length), dtype=torch.long)
        targets = torch.full((batch, length), pad_id, dtype=torch.long)
        mask = torch.zeros((batch, length), dtype=torch.float32)
        for row, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
            start = width - len(prompt)
            input_ids[row, start:width] = torch.as_tensor(list(prompt), dtype=torch.long)
            attention[row, start:width] = 1
            if completion:
                ids = torch.as_tensor(list(completion), dtype=torch.long)
                input_ids[row, width:width + len(completion)] = ids
                attention[row, width:width + len(completion)] = 1
                targets[row, :len(completion)] = ids
                mask[row, :len(completion)] = 1.0
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        return cls(input_ids.to(device), attention.to(device), positions.to(device), targets.to(device),
                   mask.to(device))


def _completion_logits(model: Any, batch: TokenBatch) -> torch.Tensor:
    """The logits ``[B, C, V]`` (the model's dtype) that predict each completion position of ``batch``.

    Rows with identical prompts (the G samples of one problem under one context) share one forward of that
    prompt: the distinct prompts run once with a KV cache, the cache is copied to every row that has them, and
    the completions run on top of it. The values are those of :func:`_padded_logits` (up to float rounding), and
    gradients flow through the shared prompt to every row; the prompt's cost is paid once per distinct prompt
    instead of once per row (``benchmarks/shared_prompts.py``). Without repeated prompts, or for a model whose
    forward returns no selectable cache, it is the one padded forward.
    """
    core = core_model(model)
    length = batch.targets.shape[1]
    width = batch.input_ids.shape[1] - length
    # A prompt is its tokens and its left padding.
    repeats = repeated_prompts(torch.cat((batch.input_ids[:, :width], batch.attention_mask[:, :width]), 1).tolist())
    if repeats is None:
        return _padded_logits(core, batch)
    first, inverse = (torch.tensor(index, device=batch.input_ids.device) for index in repeats)
    head = core(input_ids=batch.input_ids[first, :width], attention_mask=batch.attention_mask[first, :width],
                position_ids=batch.position_ids[first, :width], use_cache=True, logits_to_keep=1)
    logits = _SharedRows.apply(head.logits, inverse)  # the prompt's last position predicts completion token 0
    if length == 1:
        return logits
    layers = getattr(getattr(head, "past_key_values", None), "layers", None)
    if not layers or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        return _padded_logits(core, batch)
    for layer in layers:  # the cache's rows become the batch's rows (what Cache.batch_select_indices does)
        layer.keys, layer.values = _SharedRows.apply(layer.keys, inverse), _SharedRows.apply(layer.values, inverse)
    cache = head.past_key_values
    tail = core(input_ids=batch.input_ids[:, width:-1], attention_mask=batch.attention_mask[:, :-1],
                position_ids=batch.position_ids[:, width:-1], past_key_values=cache, use_cache=True).logits
    return torch.cat((logits, tail), dim=1)


class _SharedRows(torch.autograd.Function):
    """``x[rows]`` along dim 0 whose backward adds each row's gradient to its source in row order.

    Plain indexing's backward is a scatter-add that runs in parallel with atomic float adds on CPU, so the order
    of the sums, and the last bits of the gradient, changed from run to run (and sampling from the trained weights
    then diverged); this keeps a seeded run reproducible.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.sources = x.shape[0]
        ctx.rows = rows.tolist()
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.new_zeros((ctx.sources, *grad.shape[1:]))
        for row, source in enumerate(ctx.rows):  # a micro-batch's rows: a handful of elementwise adds
            total[source] += grad[row]
        return total, None


def _padded_logits(core: Any, batch: TokenBatch) -> torch.Tensor:
    """:func:`_completion_logits` as one forward of the causal LM ``core`` over every padded row."""
    # The last input token predicts nothing we score; only the logits over the completion span are computed.
    return core(input_ids=batch.input_ids[:, :-1], attention_mask=batch.attention_mask[:, :-1],
                position_ids=batch.position_ids[:, :-1], use_cache=False,
                logits_to_keep=batch.targets.shape[1]).logits


def token_logprobs(model: Any, batch: TokenBatch, *, temperature: float = 1.0, with_entropy: bool = False,
                   autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token ``log_softmax(logits / temperature)`` of ``batch.targets`` [B, C] (differentiable), and
    optionally the per-token entropy of that distribution [B, C] (detached). Padding positions hold junk:
    multiply by ``batch.mask``. ``autocast``: run the model's matmuls under bfloat16 autocast (the weights, LoRA
    included, stay in their own dtype; the log-softmax is float32 either way). Rows with identical prompts share
    one forward of the prompt (:func:`_completion_logits`).
    """
    with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = _completion_logits(model, batch)
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    normaliser = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, batch.targets[..., None]).squeeze(-1) - normaliser
    entropy = None
    if with_entropy:
        with torch.no_grad():
            detached = logits.detach()
            entropy = normaliser.detach() - (torch.softmax(detached, dim=-1) * detached).sum(-1)
    return logprobs, entropy


@dataclass
class TokenScores:
    """Per-rollout, per-completion-token log-probs (and entropies when asked), as plain lists."""

    logprobs: list[list[float]]
    entropy: list[list[float]] | None = None


class Piece(Protocol):
    """One (prompt, completion) token record the learner scores: a :class:`Rollout` or an episode's Turn."""

    prompt_ids: list[int]
    completion_ids: list[int]
    old_logprobs: list[float]



# ------------------------------------------------------------------------------------------- KL drift
def measure_drift(model: Any, pieces: Sequence[Any], *, base: Any, temperature: float = 1.0, pad_id: int = 0,
                  device: torch.device | str = "cpu", micro_batch_size: int = 8) -> dict[str, float]:
    """Per-token KL(current || base) and entropy of the current weights at every completion position of
    ``pieces`` (anything with ``prompt_ids`` and ``completion_ids``: rollouts, turns, generations).

    ``base`` is where the base distribution comes from: ``"adapter"`` (the same module with its PEFT adapter
    disabled: no second copy), a module (full fine-tuning's frozen copy), or ``None`` (nothing trained: the
    current weights are the base and the KL is exactly 0). Both distributions are ``log_softmax(logits /
    temperature)`` over the whole vocabulary, as the learner scores tokens. Returns ``kl`` (the exact KL
    ``sum_v p(v) (log p(v) - log q(v))`` averaged over positions; a position's float sum below 0 is clipped to 0),
    ``kl_exact`` (1.0), ``kl_k3`` (mean of ``exp(d) - d - 1``, ``d = log q - log p`` on the sampled tokens),
    ``kl_sampled`` (mean of ``-d``: the plain Monte-Carlo estimate, may be negative), ``entropy`` (mean exact
    entropy, nats), ``n_tokens``, ``n_sequences`` and ``mean_length``; NaN figures when no piece has tokens.
    """
    sums = {"kl": 0.0, "k3": 0.0, "sampled": 0.0, "entropy": 0.0, "tokens": 0.0}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(pieces), micro_batch_size):
            chunk = [p for p in pieces[start:start + micro_batch_size] if p.completion_ids]
            if not chunk:
                continue
            batch = TokenBatch.collate([p.prompt_ids for p in chunk], [p.completion_ids for p in chunk], pad_id,
                                       device)
            current = _position_logprobs(model, batch, temperature)
            if base == "adapter":
                with model.disable_adapter():
                    reference = _position_logprobs(model, batch, temperature)
            elif base is not None:
                reference = _position_logprobs(base, batch, temperature)
            else:
                reference = current
            _accumulate(sums, current, reference, batch)
    finally:
        model.train(was_training)
    tokens = sums["tokens"]
    nan = float("nan")
    return {"kl": sums["kl"] / tokens if tokens else nan, "kl_exact": 1.0,
            "kl_k3": sums["k3"] / tokens if tokens else nan, "kl_sampled": sums["sampled"] / tokens if tokens else nan,
            "entropy": sums["entropy"] / tokens if tokens else nan, "n_tokens": tokens,
            "n_sequences": float(len(pieces)), "mean_length": tokens / len(pieces) if pieces else nan}


def _position_logprobs(model: Any, batch: TokenBatch, temperature: float) -> torch.Tensor:
    """``log_softmax(logits / temperature)`` over the vocabulary at every completion position, [B, C, V] float32
    (the forward of :func:`token_logprobs`, keeping the whole distribution), no grad."""
    with torch.no_grad():
        logits = _completion_logits(model, batch).float()
        return torch.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)


def _accumulate(sums: dict[str, float], current: torch.Tensor, base: torch.Tensor, batch: TokenBatch) -> None:
    """Add one micro-batch's masked position sums (float64: many small terms) to ``sums``."""
    mask = batch.mask.double()
    targets = batch.targets[..., None]
    current_tokens = current.gather(-1, targets).squeeze(-1)
    base_tokens = base.gather(-1, targets).squeeze(-1)
    # Padding positions hold junk log-probs: zero them before exp (inf * 0 would be NaN).
    current_tokens, base_tokens = current_tokens.double() * mask, base_tokens.double() * mask
    sums["sampled"] += float((current_tokens - base_tokens).sum())
    sums["k3"] += float((kl_k3(current_tokens, base_tokens) * mask).sum())  # the same k3 the training step uses
    probs = current.exp()
    # 0 * log 0 = 0: a token with probability exactly 0 (log-prob -inf) contributes nothing.
    entropy = -torch.where(probs > 0, probs * current, 0.0).sum(-1)
    sums["entropy"] += float((entropy.double() * mask).sum())
    per_position = torch.where(probs > 0, probs * (current - base), 0.0).sum(-1).clamp(min=0.0)
    sums["kl"] += float((per_position.double() * mask).sum())
    sums["tokens"] += float(mask.sum())
