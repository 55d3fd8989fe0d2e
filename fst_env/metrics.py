"""The paper's metrics: KL drift and entropy of a policy against its base weights, plus every statistic.

The statistics (mean@k and intervals, paired differences, running max, sample efficiency, continual-learning
matrices, sigmoid fits) live in the foundation module :mod:`fst_env.stats` and are re-exported here, so
``from fst_env.metrics import X`` keeps working. What stays here needs an agent or a model; torch is imported
only inside the functions that run one (:func:`policy_kl_and_entropy`, :func:`score_tokens`), so curves and
tables can be analysed without the training extras.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fst_env.peft_utils import is_peft

# Re-exported: these names were defined here before they moved to the foundation layer (_sigmoid too, which is
# private but imported from here by tests/test_reproduce.py).
from fst_env.stats import (
    ContinualMetrics,
    PairedDifference,
    RunningMax,
    SigmoidFit,
    _sigmoid,  # noqa: F401
    accuracy_with_interval,
    continual_metrics,
    fit_sigmoid,
    mean_at_k,
    paired_difference,
    running_max,
    sample_efficiency_ratio,
    samples_to_reach,
    wilson_interval,
)

if TYPE_CHECKING:
    import torch

    from fst_env.agents.fst_agent import FSTAgent
    from fst_env.agents.slow import TokenBatch
    from fst_env.context import Context

__all__ = [
    "ContinualMetrics", "PairedDifference", "RunningMax", "SigmoidFit", "accuracy_with_interval", "base_weights",
    "base_weights_in_place", "continual_metrics", "fit_sigmoid", "mean_at_k", "paired_difference",
    "policy_kl_and_entropy", "running_max", "sample_efficiency_ratio", "samples_to_reach", "score_tokens",
    "wilson_interval",
]


# ------------------------------------------------------------------------------------------ KL and entropy
@contextmanager
def base_weights(agent: FSTAgent) -> Iterator[None]:
    """Within the block, ``agent.backend`` generates with the agent's *base* weights, in place (no copy).

    With a LoRA adapter this is ``backend.set_adapter(None)``, undone on exit (the adapter that was active is
    set again). An agent without trained weights (slow channel off, no adapter) already serves its base
    weights. Full fine-tuning changes the weights themselves: there the base is not available in place and
    this raises ValueError (load a base policy instead).
    """
    model = agent.policy.model
    if is_peft(model):
        active = model.active_adapter
        agent.backend.set_adapter(None)
        try:
            yield
        finally:
            agent.backend.set_adapter(active)
    elif agent.slow is None:
        yield
    else:
        raise ValueError("base_weights: the agent fine-tunes all weights (no LoRA adapter), so its base weights "
                         "are not available in place; evaluate a freshly loaded base policy instead")


def base_weights_in_place(agent: FSTAgent) -> bool:
    """True when :func:`base_weights` can serve the agent's base weights without loading another model."""
    return is_peft(agent.policy.model) or agent.slow is None


def score_tokens(model: Any, batch: TokenBatch, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of ``batch.targets`` and exact per-token entropies, both [B, C] float32, no grad.

    Both are of ``softmax(logits / temperature)`` over the full vocabulary (the entropy is
    ``logsumexp(z) - sum softmax(z) * z``, not a sampled estimate). Padding positions hold junk: use
    ``batch.mask``. This is the slow learner's ``token_logprobs``, the same quantity the trainer optimises.
    """
    import torch

    from fst_env.agents.slow import token_logprobs

    with torch.no_grad():
        logprobs, entropy = token_logprobs(model, batch, temperature=temperature, with_entropy=True)
    assert entropy is not None  # with_entropy=True always returns it
    return logprobs.detach(), entropy


def policy_kl_and_entropy(agent: FSTAgent, prompts: Sequence[str], *, max_new_tokens: int = 128,
                          samples: int = 1, context: Context | None = None, seed: int = 0,
                          micro_batch_size: int = 8) -> dict[str, float]:
    """Per-token KL(policy || base) and policy entropy on held-out prompts, without a second model copy.

    The measurement lives with the agent and its slow learner (:meth:`FSTAgent.kl_drift`, built on
    :func:`fst_env.agents.slow.measure_drift`): ``prompts`` are env observations wrapped with ``context``
    (``None``: the best context; ``{}``: none), ``samples`` completions each are drawn from the current policy
    at the training temperature, and at every visited position both next-token distributions are compared
    over the whole vocabulary, the base being the same module with its LoRA adapter disabled, the slow
    learner's frozen reference for full fine-tuning, or the weights themselves when nothing is trained
    (PromptAgent: KL exactly 0). Returns ``kl`` (exact), ``kl_exact``, ``kl_k3``, ``kl_sampled``, ``entropy``,
    ``n_tokens``, ``n_sequences`` and ``mean_length``.
    """
    return agent.kl_drift(prompts, max_new_tokens=max_new_tokens, samples=samples, context=context, seed=seed,
                          micro_batch_size=micro_batch_size)
