"""Per-row seeds: a prompt's sample depends on its own seed only, not on what else shares the batch (the common
random numbers evaluation relies on), for every backend that says it supports them."""

from __future__ import annotations

import pytest
import torch

from fst_env.agents.fst_agent import FSTAgent, FSTConfig
from fst_env.backends import HFBackend, SamplingParams, StaticCacheBackend
from fst_env.models import tiny_policy

MESSAGES = ["hi", "what is 2+2?", "a longer question with more words in it, to force left padding", "okay"]


def _backend(kind: str):
    policy = tiny_policy(0, tie_word_embeddings=False)
    return HFBackend(policy) if kind == "hf" else StaticCacheBackend(policy, dtype=torch.float32)


@pytest.mark.parametrize("kind", ["hf", "fast"])
def test_a_rows_sample_is_the_same_alone_or_in_any_batch(kind):
    backend = _backend(kind)
    assert backend.supports_row_seeds
    prompts = [backend.apply_chat_template([{"role": "user", "content": m}]) for m in MESSAGES]
    params = {"max_new_tokens": 12, "temperature": 1.0}
    seeds = (11, 22, 33, 44)
    together = backend.generate(prompts, SamplingParams(**params, row_seeds=seeds))
    reversed_ = backend.generate(prompts[::-1], SamplingParams(**params, row_seeds=seeds[::-1]))[::-1]
    alone = [backend.generate([p], SamplingParams(**params, row_seeds=(s,)))[0]
             for p, s in zip(prompts, seeds, strict=True)]
    for a, b, c in zip(together, reversed_, alone, strict=True):
        assert a.completion_ids == b.completion_ids == c.completion_ids
    other = backend.generate(prompts, SamplingParams(**params, row_seeds=(1, 2, 3, 4)))
    assert [g.completion_ids for g in other] != [g.completion_ids for g in together]  # the seeds matter


def test_row_seeds_are_checked():
    backend = _backend("hf")
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        backend.generate(["x"], SamplingParams(row_seeds=(1, 2)))
    with pytest.raises(ValueError, match="seed or row_seeds"):
        SamplingParams(seed=1, row_seeds=(1,)).validate()
    with pytest.raises(ValueError, match="sequence of ints"):
        SamplingParams(row_seeds=("a",)).validate()


class _Recorder:
    """Wraps an agent's backend, records every completion text, and says whether it takes per-row seeds."""

    def __init__(self, inner: HFBackend, row_seeds: bool) -> None:
        self.inner = inner
        self.supports_row_seeds = row_seeds
        self.calls = 0
        self.texts: list[str] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def generate(self, prompts, params):
        self.calls += 1
        out = self.inner.generate(prompts, params)
        self.texts += [g.text for g in out]
        return out


def test_batched_evaluation_equals_one_call_per_sample():
    recorders = []
    for row_seeds in (True, False):
        agent = FSTAgent(tiny_policy(0, tie_word_embeddings=False), "fst/MathReasoning-v0",
                         FSTConfig(group_size=2, groups_per_step=1, max_new_tokens=8, fast_learner="notes",
                                   backend="hf"))
        agent.backend = _Recorder(agent.backend, row_seeds)
        agent.evaluate(problems=4, k=2)
        recorders.append(agent.backend)
    batched, one_by_one = recorders
    assert (batched.calls, one_by_one.calls) == (1, 8)  # 4 problems x 2 samples: one batch, or each alone
    assert batched.texts == one_by_one.texts and len(set(batched.texts)) > 1
