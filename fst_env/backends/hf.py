"""In-process generation with transformers: batched, left-padded, KV-cached sampling with per-token log-probs.

The decoding loop is written out (rather than ``model.generate``) for three reasons: the log-prob of each
sampled token is taken from the same step's logits, so nothing of size ``steps x batch x vocab`` is kept
(``output_logits`` would hold ~1 GB for 32 x 160 tokens of a 49k vocabulary); finished rows leave the batch
(their KV cache rows are dropped), which matters when completion lengths vary; and sampling draws from a
local ``torch.Generator``, so a seed fixes the output without touching the global RNG.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers import DynamicCache

from fst_env.backends.base import Generation, Message, SamplingParams, cut_at_stop
from fst_env.models import Policy
from fst_env.peft_utils import core_model, has_adapters, is_peft


def stop_token_ids(policy: Policy) -> set[int]:
    """Token ids that end a completion: the tokenizer's eos plus the model's generation-config eos ids."""
    ids: set[int] = set()
    if policy.tokenizer.eos_token_id is not None:
        ids.add(int(policy.tokenizer.eos_token_id))
    config_eos = getattr(getattr(policy.model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif isinstance(config_eos, (list, tuple)):
        ids.update(int(i) for i in config_eos)
    return ids


class HFBackend:
    """Generation backend on the policy's own transformers module (shares weights with the learner).

    ``generate`` tokenizes chat-formatted prompts (no extra special tokens: the template carries them), runs
    them in length-sorted chunks of ``batch_size`` and returns completions in the input order. Log-probs follow
    :mod:`fst_env.backends.base`: ``log_softmax(logits / T)`` of each sampled token, computed in float32. It
    reads ``policy.model`` at every call, so a learner that wraps or updates the model is seen at once;
    ``update_weights`` is therefore a no-op. Runs under ``torch.inference_mode`` in eval mode and restores
    the module's train/eval mode afterwards.
    """

    #: Per-prompt seeds (``SamplingParams.row_seeds``): each row draws from its own generator.
    supports_row_seeds = True

    def __init__(self, policy: Policy, *, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"HFBackend: batch_size must be >= 1, got {batch_size}")
        self.policy = policy
        self.batch_size = batch_size
        self._use_base_weights = False

    # ------------------------------------------------------------------------------------------- protocol
    def apply_chat_template(self, messages: list[Message], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` under the tokenizer's chat template."""
        return self.policy.tokenizer.apply_chat_template(messages, tokenize=False,
                                                         add_generation_prompt=add_generation_prompt)

    def update_weights(self, model: Any = None) -> None:
        """No-op: this backend runs the learner's own module, so it always serves the current weights."""

    def set_adapter(self, name: str | None) -> None:
        """Generate with LoRA adapter ``name``, or with the base weights (adapters disabled) for ``None``."""
        self._use_base_weights = select_adapter(self.policy.model, name, "HFBackend")

    def generate(self, prompts: Sequence[str], params: SamplingParams | None = None) -> list[Generation]:
        """One :class:`Generation` per prompt, in order; the same prompts and ``params.seed`` give the same output."""
        params = (params or SamplingParams()).validate()
        if isinstance(prompts, str):
            raise TypeError("HFBackend.generate: prompts must be a list of str, got a single str")
        encoded = encode_prompts(self.policy.tokenizer, prompts, "HFBackend")
        with self._serving():
            return generate_in_chunks(encoded, params, self.policy.device, self.batch_size, self._generate_batch)

    # ------------------------------------------------------------------------------------------- internals
    @contextlib.contextmanager
    def _serving(self) -> Iterator[None]:
        model = self.policy.model
        was_training = model.training
        model.eval()
        adapters_off = model.disable_adapter() if self._use_base_weights and is_peft(model) \
            else contextlib.nullcontext()
        try:
            with torch.inference_mode(), adapters_off:
                yield
        finally:
            model.train(was_training)

    def _generate_batch(self, prompt_ids: list[list[int]], params: SamplingParams,
                        generator: torch.Generator | list[torch.Generator]) -> list[Generation]:
        model = core_model(self.policy.model)
        tokenizer = self.policy.tokenizer
        device = self.policy.device
        batch = len(prompt_ids)
        input_ids, attention, positions = left_padded(prompt_ids, tokenizer, device)
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
        next_position = attention.sum(-1)

        eos_ids = stop_token_ids(self.policy)
        stops = tuple(params.stop)
        # Enough trailing tokens to contain any stop string (every token decodes to at least one byte).
        stop_window = max((len(s.encode("utf-8")) for s in stops), default=0) + 1
        temperature = params.logprob_temperature
        active = list(range(batch))  # original rows still decoding, in cache order
        completion: list[list[int]] = [[] for _ in range(batch)]
        logprobs: list[list[float]] = [[] for _ in range(batch)]
        finish: list[str | None] = [None] * batch
        matched: list[str | None] = [None] * batch

        for step in range(params.max_new_tokens):
            scaled = logits.float() / temperature
            token_logprobs = torch.log_softmax(scaled, dim=-1)
            draws = generator if isinstance(generator, torch.Generator) else [generator[row] for row in active]
            tokens = scaled.argmax(-1) if params.greedy else _sample(scaled, params, draws)
            chosen = token_logprobs.gather(-1, tokens[:, None]).squeeze(-1)
            keep: list[int] = []
            for slot, (row, token, lp) in enumerate(zip(active, tokens.tolist(), chosen.tolist(), strict=True)):
                completion[row].append(token)
                logprobs[row].append(lp)
                if token in eos_ids:
                    finish[row] = "stop"
                elif stops and (hit := _stop_hit(tokenizer, completion[row][-stop_window:], stops)) is not None:
                    finish[row], matched[row] = "stop", hit
                elif step + 1 == params.max_new_tokens:
                    finish[row] = "length"
                else:
                    keep.append(slot)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention, next_position, tokens = attention[index], next_position[index], tokens[index]
                active = [active[slot] for slot in keep]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=-1)
            logits = model(input_ids=tokens[:, None], attention_mask=attention, position_ids=next_position[:, None],
                           past_key_values=cache, use_cache=True).logits[:, -1, :]
            next_position = next_position + 1

        return finished_generations(tokenizer, prompt_ids, completion, logprobs, finish, matched, params)





def select_adapter(model: Any, name: str | None, backend: str) -> bool:
    """Make LoRA adapter ``name`` the active one on ``model`` (checked); returns whether to serve the base weights
    (True for ``None``: adapters disabled while generating)."""
    if name is None:
        return True
    if not has_adapters(model):
        raise ValueError(f"{backend}.set_adapter({name!r}): the policy model has no LoRA adapters")
    if name not in model.peft_config:
        raise ValueError(f"{backend}.set_adapter: unknown adapter {name!r}; known: {sorted(model.peft_config)}")
    model.set_adapter(name)
    return False

def left_padded(prompt_ids: list[list[int]], tokenizer: Any, device: Any) -> tuple[torch.Tensor, ...]:
    """Input ids, attention mask and position ids of left-padded prompts on ``device``. Positions count real
    tokens only, so a left-padded prompt sees the positions it would see alone (as in the learner's TokenBatch)."""
    batch, width = len(prompt_ids), max(len(ids) for ids in prompt_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids):] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    return input_ids, attention, (attention.cumsum(-1) - 1).clamp(min=0)


def finished_generations(tokenizer: Any, prompt_ids: list[list[int]], completion: list[list[int]],
                         logprobs: list[list[float]], finish: list[str | None], matched: list[str | None],
                         params: SamplingParams) -> list[Generation]:
    """One :class:`Generation` per row from a decode loop's per-row tokens, log-probs, endings and stop matches."""
    out = []
    for row, ids in enumerate(prompt_ids):
        text = tokenizer.decode(completion[row], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if matched[row] is not None:
            text = cut_at_stop(text, tuple(params.stop), params.include_stop)
        out.append(Generation(text=text, prompt_ids=list(ids), completion_ids=completion[row],
                              logprobs=logprobs[row], finish_reason=finish[row] or "length", stop=matched[row]))
    return out

def encode_prompts(tokenizer: Any, prompts: Sequence[str], backend: str) -> list[list[int]]:
    """Token ids of each prompt (no extra special tokens: the chat template carries them); checks every prompt."""
    encoded: list[list[int]] = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"{backend}.generate: prompt {i} must be str, got {type(prompt).__name__}")
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"{backend}.generate: prompt {i} is empty after tokenization")
        encoded.append(list(ids))
    return encoded


#: Generates one chunk: (prompt ids, sampling params, the call's generator or one per prompt) -> generations.
ChunkGenerator = Callable[[list[list[int]], SamplingParams, "torch.Generator | list[torch.Generator]"],
                          list[Generation]]


def generate_in_chunks(encoded: list[list[int]], params: SamplingParams, device: Any, batch_size: int,
                       run_chunk: ChunkGenerator) -> list[Generation]:
    """Generations for ``encoded`` prompts in input order: similar lengths share a chunk of ``batch_size`` (little
    compute goes to padding); one seeded generator for the call, or one per prompt with ``params.row_seeds``."""
    if not encoded:
        return []
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    row_generators = params.row_generators(len(encoded), device)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        chunk_generators = generator if row_generators is None else [row_generators[i] for i in chunk]
        for i, generation in zip(chunk, run_chunk([encoded[i] for i in chunk], params, chunk_generators),
                                 strict=True):
            results[i] = generation
    return [g for g in results if g is not None]

def _sample(scaled: torch.Tensor, params: SamplingParams,
            generator: torch.Generator | list[torch.Generator]) -> torch.Tensor:
    """Draw one token per row from softmax(scaled) after top-k / top-p truncation (a list: one generator per row)."""
    if params.top_k and params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(scaled, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass (the first always stays).
        drop = (probs.cumsum(-1) - probs) > params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, sorted_index, sorted_logits)
    probs = torch.softmax(scaled, dim=-1)
    if isinstance(generator, list):
        return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generator)])
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _stop_hit(tokenizer: Any, tail: list[int], stops: tuple[str, ...]) -> str | None:
    """The stop string that the latest token completed, if any (checked every step, so only the tail matters)."""
    text = tokenizer.decode(tail, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    for stop in stops:
        if stop in text:
            return stop
    return None

