"""The slow learner: RL on the policy weights (a LoRA adapter by default) from scored rollouts.

Objective (CISPO, MiniMax-M1; the FST default): for each completion token,
``loss_t = -sg(min(rho_t, tau)) * A * log pi(y_t | prompt, y_<t)`` with ``rho_t = pi / pi_old``; token losses
are averaged per sequence, then over sequences. The importance weight is capped but never zeroes a token's
gradient (unlike PPO clipping). ``A`` is normalised once per group (problem) across all of its rollouts,
whichever context each used; groups whose rewards are all equal carry no signal and are dropped.

What is trained is an episode (:class:`~fst_env.agents.episodes.Episode`): every turn's completion tokens under
that turn's exact prompt, with one advantage per episode from its return (see :meth:`SlowLearner.step`). A
single-turn rollout is the one-turn episode of the same code.

Log-probs everywhere here are ``log_softmax(logits / temperature)`` in float32, the quantity the generation
backends return (:mod:`fst_env.backends.base`); give the learner the sampling temperature and the first
step's ratio is 1 up to float numerics.

This module holds the learner itself (:class:`LoraSettings`, :class:`SlowLearner` and the step's plan); the
loss formulas and advantages live in :mod:`fst_env.agents.losses` and the token scoring (:class:`TokenBatch`,
:func:`token_logprobs`, :func:`measure_drift`) in :mod:`fst_env.agents.tokens`, so each can be read and used
without the optimizer and adapter handling here. Every name those modules define publicly is re-exported here,
so ``from fst_env.agents.slow import X`` keeps working for all of them.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_model

from fst_env.agents.episodes import RETURN_RULES, Episode
from fst_env.agents.losses import (
    LOSSES,
    LossName,
    _reduce,
    cispo_loss,
    group_advantages,
    grpo_clip_loss,
    kl_k3,
    reinforce_loss,
)
from fst_env.agents.rollout import Rollout
from fst_env.agents.tokens import Piece, TokenBatch, TokenScores, measure_drift, token_logprobs
from fst_env.atomic import atomic_directory
from fst_env.models import Policy, seeded
from fst_env.peft_utils import has_adapters, is_peft

# Every public name of agents/losses.py and agents/tokens.py is imported above (and used here), so the import
# path of the time they lived in this module still works.
_STATE_FORMAT = 1


# ------------------------------------------------------------------------------------------------ the plan
@dataclass
class StepPlan:
    """What one slow step trains: ``episodes`` with their ``returns``, the indices of the ``trained`` ones (kept
    groups, some completion tokens), and one piece per trained turn: ``pieces[k]`` is that turn (its own
    ``prompt_ids`` as the sampler saw them: the env's text is prompt, never a target; its ``completion_ids`` are
    the targets), ``episode_of[k]`` its episode, ``advantages[k]`` the episode's advantage and ``weights[k]`` the
    token weight ``1 / (n_trained * episode tokens)``."""

    episodes: list[Episode]
    returns: list[float]
    trained: list[int]
    zero_variance_groups: int
    pieces: list[Any]
    episode_of: list[int]
    advantages: list[float]
    weights: list[float]


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
    return_rule: str = "sum"


class SlowLearner:
    """One optimizer step of policy-gradient RL per batch of scored rollouts (CISPO by default), on a LoRA adapter.

    Construction wraps ``policy.model`` with a fresh PEFT LoRA adapter (``lora=None``: full fine-tuning)
    and sets ``policy.model`` to the wrapped module, so a backend built on the same policy samples from the
    weights being trained. ``step(episodes)`` needs each episode's ``group`` and, on every turn, ``reward``,
    ``prompt_ids``, ``completion_ids`` and ``old_logprobs`` from the sampler (empty = on-policy, ratio 1); a
    :class:`Rollout` is taken as the one-turn episode.

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
    ``return_rule`` turns an episode's per-turn rewards into its return (``"sum"``, default, or ``"last"``).
    """

    def __init__(self, policy: Policy, *, lora: LoraSettings | None = DEFAULT_LORA, lr: float | None = None,
                 loss: LossName = "cispo", tau: float = 4.0, eps_low: float = 0.2,
                 eps_high: float = 0.2, kl_coef: float = 0.0, max_grad_norm: float | None = 1.0,
                 micro_batch_size: int = 8, temperature: float = 1.0, weight_decay: float = 0.0,
                 track_kl: bool | None = None, seed: int = 0, autocast: bool = False,
                 return_rule: str = "sum") -> None:
        if loss not in LOSSES:
            raise ValueError(f"SlowLearner: loss must be one of {list(LOSSES)}, got {loss!r}")
        if lora is not None:
            lora.validate()
        if return_rule not in RETURN_RULES:
            raise ValueError(f"SlowLearner: return_rule must be one of {list(RETURN_RULES)}, got {return_rule!r}")
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
        if has_adapters(policy.model):
            raise ValueError("SlowLearner: policy.model already carries PEFT adapters; build the learner on an "
                             "unwrapped policy (one learner per policy)")
        self.policy = policy
        self.settings = _Settings(
            lora=lora, lr=lr if lr is not None else (1e-5 if lora is not None else 1e-6), loss=loss, tau=tau,
            eps_low=eps_low, eps_high=eps_high, kl_coef=kl_coef, max_grad_norm=max_grad_norm,
            micro_batch_size=micro_batch_size, temperature=temperature, weight_decay=weight_decay,
            track_kl=(lora is not None or kl_coef > 0) if track_kl is None else bool(track_kl) or kl_coef > 0,
            seed=seed, autocast=bool(autocast), return_rule=return_rule)
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
    def _batches(self, pieces: Sequence[Piece]) -> list[list[int]]:
        """Indices of ``pieces`` in micro-batches: pieces with one prompt side by side (their prompt then runs
        once, see :func:`~fst_env.agents.tokens.token_logprobs`), prompts ordered by their pieces' longest total
        length (less padding)."""
        longest: dict[tuple[int, ...], int] = {}
        for piece in pieces:
            key = tuple(piece.prompt_ids)
            longest[key] = max(longest.get(key, 0), len(piece.prompt_ids) + len(piece.completion_ids))

        def position(i: int) -> tuple[int, tuple[int, ...], int]:
            key = tuple(pieces[i].prompt_ids)
            return longest[key], key, len(pieces[i].completion_ids)

        order = sorted(range(len(pieces)), key=position)
        size = self.settings.micro_batch_size
        return [order[i:i + size] for i in range(0, len(order), size)]

    def _collate(self, pieces: Sequence[Piece]) -> TokenBatch:
        pad = self.policy.tokenizer.pad_token_id
        return TokenBatch.collate([r.prompt_ids for r in pieces], [r.completion_ids for r in pieces],
                                  pad if pad is not None else 0, self.policy.device)

    def _reference_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        """Log-probs under the initial weights (adapter disabled, or the frozen copy), no grad."""
        with torch.no_grad():
            if self._reference is not None:
                return token_logprobs(self._reference, batch, temperature=self.settings.temperature,
                                      autocast=self.settings.autocast)[0]
            if not is_peft(self.model):
                raise RuntimeError("SlowLearner: no reference weights (full fine-tuning built with track_kl off)")
            with self.model.disable_adapter():
                return token_logprobs(self.model, batch, temperature=self.settings.temperature,
                                      autocast=self.settings.autocast)[0]

    def score(self, pieces: Sequence[Piece], *, reference: bool = False,
              with_entropy: bool = False) -> TokenScores:
        """Per-token log-probs of each piece's completion (a Rollout, a Turn: anything with ``prompt_ids`` and
        ``completion_ids``) under the current weights (``reference=True``: the initial weights), at the learner's
        temperature, plus entropies when ``with_entropy``. No gradient."""
        _check_pieces(pieces)
        if reference and with_entropy:
            raise ValueError("SlowLearner.score: with_entropy is for the current weights only")
        logprobs: list[list[float]] = [[] for _ in pieces]
        entropy: list[list[float]] | None = [[] for _ in pieces] if with_entropy else None
        model = self.model
        was_training = model.training
        model.eval()
        try:
            for indices in self._batches(pieces):
                chunk = [pieces[i] for i in indices]
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
                    n = len(pieces[i].completion_ids)
                    logprobs[i] = values[slot, :n].tolist()
                    if entropy is not None and ent is not None:
                        entropy[i] = ent[slot, :n].tolist()
        finally:
            model.train(was_training)
        return TokenScores(logprobs=logprobs, entropy=entropy)

    def reference_logprobs(self, pieces: Sequence[Piece]) -> list[list[float]]:
        """Per-token log-probs of each completion under the initial weights (for KL-drift metrics)."""
        return self.score(pieces, reference=True).logprobs

    # ------------------------------------------------------------------------------------------- drift
    def drift(self, pieces: Sequence[Piece], *, micro_batch_size: int | None = None) -> dict[str, float]:
        """KL(current || initial weights) and entropy per token on these pieces' completions: the one drift
        measurement (:func:`measure_drift`) every KL figure of a run comes from (the agent's held-out drift,
        :func:`fst_env.metrics.policy_kl_and_entropy`, :meth:`kl_to_reference`). The initial weights are the
        adapter-disabled module with LoRA, the frozen copy for full fine-tuning (RuntimeError without one)."""
        if self.settings.lora is None and self._reference is None:
            raise RuntimeError("SlowLearner: no reference weights (full fine-tuning built with track_kl off)")
        pad = self.policy.tokenizer.pad_token_id
        return measure_drift(self.model, pieces, base=self._reference if self.settings.lora is None else "adapter",
                             temperature=self.settings.temperature, pad_id=pad if pad is not None else 0,
                             device=self.policy.device,
                             micro_batch_size=micro_batch_size or self.settings.micro_batch_size)

    def kl_to_reference(self, pieces: Sequence[Piece]) -> float:
        """Token-mean k3 estimate of KL(current || initial) on these pieces' completions (:meth:`drift`'s k3)."""
        _check_pieces(pieces)
        if not any(p.completion_ids for p in pieces):
            return float("nan")
        return self.drift(pieces)["kl_k3"]

    # ---------------------------------------------------------------------------------------------- step
    def plan(self, episodes: Sequence[Episode | Rollout]) -> StepPlan:
        """What :meth:`step` trains on these episodes: returns, advantages and the pieces (see :class:`StepPlan`)."""
        episodes = _as_episodes(episodes)
        if not episodes:
            raise ValueError("SlowLearner.step: no rollouts")
        returns = [e.episode_return(self.settings.return_rule) for e in episodes]
        advantages, kept, zero_variance = group_advantages(returns, [e.group for e in episodes])
        train = [i for i, e in enumerate(episodes) if kept[i] and any(t.completion_ids for t in e.turns)]
        # Each trained turn is its own (prompt, completion) piece: the prompt ids the sampler conditioned on and
        # the ids it sampled, with its log-probs. One sequence per episode with env tokens masked would need the
        # re-rendered conversation to tokenize to exactly those ids, which chat templates do not promise
        # (decode -> encode is not the identity; templates strip or rewrite earlier assistant turns), so the
        # learner could train tokens the sampler never produced, under a prefix it never saw, against
        # old_logprobs that belong to other tokens. Pieces keep the ratio pi / pi_old on identical tokens and
        # contexts at the cost of re-reading each turn's prefix.
        pieces = [(i, turn) for i in train for turn in episodes[i].turns if turn.completion_ids]
        tokens = {i: sum(len(t.completion_ids) for t in episodes[i].turns) for i in train}
        # Weight 1 / (episodes * the episode's tokens): the weighted token sum is the mean over episodes of each
        # episode's token mean, however its tokens are split into turns and micro-batches.
        return StepPlan(episodes=episodes, returns=returns, trained=train, zero_variance_groups=zero_variance,
                        pieces=[turn for _, turn in pieces], episode_of=[i for i, _ in pieces],
                        advantages=[float(advantages[i]) for i, _ in pieces],
                        weights=[1.0 / (len(train) * tokens[i]) for i, _ in pieces])

    def step(self, episodes: Sequence[Episode | Rollout]) -> dict[str, float]:
        """One optimizer step on a batch of scored episodes (a :class:`Rollout` is a one-turn episode); returns
        metrics.

        The advantage rule: an episode's return is the sum of its per-turn rewards (``return_rule="sum"``, the
        default; ``"last"``: its final turn's reward), normalised once per group (the episodes sharing a problem
        key, across all contexts): one advantage per episode, shared by every turn of it. Zero-variance groups and
        episodes without completion tokens are dropped; when nothing is left, no step is taken (``skipped = 1``,
        step counter unchanged). Token losses are averaged over all of an episode's trained tokens (every turn
        together), then over episodes: for one-turn episodes, the per-sequence then per-batch mean. Gradients are
        accumulated over micro-batches of turns, so the loss equals the full-batch value.

        Metric keys: loss (policy_loss + kl_penalty), policy_loss, kl_penalty, kl, entropy, is_ratio_mean,
        is_ratio_max, is_capped_frac, ratio_mean / ratio_min / ratio_max (the importance ratio learner / sampler,
        ``exp(logp_learner - logp_sampler)``, over trained tokens), logprob_diff_mean (token mean of ``|logp_sampler
        - logp_learner|``: how far the sampler's numerics, e.g. a bf16 copy, drift from the learner's), grad_norm,
        lr, step, skipped, n_rollouts (= n_episodes), n_episodes, n_turns, n_pieces (turns trained), n_trained
        (episodes trained), n_groups, n_zero_variance_groups, n_tokens, reward_mean (mean return), time_forward_s,
        time_backward_s, time_optimizer_s, time_total_s. Token metrics are token-weighted means over trained
        tokens (kl NaN when not tracked; token metrics NaN when the step was skipped).
        """
        start = time.perf_counter()
        settings = self.settings
        plan = self.plan(episodes)
        episodes, returns, train, pieces = plan.episodes, plan.returns, plan.trained, plan.pieces
        groups = [e.group for e in episodes]
        zero_variance = plan.zero_variance_groups
        weights = torch.tensor(plan.weights, dtype=torch.float32)
        piece_advantages = torch.tensor(plan.advantages, dtype=torch.float32)
        metrics: dict[str, float] = {
            "n_rollouts": float(len(episodes)), "n_episodes": float(len(episodes)),
            "n_turns": float(sum(len(e.turns) for e in episodes)), "n_pieces": float(len(pieces)),
            "n_trained": float(len(train)), "n_groups": float(len(set(groups))),
            "n_zero_variance_groups": float(zero_variance), "reward_mean": float(sum(returns) / len(returns)),
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
        turns = pieces
        try:
            self.optimizer.zero_grad(set_to_none=True)
            for indices in self._batches(turns):
                tick = _clock(device)
                chunk = [turns[i] for i in indices]
                batch = self._collate(chunk)
                adv = piece_advantages[indices].to(batch.mask.device)
                row_weights = weights[indices].to(batch.mask.device)
                logprobs, entropy = token_logprobs(model, batch, temperature=settings.temperature,
                                                   autocast=settings.autocast,
                                                   with_entropy=True)
                old = _old_logprobs(chunk, logprobs)
                mask = batch.mask
                if settings.loss == "cispo":
                    policy_loss = cispo_loss(logprobs, old, adv, mask, tau=settings.tau, row_weights=row_weights)
                elif settings.loss == "grpo_clip":
                    policy_loss = grpo_clip_loss(logprobs, old, adv, mask, settings.eps_low, settings.eps_high,
                                                 row_weights=row_weights)
                else:
                    policy_loss = reinforce_loss(logprobs, adv, mask, row_weights=row_weights)
                loss = policy_loss  # already this micro-batch's share of the batch value (row weights)
                if settings.track_kl:
                    # The k3 estimate measure_drift reports, computed in-graph here because the penalty needs it.
                    token_kl = kl_k3(logprobs, self._reference_logprobs(batch))
                    kl_loss = _reduce(token_kl, mask, row_weights)
                    sums["kl"] += float((token_kl.detach() * mask).sum())
                    sums["kl_loss"] += float(kl_loss.detach())
                    if settings.kl_coef > 0:
                        loss = loss + settings.kl_coef * kl_loss
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
                    sums["policy"] += float(policy_loss.detach())
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


def _old_logprobs(chunk: Sequence[Piece], current: torch.Tensor) -> torch.Tensor:
    """Sampler log-probs padded to ``current``'s shape; a piece without them is on-policy (current, detached)."""
    old = current.detach().clone()
    for row, piece in enumerate(chunk):
        if piece.old_logprobs:
            old[row, :len(piece.old_logprobs)] = torch.as_tensor(piece.old_logprobs, dtype=old.dtype)
    return old


def _check_pieces(pieces: Sequence[Piece]) -> None:
    """Clear errors for token records the learner cannot score (caller bugs, not model output)."""
    for index, piece in enumerate(pieces):
        if not all(hasattr(piece, name) for name in ("prompt_ids", "completion_ids", "old_logprobs")):
            raise TypeError(f"SlowLearner: piece {index} must be a Rollout or a Turn (prompt_ids, completion_ids, "
                            f"old_logprobs), got {type(piece).__name__}")
        if not piece.prompt_ids:
            raise ValueError(f"SlowLearner: piece {index} has no prompt_ids")
        if piece.old_logprobs and len(piece.old_logprobs) != len(piece.completion_ids):
            raise ValueError(f"SlowLearner: piece {index} has {len(piece.old_logprobs)} old_logprobs for "
                             f"{len(piece.completion_ids)} tokens")


def _as_episodes(items: Sequence[Episode | Rollout]) -> list[Episode]:
    """The step's input as episodes (a Rollout is the one-turn episode), with clear errors for caller bugs."""
    episodes: list[Episode] = []
    for index, item in enumerate(items):
        if isinstance(item, Rollout):
            item = Episode.from_rollout(item)
        elif not isinstance(item, Episode):
            raise TypeError(f"SlowLearner: rollout {index} must be a Rollout or an Episode, got {type(item).__name__}")
        for k, turn in enumerate(item.turns, start=1):
            where = f"rollout {index} (group {item.group!r}" + (f", turn {k})" if len(item.turns) > 1 else ")")
            if not turn.prompt_ids:
                raise ValueError(f"SlowLearner: {where} has no prompt_ids")
            if turn.old_logprobs and len(turn.old_logprobs) != len(turn.completion_ids):
                raise ValueError(f"SlowLearner: {where} has {len(turn.old_logprobs)} old_logprobs for "
                                 f"{len(turn.completion_ids)} tokens")
            if isinstance(turn.reward, bool) or not isinstance(turn.reward, (int, float)) \
                    or not math.isfinite(turn.reward):
                raise ValueError(f"SlowLearner: {where} has reward {turn.reward!r}; rewards must be finite numbers")
        episodes.append(item)
    return episodes
