"""Fast in-process generation: a written-out Llama-family decoder over a preallocated KV cache and merged weights.

:class:`StaticCacheBackend` (backend name ``"fast"``) samples from a *copy* of the policy's weights, with any
active LoRA adapter merged in once (``W + B @ A * scale``) and cast to the sampling dtype: bfloat16 where the
hardware has native bf16 matmuls (CUDA with bf16, CPUs with AVX512-BF16 or AMX), float32 otherwise
(:func:`fst_env.models.sampling_dtype`). Per generated token it runs one fused QKV matmul, one fused gate/up
matmul and a handful of other ops per layer on fixed, preallocated buffers; there is no cache object, no mask
rebuilt from scratch and no per-step module dispatch, which is where transformers spends most of a decode step
on a small model.

Why a copy is safe: the copy is keyed on the identity and in-place version counter of every parameter of
``policy.model`` (and on the active adapter), so any change to the weights (an optimizer step, a loaded
checkpoint, a new PEFT wrapper, ``set_adapter``) triggers a re-merge before the next ``generate``;
``update_weights()`` re-merges at once (the agent calls it after each slow step). The merged copy is never
updated per step.

Log-probs follow :mod:`fst_env.backends.base` (``log_softmax(logits / T)`` of each sampled token, in float32 from
the sampler's logits). In float32 they match :class:`~fst_env.backends.hf.HFBackend` and the learner up to float
rounding, so the first importance ratio is 1; in bfloat16 the learner (float32) sees ratios spread around 1,
which the slow learner logs (``slow/ratio_*``) and CISPO caps.

Supported models: Llama-style decoders (``llama``, ``mistral`` and ``qwen2`` configs with SiLU MLPs and no
sliding window); :func:`unsupported_reason` says why another is not, and :func:`fst_env.backends.make_backend`
falls back to ``HFBackend`` for it. The same code runs on CUDA (float32 or bfloat16).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fst_env.backends.base import Generation, Message, SamplingParams, repeated_prompts
from fst_env.backends.hf import (
    _stop_hit,
    encode_prompts,
    finished_generations,
    generate_in_chunks,
    left_padded,
    select_adapter,
    stop_token_ids,
)
from fst_env.models import Policy, configure_threads, sampling_dtype
from fst_env.peft_utils import core_model, is_peft

#: Model types whose decoder layer is the Llama one (pre-norm RMSNorm, rotary GQA attention, SiLU-gated MLP).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def unsupported_reason(model: Any) -> str | None:
    """Why :class:`StaticCacheBackend` cannot run ``model`` (a transformers or PEFT module), or None if it can."""
    core = core_model(model)
    config = getattr(core, "config", None)
    if config is None:
        return "the model has no transformers config"
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {list(SUPPORTED_MODEL_TYPES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} (only silu)"
    if model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
        return "a sliding attention window"
    if model_type == "qwen2" and getattr(config, "use_sliding_window", False):
        return "a sliding attention window"
    rope = getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope"):
        return "rope scaling that changes with the sequence length"
    inner = getattr(core, "model", None)
    layers = getattr(inner, "layers", None)
    if inner is None or layers is None or not hasattr(inner, "rotary_emb") or not hasattr(core, "lm_head"):
        return "the module layout is not LlamaForCausalLM's (model.layers, model.rotary_emb, lm_head)"
    for layer in layers:
        for name in _PROJECTIONS:
            owner = layer.self_attn if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else layer.mlp
            module = getattr(owner, name, None)
            if module is None:
                return f"a decoder layer has no {name}"
            reason = _linear_reason(module)
            if reason:
                return f"{name}: {reason}"
    return _linear_reason(core.lm_head)


def _linear_reason(module: Any) -> str | None:
    """Why ``module`` is not a plain linear layer or a plain-LoRA-wrapped one (None when it is)."""
    if isinstance(module, torch.nn.Linear):
        return None
    base = getattr(module, "base_layer", None)
    if base is None or not hasattr(module, "lora_A"):
        return f"{type(module).__name__} is neither nn.Linear nor a PEFT LoRA linear layer"
    if not isinstance(base, torch.nn.Linear):
        return f"LoRA over {type(base).__name__} (only nn.Linear)"
    if any(getattr(module, "use_dora", {}).values()):
        return "DoRA adapters (only plain LoRA merges into a weight)"
    if any(getattr(module, "lora_bias", {}).values()):
        return "LoRA bias terms"
    return None


def effective_linear(module: Any, use_adapters: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias a (possibly LoRA-wrapped) linear layer applies: ``W + sum of active adapter deltas``.

    ``use_adapters=False`` gives the base weights (a merged adapter is taken back out). No gradient.
    """
    with torch.no_grad():
        if isinstance(module, torch.nn.Linear):
            return module.weight, module.bias
        base = module.base_layer
        weight = base.weight
        active = [name for name in module.active_adapters if name in module.lora_A]
        disabled = bool(getattr(module, "disable_adapters", False))
        merged = list(getattr(module, "merged_adapters", []))
        want = active if use_adapters and not disabled else []
        # The base layer's weight already holds whatever was merged into it; move it to what is wanted.
        for name in merged:
            if name not in want:
                weight = weight - module.get_delta_weight(name)
        for name in want:
            if name not in merged:
                weight = weight + module.get_delta_weight(name)
        return weight, base.bias


@dataclass
class _Layer:
    """One decoder layer's weights, fused where two matmuls share an input."""

    attn_norm: torch.Tensor
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None
    mlp_norm: torch.Tensor
    wgate_up: torch.Tensor
    bgate_up: torch.Tensor | None
    wdown: torch.Tensor
    bdown: torch.Tensor | None


@dataclass
class SamplerWeights:
    """A self-contained copy of a Llama-family model's weights (LoRA merged) in one dtype on one device."""

    embed: torch.Tensor
    layers: list[_Layer]
    final_norm: torch.Tensor
    lm_head: torch.Tensor
    cos: torch.Tensor  # [max_positions, head_dim], computed in float32, stored in ``dtype`` (as transformers casts)
    sin: torch.Tensor
    num_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float
    dtype: torch.dtype
    packed: bool = False  # matmul weights are in oneDNN's blocked layout (use :meth:`linear`)
    head_packed: bool = False

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ weight.T + bias`` for one of this copy's matmul weights (packed or plain)."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [None], "")
        return F.linear(x, weight, bias)

    @classmethod
    def from_model(cls, model: Any, *, dtype: torch.dtype, device: torch.device, use_adapters: bool = True,
                   max_positions: int | None = None, pack_hint: int | None = None,
                   float32_head: bool = False) -> SamplerWeights:
        """Copy (and merge) ``model``'s weights; raises ValueError when :func:`unsupported_reason` names a reason.

        ``pack_hint`` (a typical batch size): on CPU in bfloat16, reorder the matmul weights once into oneDNN's
        blocked layout (bit-identical results, ~1.5x faster skinny matmuls) when this torch build offers it.
        ``float32_head``: keep the output head in float32, so the logits (and log-probs) are not rounded to the
        sampling dtype (costs a float32 vocabulary matmul per step).
        """
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"StaticCacheBackend cannot run this model: {reason}; use backend='hf'")
        core = core_model(model)
        config = core.config
        inner = core.model

        def cast(tensor: torch.Tensor | None) -> torch.Tensor | None:
            # clone: a dtype/device no-op .to() would alias the trainer's tensor, and later in-place steps would
            # then change the sampler's weights under it.
            return None if tensor is None else tensor.detach().to(device=device, dtype=dtype).clone()

        def cat(modules: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
            pairs = [effective_linear(m, use_adapters) for m in modules]
            weight = torch.cat([w.detach().to(device=device, dtype=dtype) for w, _ in pairs], dim=0)
            if all(b is None for _, b in pairs):
                return weight, None
            bias = torch.cat([(b if b is not None else w.new_zeros(w.shape[0])).detach().to(device=device,
                                                                                           dtype=dtype)
                              for w, b in pairs])
            return weight, bias

        layers = []
        with torch.no_grad():
            for layer in inner.layers:
                attn, mlp = layer.self_attn, layer.mlp
                wqkv, bqkv = cat([attn.q_proj, attn.k_proj, attn.v_proj])
                wo, bo = cat([attn.o_proj])
                wgu, bgu = cat([mlp.gate_proj, mlp.up_proj])
                wdown, bdown = cat([mlp.down_proj])
                layers.append(_Layer(attn_norm=cast(layer.input_layernorm.weight), wqkv=wqkv, bqkv=bqkv, wo=wo,
                                     bo=bo, mlp_norm=cast(layer.post_attention_layernorm.weight), wgate_up=wgu,
                                     bgate_up=bgu, wdown=wdown, bdown=bdown))
            embed_source = inner.embed_tokens.weight
            embed = cast(embed_source)
            head_weight, head_bias = effective_linear(core.lm_head, use_adapters)
            if head_bias is not None:
                raise ValueError("StaticCacheBackend cannot run this model: lm_head has a bias; use backend='hf'")
            # Tied embeddings stay one tensor (no second 28M-parameter copy for SmolLM2).
            if float32_head and dtype != torch.float32:
                lm_head = head_weight.detach().to(device=device, dtype=torch.float32).clone()
            else:
                lm_head = embed if head_weight is embed_source else cast(head_weight)
            num_heads = int(config.num_attention_heads)
            head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // num_heads)
            positions = int(max_positions or getattr(config, "max_position_embeddings", 4096))
            # The model's own rotary module: it knows the rope variant (scaling type, attention factor).
            rotary = inner.rotary_emb
            probe = torch.zeros(1, 1, head_dim, dtype=torch.float32, device=rotary.inv_freq.device)
            cos, sin = rotary(probe, torch.arange(positions, device=probe.device)[None])
        weights = cls(embed=embed, layers=layers, final_norm=cast(inner.norm.weight), lm_head=lm_head,
                      cos=cos[0].to(device=device, dtype=dtype), sin=sin[0].to(device=device, dtype=dtype),
                      num_heads=num_heads,
                      num_kv_heads=int(getattr(config, "num_key_value_heads", None) or num_heads),
                      head_dim=head_dim, eps=float(config.rms_norm_eps), dtype=dtype)
        if pack_hint and device.type == "cpu" and dtype == torch.bfloat16 and _can_pack(pack_hint):
            weights._pack(pack_hint)
        return weights

    def _pack(self, hint: int) -> None:
        reorder = torch.ops.mkldnn._reorder_linear_weight
        for layer in self.layers:
            for name in ("wqkv", "wo", "wgate_up", "wdown"):
                setattr(layer, name, reorder(getattr(layer, name), hint))
        if self.lm_head.dtype == self.dtype:  # a tied head gets its own packed copy; embed stays plain
            self.lm_head = reorder(self.lm_head, hint)
            self.head_packed = True
        self.packed = True


def _can_pack(hint: int) -> bool:
    """True when oneDNN weight packing exists here and reproduces ``F.linear`` exactly on a probe."""
    ops = torch.ops.mkldnn
    if not (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise")):
        return False
    try:
        weight = torch.linspace(-1, 1, 48 * 32).reshape(48, 32).to(torch.bfloat16)
        x = torch.linspace(-2, 2, 3 * 32).reshape(3, 32).to(torch.bfloat16)
        packed = ops._reorder_linear_weight(weight, hint)
        return bool(torch.equal(ops._linear_pointwise(x, packed, None, "none", [None], ""), F.linear(x, weight)))
    except (RuntimeError, NotImplementedError):
        return False


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm exactly: normalise in float32, cast back, then scale."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as transformers applies it (``x * cos + rotate_half(x) * sin``)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class _Decoder:
    """The forward pass over :class:`SamplerWeights` with a preallocated KV cache for one batch.

    Cache: per layer ``[B, kv_heads, S, head_dim]`` for keys and values, ``S`` = prompt width + new tokens.
    ``valid[b, s]`` marks cache slots holding real tokens (left padding stays invalid).
    """

    def __init__(self, weights: SamplerWeights, batch: int, capacity: int, device: torch.device) -> None:
        w = weights
        self.w = w
        shape = (batch, w.num_kv_heads, capacity, w.head_dim)
        self.keys = [torch.zeros(shape, dtype=w.dtype, device=device) for _ in w.layers]
        self.values = [torch.zeros(shape, dtype=w.dtype, device=device) for _ in w.layers]
        self.valid = torch.zeros((batch, capacity), dtype=torch.bool, device=device)
        self.scale = w.head_dim ** -0.5

    def select(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in ``index`` (finished rows leave, so later steps compute less)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.valid = self.valid.index_select(0, index)

    def _project(self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``[B, heads, T, hd]`` of ``x`` [B, T, H], rotary already applied.

        ``cos``/``sin`` are the rotary tables at the tokens' positions, ``[B, T, 1, hd]`` (looked up once per
        forward, not per layer). Queries and keys sit side by side in the fused projection, so one rotation
        covers both.
        """
        w = self.w
        batch, length, _ = x.shape
        qkv = w.linear(_rms_norm(x, layer.attn_norm, w.eps), layer.wqkv, layer.bqkv)
        q_size, kv_size = w.num_heads * w.head_dim, w.num_kv_heads * w.head_dim
        qk = _rotate(qkv[..., :q_size + kv_size].view(batch, length, w.num_heads + w.num_kv_heads, w.head_dim),
                     cos, sin)
        q = qk[:, :, :w.num_heads].transpose(1, 2)
        k = qk[:, :, w.num_heads:].transpose(1, 2)
        v = qkv[..., q_size + kv_size:].view(batch, length, w.num_kv_heads, w.head_dim).transpose(1, 2)
        return q, k, v

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary tables at ``positions`` [B, T], shaped ``[B, T, 1, hd]`` to broadcast over heads."""
        return self.w.cos[positions][:, :, None], self.w.sin[positions][:, :, None]

    def _finish_layer(self, layer: _Layer, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        w = self.w
        x = x + w.linear(attended, layer.wo, layer.bo)
        gate_up = w.linear(_rms_norm(x, layer.mlp_norm, w.eps), layer.wgate_up, layer.bgate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return x + w.linear(F.silu(gate) * up, layer.wdown, layer.bdown)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        hidden = _rms_norm(x, w.final_norm, w.eps)
        if w.head_packed:
            return w.linear(hidden, w.lm_head, None).float()
        return F.linear(hidden.to(w.lm_head.dtype), w.lm_head).float()

    def prefill(self, input_ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """Run left-padded prompts ``[P, W]`` into cache slots ``0..W-1``; the last column's logits [B, V] (fp32).

        ``rows`` [B]: which prompt each cache row holds (rows repeating a prompt, the G samples of a problem,
        share its forward; the prompt's keys and values are copied to them). Default: prompt ``b`` in row ``b``.
        """
        w = self.w
        batch, width = input_ids.shape
        real = attention.bool()
        self.valid[:, :width] = real if rows is None else real[rows]
        causal = torch.ones(width, width, dtype=torch.bool, device=input_ids.device).tril()
        # A padding query row would see no key at all (NaN); let it see itself. Real tokens never see padding.
        mask = (causal[None] & real[:, None, :]) | torch.eye(width, dtype=torch.bool, device=input_ids.device)[None]
        mask = mask[:, None]  # [B, 1, W, W]
        x = F.embedding(input_ids, w.embed)
        cos, sin = self._rotary(positions)
        for index, layer in enumerate(w.layers):
            q, k, v = self._project(layer, x, cos, sin)
            self.keys[index][:, :, :width] = k if rows is None else k[rows]
            self.values[index][:, :, :width] = v if rows is None else v[rows]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                                 enable_gqa=w.num_heads != w.num_kv_heads)
            x = self._finish_layer(layer, x, out.transpose(1, 2).reshape(batch, width, -1))
        logits = self._logits(x[:, -1:])[:, 0]
        return logits if rows is None else logits[rows]

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, slot: int) -> torch.Tensor:
        """Feed one token per row (rotary position ``positions`` [B]) into cache slot ``slot``; logits [B, V] fp32."""
        w = self.w
        batch = tokens.shape[0]
        self.valid[:, slot] = True
        span = slot + 1
        # One query per row: fold each kv head's query group into the query axis, so attention is two plain
        # batched matmuls on the cache with no key/value repetition.
        group = w.num_heads // w.num_kv_heads
        # An additive mask built once per step (SDPA turns a boolean one into this in every layer's call).
        mask = torch.zeros(self.valid.shape[0], span, dtype=w.dtype, device=tokens.device)
        mask = mask.masked_fill_(~self.valid[:, :span], float("-inf"))[:, None, None]  # [B, 1, 1, S]
        x = F.embedding(tokens[:, None], w.embed)
        cos, sin = self._rotary(positions[:, None])
        for index, layer in enumerate(w.layers):
            q, k, v = self._project(layer, x, cos, sin)
            self.keys[index][:, :, slot] = k[:, :, 0]
            self.values[index][:, :, slot] = v[:, :, 0]
            q = q.reshape(batch, w.num_kv_heads, group, w.head_dim)
            out = F.scaled_dot_product_attention(q, self.keys[index][:, :, :span], self.values[index][:, :, :span],
                                                 attn_mask=mask, scale=self.scale)
            x = self._finish_layer(layer, x, out.reshape(batch, 1, -1))
        return self._logits(x)[:, 0]


#: Vocabulary entries per block of :func:`sample_tokens`' two-level inverse-CDF draw.
SAMPLING_BLOCK = 256


def sample_tokens(scaled: torch.Tensor, params: SamplingParams,
                  generator: torch.Generator | list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from ``softmax(scaled)`` after top-k / top-p truncation (as in HFBackend), and its
    log-prob under the untruncated ``log_softmax(scaled)``.

    One uniform draw per row, inverted through the cumulative mass in two levels: first over blocks of
    :data:`SAMPLING_BLOCK` tokens, then inside the chosen block. A vocabulary-wide ``logsumexp`` and cumulative
    sum per row cost ~7 ms per step at 32 rows of a 49k vocabulary on CPU (``torch.multinomial``'s vocabulary-sized
    exponential draw, more); this costs ~0.75 ms. A list of generators draws each row's uniform from its own
    generator (per-row seeds). A token of zero probability is never drawn.
    """
    batch, vocab = scaled.shape
    top = scaled.amax(-1, keepdim=True)
    weights = (scaled - top).exp_()  # unnormalised probabilities; the largest is 1
    truncated = bool(params.top_k and params.top_k < vocab) or params.top_p < 1.0
    normaliser = top + weights.sum(-1, keepdim=True).log() if truncated else None  # logsumexp(scaled)
    if params.top_k and params.top_k < vocab:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[:, -1:]
        weights.masked_fill_(scaled < kth, 0.0)
    if params.top_p < 1.0:
        sorted_weights, sorted_index = torch.sort(weights, dim=-1, descending=True)
        sorted_probs = sorted_weights / sorted_weights.sum(-1, keepdim=True)
        # Drop a token when the tokens ranked above it already hold top_p of the mass (the first always stays).
        drop = (sorted_probs.cumsum(-1) - sorted_probs) > params.top_p
        weights = weights.scatter(-1, sorted_index, sorted_weights.masked_fill(drop, 0.0))
    pad = -vocab % SAMPLING_BLOCK
    blocks = (F.pad(weights, (0, pad)) if pad else weights).view(batch, -1, SAMPLING_BLOCK)
    block_mass = blocks.sum(-1)
    block_cdf = block_mass.cumsum(-1)
    total = block_cdf[:, -1:]
    if normaliser is None:
        normaliser = top + total.log()
    if isinstance(generator, list):
        uniform = torch.cat([torch.rand((1, 1), generator=g, device=scaled.device, dtype=total.dtype)
                             for g in generator])
    else:
        uniform = torch.rand((batch, 1), generator=generator, device=scaled.device, dtype=total.dtype)
    # Kept strictly below the total mass (a guard: with u < 1 and IEEE rounding u * total already is), so the first
    # block whose cumulative mass exceeds the draw exists and has mass > 0.
    draw = torch.minimum(uniform * total, total * (1 - 2 ** -20))
    block = torch.searchsorted(block_cdf, draw, right=True)
    inside = blocks[torch.arange(batch, device=scaled.device), block[:, 0]].cumsum(-1)  # [B, SAMPLING_BLOCK]
    # The draw's offset into its block, clamped into [0, the block's mass) against rounding: the first token
    # whose cumulative mass exceeds it then has positive weight.
    offset = draw - (block_cdf.gather(-1, block) - block_mass.gather(-1, block))
    offset = torch.minimum(offset.clamp_(min=0.0), inside[:, -1:] * (1 - 2 ** -20))
    tokens = (block * SAMPLING_BLOCK + torch.searchsorted(inside, offset, right=True)).squeeze(-1)
    return tokens, (scaled.gather(-1, tokens[:, None]) - normaliser).squeeze(-1)


class StaticCacheBackend:
    """Generation backend "fast": a merged, dtype-cast copy of the policy's weights decoded with a static KV cache.

    ``generate`` tokenizes chat-formatted prompts (no extra special tokens), runs them in length-sorted chunks of
    ``batch_size`` and returns completions in input order, like :class:`~fst_env.backends.hf.HFBackend`.
    ``dtype`` (a torch dtype or its name) defaults to :func:`fst_env.models.sampling_dtype` for the policy's
    device. ``compact_at``: when at least this fraction of a batch's rows have finished, the finished rows are
    dropped from the cache (a copy), so the rest decode a smaller batch. ``float32_head``: compute the logits with
    a float32 output head under a bf16 body (measured on SmolLM2-135M: slower, and the ratio to a float32 learner
    no narrower, since the bf16 layers dominate the difference; off by default).
    ``threads`` (or ``$FST_ENV_THREADS``) sets torch's intra-op threads
    (:func:`fst_env.models.configure_threads`). ``merge_seconds`` is the time of the last weight copy/merge.
    """

    #: Per-prompt seeds (``SamplingParams.row_seeds``): each row draws from its own generator.
    supports_row_seeds = True

    #: Samples from the weights being trained (the agent's slow channel accepts it).
    trainable = True

    def __init__(self, policy: Policy, *, batch_size: int = 32, dtype: torch.dtype | str | None = None,
                 compact_at: float = 0.25, float32_head: bool = False, threads: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"StaticCacheBackend: batch_size must be >= 1, got {batch_size}")
        if not 0 < compact_at <= 1:
            raise ValueError(f"StaticCacheBackend: compact_at must be in (0, 1], got {compact_at}")
        reason = unsupported_reason(policy.model)
        if reason:
            raise ValueError(f"StaticCacheBackend cannot run {policy.name!r}: {reason}; use backend='hf'")
        if isinstance(dtype, str):  # a config (FSTConfig.backend_kwargs) stays JSON: "float32" / "bfloat16"
            if dtype not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"StaticCacheBackend: dtype must be float32, bfloat16 or float16, got {dtype!r}")
            dtype = getattr(torch, dtype)
        configure_threads(threads)
        self.policy = policy
        self.batch_size = batch_size
        self.dtype = dtype if dtype is not None else sampling_dtype(policy.device)
        self.compact_at = compact_at
        self.float32_head = float32_head
        self.merge_seconds = float("nan")
        self._use_base_weights = False
        self._weights: SamplerWeights | None = None
        self._key: tuple[Any, ...] | None = None
        self._source: Any = None

    # ------------------------------------------------------------------------------------------- protocol
    def apply_chat_template(self, messages: list[Message], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` under the tokenizer's chat template."""
        return self.policy.tokenizer.apply_chat_template(messages, tokenize=False,
                                                         add_generation_prompt=add_generation_prompt)

    def update_weights(self, model: Any = None) -> None:
        """Re-copy (and re-merge LoRA into) the sampling weights from ``model`` (default: ``policy.model``) now."""
        if model is not None and unsupported_reason(model):
            raise ValueError(f"StaticCacheBackend.update_weights: {unsupported_reason(model)}")
        self._source = model
        self._merge()

    def set_adapter(self, name: str | None) -> None:
        """Generate with LoRA adapter ``name``, or with the base weights (adapters disabled) for ``None``."""
        self._use_base_weights = select_adapter(self.policy.model, name, "StaticCacheBackend")

    def generate(self, prompts: Sequence[str], params: SamplingParams | None = None) -> list[Generation]:
        """One :class:`Generation` per prompt, in order; the same prompts and ``params.seed`` give the same output."""
        params = (params or SamplingParams()).validate()
        if isinstance(prompts, str):
            raise TypeError("StaticCacheBackend.generate: prompts must be a list of str, got a single str")
        encoded = encode_prompts(self.policy.tokenizer, prompts, "StaticCacheBackend")
        if not encoded:
            return []
        weights = self._current_weights()
        longest = max(len(ids) for ids in encoded) + params.max_new_tokens
        if longest > weights.cos.shape[0]:
            raise ValueError(f"StaticCacheBackend.generate: prompt + max_new_tokens = {longest} tokens exceeds the "
                             f"model's {weights.cos.shape[0]} positions")
        with torch.inference_mode():
            return generate_in_chunks(encoded, params, self.policy.device, self.batch_size,
                                      functools.partial(self._generate_batch, weights))

    # ------------------------------------------------------------------------------------------- weights
    def _model(self) -> Any:
        return self._source if self._source is not None else self.policy.model

    def _weights_key(self) -> tuple[Any, ...]:
        """What the merged copy depends on: every parameter's identity and in-place version, and the adapter state."""
        model = self._model()
        params = tuple((id(p), p._version) for p in model.parameters())
        # A PEFT wrapper names its active adapters (a property there; a method on plain transformers models).
        adapter = model.active_adapters if is_peft(model) else None
        # ``with model.disable_adapter():`` and merges flip per-layer flags without touching any parameter.
        layers = tuple((bool(getattr(m, "disable_adapters", False)), tuple(getattr(m, "merged_adapters", ())),
                        tuple(m.active_adapters)) for m in model.modules() if hasattr(m, "lora_A"))
        return (id(model), params, self._use_base_weights, tuple(adapter) if adapter else None, layers, self.dtype)

    def _current_weights(self) -> SamplerWeights:
        if self._weights is None or self._key != self._weights_key():
            self._merge()
        assert self._weights is not None
        return self._weights

    def _merge(self) -> None:
        start = time.perf_counter()
        model = self._model()
        self._weights = None  # drop the old copy first: peak memory is one copy, not two
        self._weights = SamplerWeights.from_model(model, dtype=self.dtype, device=self.policy.device,
                                                  use_adapters=not self._use_base_weights,
                                                  pack_hint=self.batch_size, float32_head=self.float32_head)
        self._key = self._weights_key()
        self.merge_seconds = time.perf_counter() - start

    # ------------------------------------------------------------------------------------------- decoding
    def _generate_batch(self, weights: SamplerWeights, prompt_ids: list[list[int]], params: SamplingParams,
                        generator: torch.Generator | list[torch.Generator]) -> list[Generation]:
        tokenizer = self.policy.tokenizer
        device = self.policy.device
        batch, width = len(prompt_ids), max(len(ids) for ids in prompt_ids)
        input_ids, attention, positions = left_padded(prompt_ids, tokenizer, device)
        decoder = _Decoder(weights, batch, width + params.max_new_tokens, device)
        repeats = repeated_prompts(prompt_ids)
        if repeats is None:
            logits = decoder.prefill(input_ids, attention, positions)
        else:  # repeated prompts (the G samples of one problem) are prefilled once
            firsts, prompt_of_row = (torch.tensor(index, device=device) for index in repeats)
            logits = decoder.prefill(input_ids[firsts], attention[firsts], positions[firsts], prompt_of_row)
        next_position = attention.sum(-1)

        eos_ids = stop_token_ids(self.policy)
        stops = tuple(params.stop)
        stop_window = max((len(s.encode("utf-8")) for s in stops), default=0) + 1
        temperature = params.logprob_temperature
        rows = list(range(batch))  # original row of each cache row (finished rows stay until compaction)
        live = [True] * batch  # per cache row: still decoding
        completion: list[list[int]] = [[] for _ in range(batch)]
        logprobs: list[list[float]] = [[] for _ in range(batch)]
        finish: list[str | None] = [None] * batch
        matched: list[str | None] = [None] * batch

        for step in range(params.max_new_tokens):
            scaled = logits / temperature if temperature != 1.0 else logits
            if params.greedy:
                tokens = scaled.argmax(-1)
                chosen = (scaled.gather(-1, tokens[:, None]) - torch.logsumexp(scaled, -1, keepdim=True)).squeeze(-1)
            else:
                draws = generator if isinstance(generator, torch.Generator) else [generator[row] for row in rows]
                tokens, chosen = sample_tokens(scaled, params, draws)
            for slot, (token, lp) in enumerate(zip(tokens.tolist(), chosen.tolist(), strict=True)):
                if not live[slot]:
                    continue
                row = rows[slot]
                completion[row].append(token)
                logprobs[row].append(lp)
                if token in eos_ids:
                    finish[row] = "stop"
                elif stops and (hit := _stop_hit(tokenizer, completion[row][-stop_window:], stops)) is not None:
                    finish[row], matched[row] = "stop", hit
                elif step + 1 == params.max_new_tokens:
                    finish[row] = "length"
                if finish[row] is not None:
                    live[slot] = False
            alive = sum(live)
            if alive == 0:
                break
            if len(live) - alive >= max(1.0, self.compact_at * len(live)):
                keep = [slot for slot, on in enumerate(live) if on]
                index = torch.tensor(keep, device=device)
                decoder.select(index)
                tokens, next_position = tokens[index], next_position[index]
                rows = [rows[slot] for slot in keep]
                live = [True] * len(keep)
            logits = decoder.decode(tokens, next_position, width + step)
            next_position = next_position + 1

        return finished_generations(tokenizer, prompt_ids, completion, logprobs, finish, matched, params)
