"""What every generation backend offers: sampling parameters, a generation record and the backend protocol.

This module does not import torch, so the types can be used (and type-checked) without the training extras.

Log-probabilities: a backend returns, for each sampled token, its log-probability under the policy *at the
sampling temperature*, ``log_softmax(logits / T)[token]`` (``T = 1`` when ``temperature == 0``, i.e. greedy
decoding, whose own distribution is degenerate). Top-k / top-p truncation is a sampling heuristic and is not
folded in: the learner recomputes the same quantity differentiably (``fst_env.agents.slow`` with the same
temperature), so the importance ratio is exactly 1 on the first step, up to float numerics. With the default
``top_k=0, top_p=1.0`` the returned log-probs are exactly those of the sampling distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass
class SamplingParams:
    """How to sample completions.

    ``max_new_tokens``: completion length cap (``finish_reason="length"`` when hit). ``temperature``: 0 means
    greedy decoding. ``top_p`` in (0, 1] (1 = off), ``top_k`` >= 0 (0 = off). ``stop``: strings that end a
    completion (``finish_reason="stop"``, as does the tokenizer's eos token); ``include_stop`` keeps the
    matched stop string at the end of the returned text. ``seed``: the same seed and prompts give the same
    completions (``None`` draws fresh randomness). ``row_seeds``: one seed per prompt instead, so each completion's
    noise is its own (the same prompt and row seed give the same sample whatever else is in the batch: common
    random numbers for evaluation); backends that support it say so with ``supports_row_seeds = True``.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] | list[str] = field(default_factory=tuple)
    include_stop: bool = True
    seed: int | None = None
    row_seeds: tuple[int, ...] | None = None

    def validate(self) -> SamplingParams:
        """Raise ValueError on an out-of-range field; returns ``self`` so calls can chain."""
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ValueError(f"SamplingParams.temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if isinstance(self.stop, str):
            raise ValueError(f"SamplingParams.stop must be a list of strings, not a str: use [{self.stop!r}]")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"SamplingParams.stop entries must be non-empty strings, got {s!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"SamplingParams.seed must be an int or None, got {self.seed!r}")
        if self.row_seeds is not None:
            if isinstance(self.row_seeds, (str, bytes)) or not all(
                    isinstance(s, int) and not isinstance(s, bool) for s in self.row_seeds):
                raise ValueError(f"SamplingParams.row_seeds must be a sequence of ints (one per prompt) or None, "
                                 f"got {self.row_seeds!r}")
            if self.seed is not None:
                raise ValueError("SamplingParams: give seed or row_seeds, not both")
        return self

    def row_generators(self, count: int, device: Any) -> list[Any] | None:
        """One seeded ``torch.Generator`` per prompt when ``row_seeds`` is set (None otherwise); checks the count."""
        if self.row_seeds is None:
            return None
        if len(self.row_seeds) != count:
            raise ValueError(f"SamplingParams.row_seeds has {len(self.row_seeds)} seeds for {count} prompts")
        import torch

        return [torch.Generator(device=device).manual_seed(int(seed)) for seed in self.row_seeds]

    @property
    def greedy(self) -> bool:
        """True when decoding is greedy (temperature 0)."""
        return self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        """The temperature the returned log-probs are computed at (see the module docstring)."""
        return 1.0 if self.greedy else float(self.temperature)


@dataclass
class Generation:
    """One completion of one prompt.

    ``prompt_ids`` are the prompt's token ids (no padding); ``completion_ids`` the sampled ids, ending with the
    eos token when the model stopped by itself, or with the token that completed a stop string. ``logprobs``
    has one entry per completion id (see the module docstring). ``text`` is the decoded completion without
    special tokens, cut after the stop string (or before it, with ``include_stop=False``).
    """

    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    stop: str | None = None


Message = dict[str, str]


@runtime_checkable
class GenerationBackend(Protocol):
    """Anything that turns chat-formatted prompts into completions with per-token log-probs.

    ``generate(prompts, params)`` returns one :class:`Generation` per prompt, in order; prompts are already
    formatted text (use :meth:`apply_chat_template`). Backends that serve a separate copy of the weights
    (vLLM, a server) get the trainer's current weights through ``update_weights`` / ``set_adapter``;
    an in-process backend sharing the trainer's module needs no sync.
    """

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        """One completion per prompt, in order."""
        ...

    def apply_chat_template(self, messages: list[Message], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for a chat (system/user/assistant messages), ready for :meth:`generate`."""
        ...

    def update_weights(self, model: Any = None) -> None:
        """Make the served weights equal to the trainer's (``model``, or the policy the backend was built on)."""
        ...

    def set_adapter(self, name: str | None) -> None:
        """Generate with the named LoRA adapter, or with the base weights (adapters disabled) for ``None``."""
        ...


def cut_at_stop(text: str, stops: tuple[str, ...], include_stop: bool) -> str:
    """``text`` up to the earliest stop string (kept when ``include_stop``); every backend cuts the same way."""
    hits = [(text.find(s), s) for s in stops if s in text]
    if not hits:
        return text
    index, stop = min(hits)
    return text[:index + len(stop)] if include_stop else text[:index]


def repeated_prompts(prompt_ids: Sequence[Sequence[int]]) -> tuple[list[int], list[int]] | None:
    """For a batch that repeats a prompt (the G samples of one problem): the first row of each distinct prompt,
    and each row's distinct-prompt index; ``None`` when every prompt is distinct. The fast backend prefills, and
    the learner runs, each distinct prompt once."""
    slots: dict[tuple[int, ...], int] = {}
    rows = [slots.setdefault(tuple(ids), len(slots)) for ids in prompt_ids]
    if len(slots) == len(rows):
        return None
    return [rows.index(slot) for slot in range(len(slots))], rows
