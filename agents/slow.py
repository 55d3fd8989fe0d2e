"""The slow learner: RL on the policy weights (a LoRA adapter by default) from scored rollouts.

Objective (CISPO, MiniMax-M1; the FST default): for each completion token,
``loss_t = -sg(min(rho_t, tau)) * A * log pi(y_t | prompt, y_<t)`` with ``rho_t = pi / pi_old``; token losses
are averaged per sequence, then over sequences. The importance weight is capped but never zeroes a token's
gradient (unlike PPO clipping). ``A`` is normalised once per group (problem) across all of its rollouts,
whichever context each used; groups whose rewards are all equal carry no signal and are dropped.

Log-probs everywhere here are ``log_softmax(logits / temperature)`` in float32, the quantity the generation
backends return (:mod:`fst_env.backends.base`); give the learner the sampling temperature and the first
step's ratio is 1 up to float numerics.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, load_model, save_model

from fst_env.agents.rollout import Rollout
from fst_env.backends.hf import core_model
from fst_env.models import Policy, atomic_directory, seeded

LossName = Literal["cispo", "grpo_clip", "reinforce"]
LOSSES: tuple[str, ...] = ("cispo", "grpo_clip", "reinforce")

_STATE_FORMAT = 1


# ------------------------------------------------------------------------------------------------ losses
def _sequence_mean(token_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's real tokens (a sequence with none gives 0)."""
    return (token_values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def cispo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
               mask: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """CISPO: ``-sg(min(rho, tau)) * A * logprobs`` per token, averaged per sequence, then over sequences.

    Shapes: ``logprobs``, ``old_logprobs``, ``mask``: [B, T]; ``advantages``: [B]. ``rho`` is computed from
    detached log-probs, so the gradient is ``-min(rho, tau) * A * grad log pi`` for every token.
    """
    mask = mask.to(logprobs.dtype)
    weight = torch.exp(logprobs.detach() - old_logprobs).clamp(max=tau)
    token_loss = -weight * advantages[:, None] * logprobs
    return _sequence_mean(token_loss, mask).mean()


def grpo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                   mask: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.2) -> torch.Tensor:
    """PPO/GRPO clipped surrogate ``-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)``, sequence- then batch-mean.

    Tokens whose clipped term is the minimum get no gradient (the trust region CISPO avoids).
    """
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    token_loss = -torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    return _sequence_mean(token_loss, mask).mean()


def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """On-policy REINFORCE with a baseline: ``-A * logprobs`` per token, sequence- then batch-mean."""
    mask = mask.to(logprobs.dtype)
    return _sequence_mean(-advantages[:, None] * logprobs, mask).mean()


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


def token_logprobs(model: Any, batch: TokenBatch, *, temperature: float = 1.0, with_entropy: bool = False,
                   autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token ``log_softmax(logits / temperature)`` of ``batch.targets`` [B, C] (differentiable), and
    optionally the per-token entropy of that distribution [B, C] (detached). Padding positions hold junk:
    multiply by ``batch.mask``. ``autocast``: run the model's matmuls under bfloat16 autocast (the weights, LoRA
    included, stay in their own dtype; the log-softmax is float32 either way).
    """
    length = batch.targets.shape[1]
    device_type = batch.input_ids.device.type
    # The last input token predicts nothing we score; only the logits over the completion span are computed.
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
        logits = core_model(model)(input_ids=batch.input_ids[:, :-1], attention_mask=batch.attention_mask[:, :-1],
                                   position_ids=batch.position_ids[:, :-1], use_cache=False,
                                   logits_to_keep=length).logits
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


# ------------------------------------------------------------------------------------------------ learner
@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter shape: ``rank``, ``alpha`` (scale = alpha / rank), ``dropout``, ``target_modules``.

    ``target_modules="all-linear"`` adapts every linear layer but the output head (PEFT's rule).
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"

    def validate(self) -> LoraSettings:
        """Raise ValueError on a bad field; returns ``self``."""
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoraSettings.rank must be an int >= 1, got {self.rank!r}")
        # Type first: a string or bool from a config file must be one clear line, not a TypeError on compare.
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) \
                or not self.alpha > 0:
            raise ValueError(f"LoraSettings.alpha must be a finite number > 0, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"LoraSettings.dropout must be a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.target_modules, (str, tuple, list)):
            raise ValueError(f"LoraSettings.target_modules must be 'all-linear' or module names, "
                             f"got {self.target_modules!r}")
        if isinstance(self.target_modules, str):
            if not self.target_modules:
                raise ValueError("LoraSettings.target_modules must not be empty")
        elif not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ValueError(f"LoraSettings.target_modules must be 'all-linear' or module names, "
                             f"got {self.target_modules!r}")
        return self


#: The default adapter: rank 16, alpha 32, no dropout, every linear layer but the output head.
DEFAULT_LORA = LoraSettings()


@dataclass
class _Settings:
    lora: LoraSettings | None
    lr: float
    loss: str
    tau: float
    eps_low: float
    eps_high: float
    kl_coef: float
    max_grad_norm: float | None
    micro_batch_size: int
    temperature: float
    weight_decay: float
    track_kl: bool
    seed: int
    autocast: bool = False


class SlowLearner:
    """One optimizer step of policy-gradient RL per batch of scored rollouts (CISPO by default), on a LoRA adapter.

    Construction wraps ``policy.model`` with a fresh PEFT LoRA adapter (``lora=None``: full fine-tuning)
    and sets ``policy.model`` to the wrapped module, so a backend built on the same policy samples from the
    weights being trained. ``step(rollouts)`` needs each rollout's ``group``, ``reward``, ``prompt_ids`` and
    ``completion_ids``, and ``old_logprobs`` from the sampler (empty = on-policy, ratio 1).

    ``temperature`` must be the sampling temperature (1.0 for greedy-sampled data). ``kl_coef > 0`` adds
    ``kl_coef * k3-KL`` to the initial weights (with LoRA, the adapter-disabled model: no second copy; for
    full fine-tuning, a frozen copy is kept). ``track_kl`` (default: on with LoRA, where it is one extra
    no-grad forward) reports that KL even when it is not penalised. ``lr`` (AdamW) defaults to 1e-5 with
    LoRA and 1e-6 for full fine-tuning. ``loss``: ``"cispo"`` (cap ``tau``), ``"grpo_clip"`` (``eps_low``,
    ``eps_high``) or ``"reinforce"``. ``micro_batch_size`` rollouts go through each forward/backward (the
    gradient is accumulated, so it does not change the update); ``max_grad_norm=None`` disables clipping;
    ``seed`` fixes the LoRA initialisation. ``autocast=True`` runs the learner's forward passes under bfloat16
    autocast with the LoRA weights, gradients and optimizer state kept in float32 (~2x faster forward + backward
    on CPUs with AVX512-BF16/AMX for a SmolLM2-shaped random-weight model). Off by default: the float32 learner
    stays the reference the importance ratio is measured against until its effect on trained runs is measured.
    """

    def __init__(self, policy: Policy, *, lora: LoraSettings | None = DEFAULT_LORA, lr: float | None = None,
                 loss: LossName = "cispo", tau: float = 4.0, eps_low: float = 0.2,
                 eps_high: float = 0.2, kl_coef: float = 0.0, max_grad_norm: float | None = 1.0,
                 micro_batch_size: int = 8, temperature: float = 1.0, weight_decay: float = 0.0,
                 track_kl: bool | None = None, seed: int = 0, autocast: bool = False) -> None:
        if loss not in LOSSES:
            raise ValueError(f"SlowLearner: loss must be one of {list(LOSSES)}, got {loss!r}")
        if lora is not None:
            lora.validate()
        checks = {"tau": tau > 0, "eps_low": 0 <= eps_low < 1, "eps_high": eps_high >= 0, "kl_coef": kl_coef >= 0,
                  "micro_batch_size": isinstance(micro_batch_size, int) and micro_batch_size >= 1,
                  "temperature": temperature > 0, "weight_decay": weight_decay >= 0,
                  "max_grad_norm": max_grad_norm is None or max_grad_norm > 0,
                  "lr": lr is None or (math.isfinite(lr) and lr > 0)}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = {"tau": tau, "eps_low": eps_low, "eps_high": eps_high, "kl_coef": kl_coef, "lr": lr,
                      "micro_batch_size": micro_batch_size, "temperature": temperature,
                      "weight_decay": weight_decay, "max_grad_norm": max_grad_norm}
            raise ValueError("SlowLearner: out of range: " + ", ".join(f"{n}={values[n]!r}" for n in bad))
        if hasattr(policy.model, "peft_config"):
            raise ValueError("SlowLearner: policy.model already carries PEFT adapters; build the learner on an "
                             "unwrapped policy (one learner per policy)")
        self.policy = policy
        self.settings = _Settings(
            lora=lora, lr=lr if lr is not None else (1e-5 if lora is not None else 1e-6), loss=loss, tau=tau,
            eps_low=eps_low, eps_high=eps_high, kl_coef=kl_coef, max_grad_norm=max_grad_norm,
            micro_batch_size=micro_batch_size, temperature=temperature, weight_decay=weight_decay,
            track_kl=(lora is not None or kl_coef > 0) if track_kl is None else bool(track_kl) or kl_coef > 0,
            seed=seed, autocast=bool(autocast))
        self._reference: Any = None
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=lora.target_modules if isinstance(lora.target_modules, str)
                                else list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
            with seeded(seed):  # LoRA A matrices are drawn at random: fix them
                policy.model = get_peft_model(policy.model, config)
        elif self.settings.track_kl:
            self._reference = copy.deepcopy(policy.model).eval().requires_grad_(False)
        self._parameters = [p for p in policy.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self._parameters, lr=self.settings.lr,
                                           weight_decay=self.settings.weight_decay)
        self.step_count = 0

    @property
    def model(self) -> Any:
        """The module being trained (the PEFT wrapper with LoRA); the same object as ``policy.model``."""
        return self.policy.model

    # ------------------------------------------------------------------------------------------- scoring
    def _batches(self, rollouts: Sequence[Rollout]) -> list[list[int]]:
        """Indices of ``rollouts`` in micro-batches of similar total length (less padding)."""
        order = sorted(range(len(rollouts)),
                       key=lambda i: len(rollouts[i].prompt_ids) + len(rollouts[i].completion_ids))
        size = self.settings.micro_batch_size
        return [order[i:i + size] for i in range(0, len(order), size)]

    def _collate(self, rollouts: Sequence[Rollout]) -> TokenBatch:
        pad = self.policy.tokenizer.pad_token_id
        return TokenBatch.collate([r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts],
                                  pad if pad is not None else 0, self.policy.device)

    def _reference_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        """Log-probs under the initial weights (adapter disabled, or the frozen copy), no grad."""
        with torch.no_grad():
            if self._reference is not None:
                return token_logprobs(self._reference, batch, temperature=self.settings.temperature,
                                      autocast=self.settings.autocast)[0]
            if not hasattr(self.model, "disable_adapter"):
                raise RuntimeError("SlowLearner: no reference weights (full fine-tuning built with track_kl off)")
            with self.model.disable_adapter():
                return token_logprobs(self.model, batch, temperature=self.settings.temperature,
                                      autocast=self.settings.autocast)[0]

    def score(self, rollouts: Sequence[Rollout], *, reference: bool = False,
              with_entropy: bool = False) -> TokenScores:
        """Per-token log-probs of each rollout's completion under the current weights (``reference=True``: the
        initial weights), at the learner's temperature, plus entropies when ``with_entropy``. No gradient."""
        _check_rollouts(rollouts)
        if reference and with_entropy:
            raise ValueError("SlowLearner.score: with_entropy is for the current weights only")
        logprobs: list[list[float]] = [[] for _ in rollouts]
        entropy: list[list[float]] | None = [[] for _ in rollouts] if with_entropy else None
        model = self.model
        was_training = model.training
        model.eval()
        try:
            for indices in self._batches(rollouts):
                chunk = [rollouts[i] for i in indices]
                if not any(r.completion_ids for r in chunk):
                    continue
                batch = self._collate(chunk)
                with torch.no_grad():
                    if reference:
                        values, ent = self._reference_logprobs(batch), None
                    else:
                        values, ent = token_logprobs(model, batch, temperature=self.settings.temperature,
                                                     autocast=self.settings.autocast,
                                                     with_entropy=with_entropy)
                for slot, i in enumerate(indices):
                    n = len(rollouts[i].completion_ids)
                    logprobs[i] = values[slot, :n].tolist()
                    if entropy is not None and ent is not None:
                        entropy[i] = ent[slot, :n].tolist()
        finally:
            model.train(was_training)
        return TokenScores(logprobs=logprobs, entropy=entropy)

    def reference_logprobs(self, rollouts: Sequence[Rollout]) -> list[list[float]]:
        """Per-token log-probs of each completion under the initial weights (for KL-drift metrics)."""
        return self.score(rollouts, reference=True).logprobs

    def kl_to_reference(self, rollouts: Sequence[Rollout]) -> float:
        """Token-mean k3 estimate of KL(current || initial) on these rollouts' completions."""
        current = self.score(rollouts).logprobs
        reference = self.reference_logprobs(rollouts)
        total, count = 0.0, 0
        for cur, ref in zip(current, reference, strict=True):
            if cur:
                total += float(kl_k3(torch.tensor(cur), torch.tensor(ref)).sum())
                count += len(cur)
        return total / count if count else float("nan")

    # ---------------------------------------------------------------------------------------------- step
    def step(self, rollouts: Sequence[Rollout]) -> dict[str, float]:
        """One optimizer step on a batch of scored rollouts; returns metrics.

        Advantages are normalised per group over all rollouts given; zero-variance groups and empty
        completions are dropped. When nothing is left, no step is taken (``skipped = 1``, step counter
        unchanged). Gradients are accumulated over micro-batches so the loss equals the full-batch mean over
        sequences. Metric keys: loss (policy_loss + kl_penalty), policy_loss, kl_penalty, kl, entropy,
        is_ratio_mean, is_ratio_max, is_capped_frac, ratio_mean / ratio_min / ratio_max (the importance ratio
        learner / sampler, ``exp(logp_learner - logp_sampler)``, over trained tokens), logprob_diff_mean (token
        mean of ``|logp_sampler - logp_learner|``: how far the sampler's numerics, e.g. a bf16 copy, drift from
        the learner's), grad_norm, lr, step, skipped, n_rollouts, n_trained,
        n_groups, n_zero_variance_groups, n_tokens, reward_mean, time_forward_s, time_backward_s,
        time_optimizer_s, time_total_s. Token metrics are token-weighted means over trained tokens (kl NaN when
        not tracked; token metrics NaN when the step was skipped).
        """
        start = time.perf_counter()
        _check_rollouts(rollouts)
        if not rollouts:
            raise ValueError("SlowLearner.step: no rollouts")
        settings = self.settings
        groups = [r.group for r in rollouts]
        advantages, kept, zero_variance = group_advantages([r.reward for r in rollouts], groups)
        train = [i for i in range(len(rollouts)) if kept[i] and rollouts[i].completion_ids]
        metrics: dict[str, float] = {
            "n_rollouts": float(len(rollouts)), "n_trained": float(len(train)), "n_groups": float(len(set(groups))),
            "n_zero_variance_groups": float(zero_variance), "reward_mean": float(sum(r.reward for r in rollouts)
                                                                                  / len(rollouts)),
            "lr": settings.lr,
        }
        if not train:
            nan = float("nan")
            metrics.update(loss=0.0, policy_loss=0.0, kl_penalty=0.0, kl=nan, entropy=nan, is_ratio_mean=nan,
                           is_ratio_max=nan, is_capped_frac=nan, ratio_mean=nan, ratio_min=nan, ratio_max=nan,
                           logprob_diff_mean=nan, grad_norm=0.0, n_tokens=0.0, skipped=1.0,
                           step=float(self.step_count), time_forward_s=0.0, time_backward_s=0.0,
                           time_optimizer_s=0.0, time_total_s=time.perf_counter() - start)
            return metrics

        model = self.model
        device = self.policy.device
        was_training = model.training
        model.train()
        sums = {"policy": 0.0, "kl_loss": 0.0, "kl": 0.0, "entropy": 0.0, "ratio": 0.0, "capped": 0.0, "tokens": 0.0,
                "logprob_diff": 0.0}
        ratio_max, ratio_min = 0.0, float("inf")
        forward_s = backward_s = 0.0
        subset = [rollouts[i] for i in train]
        try:
            self.optimizer.zero_grad(set_to_none=True)
            for indices in self._batches(subset):
                tick = _clock(device)
                chunk = [subset[i] for i in indices]
                batch = self._collate(chunk)
                adv = advantages[[train[i] for i in indices]].to(batch.mask.device)
                logprobs, entropy = token_logprobs(model, batch, temperature=settings.temperature,
                                                   autocast=settings.autocast,
                                                   with_entropy=True)
                old = _old_logprobs(chunk, logprobs)
                mask = batch.mask
                if settings.loss == "cispo":
                    policy_loss = cispo_loss(logprobs, old, adv, mask, tau=settings.tau)
                elif settings.loss == "grpo_clip":
                    policy_loss = grpo_clip_loss(logprobs, old, adv, mask, settings.eps_low, settings.eps_high)
                else:
                    policy_loss = reinforce_loss(logprobs, adv, mask)
                # Each micro-batch mean is weighted by its share of sequences: the sum is the batch mean.
                share = len(chunk) / len(subset)
                loss = policy_loss * share
                if settings.track_kl:
                    token_kl = kl_k3(logprobs, self._reference_logprobs(batch))
                    kl_loss = _sequence_mean(token_kl, mask).mean()
                    sums["kl"] += float((token_kl.detach() * mask).sum())
                    sums["kl_loss"] += float(kl_loss.detach()) * share
                    if settings.kl_coef > 0:
                        loss = loss + settings.kl_coef * kl_loss * share
                with torch.no_grad():
                    # The importance weight is learner / sampler: old holds the sampler's own log-probs.
                    ratio = torch.exp(logprobs.detach() - old)
                    sums["ratio"] += float((ratio * mask).sum())
                    ratio_max = max(ratio_max, float((ratio * mask).max()))
                    ratio_min = min(ratio_min, float(ratio.masked_fill(mask == 0, float("inf")).min()))
                    sums["logprob_diff"] += float(((old - logprobs.detach()).abs() * mask).sum())
                    sums["capped"] += float((_capped(ratio, adv, settings) * mask).sum())
                    sums["entropy"] += float((entropy * mask).sum()) if entropy is not None else 0.0
                    sums["tokens"] += float(mask.sum())
                    sums["policy"] += float(policy_loss.detach()) * share
                now = _clock(device)
                forward_s += now - tick
                tick = now
                loss.backward()
                backward_s += _clock(device) - tick
            tick = _clock(device)
            limit = settings.max_grad_norm if settings.max_grad_norm is not None else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self._parameters, limit))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            optimizer_s = _clock(device) - tick
        finally:
            model.train(was_training)
        self.step_count += 1
        tokens = sums["tokens"]
        metrics.update(
            loss=sums["policy"] + settings.kl_coef * sums["kl_loss"], policy_loss=sums["policy"],
            kl_penalty=settings.kl_coef * sums["kl_loss"],
            kl=sums["kl"] / tokens if settings.track_kl else float("nan"), entropy=sums["entropy"] / tokens,
            is_ratio_mean=sums["ratio"] / tokens, is_ratio_max=ratio_max, is_capped_frac=sums["capped"] / tokens,
            ratio_mean=sums["ratio"] / tokens, ratio_min=ratio_min, ratio_max=ratio_max,
            logprob_diff_mean=sums["logprob_diff"] / tokens,
            grad_norm=grad_norm, n_tokens=tokens, skipped=0.0, step=float(self.step_count),
            time_forward_s=forward_s, time_backward_s=backward_s, time_optimizer_s=optimizer_s,
            time_total_s=time.perf_counter() - start,
        )
        return metrics

    # ------------------------------------------------------------------------------------ checkpointing
    def _weights(self) -> dict[str, torch.Tensor]:
        if self.settings.lora is not None:
            from peft import get_peft_model_state_dict

            return get_peft_model_state_dict(self.model)
        return self.model.state_dict()

    def _settings_dict(self) -> dict[str, Any]:
        data = asdict(self.settings)
        return data

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copied tensors): trained weights (the adapter, or all weights), optimizer state, step."""
        return {"format": _STATE_FORMAT, "step": self.step_count, "settings": self._settings_dict(),
                "weights": {k: v.detach().clone() for k, v in self._weights().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def _check_compatible(self, settings: dict[str, Any]) -> None:
        mine = self._settings_dict()
        if (settings.get("lora") is None) != (mine["lora"] is None) or (
                mine["lora"] is not None and settings["lora"]["rank"] != mine["lora"]["rank"]):
            raise ValueError(f"SlowLearner.load_state_dict: checkpoint trains lora={settings.get('lora')}, "
                             f"this learner lora={mine['lora']}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the learner must have the same LoRA shape)."""
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"SlowLearner.load_state_dict: unknown format {state.get('format')!r}")
        self._check_compatible(state["settings"])
        self._load_weights(state["weights"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.step_count = int(state["step"])

    def _load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        if self.settings.lora is not None:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.model, weights)
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"SlowLearner: adapter weights do not fit: {result.unexpected_keys[:5]}")
        else:
            self.model.load_state_dict(weights)

    def save(self, directory: str | Path) -> Path:
        """Write the learner atomically: ``adapter/`` (PEFT format, servable by vLLM) or ``weights.safetensors``,
        ``optimizer.pt`` and ``learner.json`` (step, settings)."""

        def write(tmp: Path) -> None:
            if self.settings.lora is not None:
                self.model.save_pretrained(tmp / "adapter")
            else:
                save_model(self.model, str(tmp / "weights.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            meta = {"format": _STATE_FORMAT, "step": self.step_count, "settings": self._settings_dict()}
            (tmp / "learner.json").write_text(json.dumps(meta, indent=2))

        return atomic_directory(directory, write)

    def load(self, directory: str | Path) -> None:
        """Restore what :meth:`save` wrote (the learner must have the same LoRA shape)."""
        directory = Path(directory)
        meta = json.loads((directory / "learner.json").read_text())
        if meta.get("format") != _STATE_FORMAT:
            raise ValueError(f"SlowLearner.load: unknown format {meta.get('format')!r} in {directory}")
        self._check_compatible(meta["settings"])
        if self.settings.lora is not None:
            self._load_weights(load_file(str(directory / "adapter" / "adapter_model.safetensors")))
        else:
            load_model(self.model, str(directory / "weights.safetensors"))
        optimizer_state = torch.load(directory / "optimizer.pt", map_location=self.policy.device, weights_only=True)
        self.optimizer.load_state_dict(optimizer_state)
        self.step_count = int(meta["step"])


def _capped(ratio: torch.Tensor, advantages: torch.Tensor, settings: _Settings) -> torch.Tensor:
    """1.0 where the loss limits this token's importance weight: above tau (CISPO), clipped (GRPO)."""
    if settings.loss == "cispo":
        return (ratio > settings.tau).float()
    if settings.loss == "grpo_clip":
        adv = advantages[:, None]
        return (((adv > 0) & (ratio > 1 + settings.eps_high)) | ((adv < 0) & (ratio < 1 - settings.eps_low))).float()
    return torch.zeros_like(ratio)


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device has finished its queued work (CUDA kernels run asynchronously, so
    without the sync the backward pass would be billed to whatever synchronises next)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _old_logprobs(chunk: Sequence[Rollout], current: torch.Tensor) -> torch.Tensor:
    """Sampler log-probs padded to ``current``'s shape; a rollout without them is on-policy (current, detached)."""
    old = current.detach().clone()
    for row, rollout in enumerate(chunk):
        if rollout.old_logprobs:
            old[row, :len(rollout.old_logprobs)] = torch.as_tensor(rollout.old_logprobs, dtype=old.dtype)
    return old


def _check_rollouts(rollouts: Sequence[Rollout]) -> None:
    """Clear errors for records the learner cannot use (caller bugs, not model output)."""
    for index, rollout in enumerate(rollouts):
        if not isinstance(rollout, Rollout):
            raise TypeError(f"SlowLearner: rollout {index} must be a Rollout, got {type(rollout).__name__}")
        if not rollout.prompt_ids:
            raise ValueError(f"SlowLearner: rollout {index} (group {rollout.group!r}) has no prompt_ids")
        if rollout.old_logprobs and len(rollout.old_logprobs) != len(rollout.completion_ids):
            raise ValueError(f"SlowLearner: rollout {index} (group {rollout.group!r}) has "
                             f"{len(rollout.old_logprobs)} old_logprobs for {len(rollout.completion_ids)} tokens")
        if not isinstance(rollout.reward, (int, float)) or not math.isfinite(rollout.reward):
            raise ValueError(f"SlowLearner: rollout {index} (group {rollout.group!r}) has reward "
                             f"{rollout.reward!r}; rewards must be finite numbers")
