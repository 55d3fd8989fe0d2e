"""Generation backends: turn chat-formatted prompts into completions with per-token log-probs.

``from fst_env.backends import HFBackend`` (in-process transformers; imports torch on first use) and
``StaticCacheBackend`` (``"fast"``: a merged bf16/fp32 copy of the weights decoded over a static KV cache).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fst_env.backends.base import Generation, GenerationBackend, SamplingParams

if TYPE_CHECKING:
    from fst_env.backends.hf import HFBackend
    from fst_env.backends.static import StaticCacheBackend

__all__ = ["BACKENDS", "Generation", "GenerationBackend", "HFBackend", "SamplingParams", "StaticCacheBackend",
           "make_backend"]

#: Backend names accepted by :func:`make_backend` (the ``backend`` field of a run's config).
BACKENDS = ("fast", "hf", "openai", "vllm")


def make_backend(name: str, policy: Any, **kwargs: Any) -> GenerationBackend:
    """The generation backend called ``name`` serving ``policy``; the one place that branches on the name.

    ``"fast"`` runs Llama-family models only; for any other model it warns and returns ``HFBackend`` (the
    reference path, same results up to float rounding) with the ``batch_size`` keyword, if given.
    """
    if name == "fast":
        from fst_env.backends.static import StaticCacheBackend, unsupported_reason

        reason = unsupported_reason(policy.model)
        if reason is None:
            return StaticCacheBackend(policy, **kwargs)
        import warnings

        from fst_env.backends.hf import HFBackend

        warnings.warn(f"backend 'fast' cannot run {getattr(policy, 'name', 'this model')!r} ({reason}); "
                      "using 'hf'", stacklevel=2)
        return HFBackend(policy, **{k: v for k, v in kwargs.items() if k == "batch_size"})
    if name == "hf":
        from fst_env.backends.hf import HFBackend

        return HFBackend(policy, **kwargs)
    if name == "openai":  # the endpoint serves its own weights; the policy only lends its tokenizer
        from fst_env.backends.openai import OpenAIBackend

        return OpenAIBackend.for_policy(policy, **kwargs)
    if name == "vllm":  # a separate copy of the weights: sync with backend.update_weights(...) after a slow step
        from fst_env.backends.vllm import VLLMBackend

        return VLLMBackend(policy, **kwargs)
    raise ValueError(f"unknown backend {name!r}; choose one of {list(BACKENDS)}")


def __getattr__(name: str) -> Any:
    # Lazy: the base types stay importable without torch; HFBackend pulls torch in only when asked for.
    if name == "HFBackend":
        from fst_env.backends.hf import HFBackend

        return HFBackend
    if name == "StaticCacheBackend":
        from fst_env.backends.static import StaticCacheBackend

        return StaticCacheBackend
    raise AttributeError(f"module 'fst_env.backends' has no attribute {name!r}")
