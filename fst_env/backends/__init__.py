"""Generation backends: turn chat-formatted prompts into completions with per-token log-probs.

``from fst_env.backends import HFBackend`` (in-process transformers; imports torch on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fst_env.backends.base import Generation, GenerationBackend, SamplingParams

if TYPE_CHECKING:
    from fst_env.backends.hf import HFBackend

__all__ = ["BACKENDS", "Generation", "GenerationBackend", "HFBackend", "SamplingParams", "make_backend"]

#: Backend names accepted by :func:`make_backend` (the ``backend`` field of a run's config).
BACKENDS = ("hf", "openai", "vllm")


def make_backend(name: str, policy: Any, **kwargs: Any) -> GenerationBackend:
    """The generation backend called ``name`` serving ``policy``; the one place that branches on the name."""
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
    raise AttributeError(f"module 'fst_env.backends' has no attribute {name!r}")
