"""Reflection LMs for the fast learner: adapters that turn a model or an endpoint into ``Callable[[str], str]``.

A reflection LM reads gepa's reflection prompt (the current instruction plus examples of inputs, outputs and
feedback) and replies with a new instruction. Three sources are supported:

- :func:`from_transformers`: a local ``transformers`` model (by default the policy's own base model: a peft
  model reflects with its adapter disabled, so the fast learner does not lean on the weights being trained);
- :func:`from_openai`: any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, OpenAI...),
  over plain ``urllib`` with retries and clear errors
  (the HTTP core is :class:`fst_env.backends.openai.OpenAIClient`, shared with the OpenAI generation backend);
- any plain callable ``str -> str``, used as is (:func:`as_reflection_lm`).

:func:`parse_reflection_output` extracts the new text from a reply (gepa's fenced-block extractor) and rejects
the degenerate replies small models produce (empty, an echo of the parent or of the prompt, runaway repetition),
so the caller keeps the parent instead of evaluating garbage. Torch is imported lazily (only when a local model
generates).
"""

from __future__ import annotations

import contextlib
import re
import time
import zlib
from collections.abc import Callable
from typing import Any

from gepa.strategies.instruction_proposal import InstructionProposalSignature

from fst_env.backends.openai import (
    EndpointAuthError,
    EndpointConfigError,
    EndpointError,
    EndpointNotFoundError,
    OpenAIClient,
    chat_text,
    first_choice,
)
from fst_env.peft_utils import is_peft

#: What the fast learner calls: reflection prompt in, reply text out.
ReflectionLM = Callable[[str], str]


class ReflectionLMError(RuntimeError):
    """A reflection call failed (after retries, or with an unusable reply)."""


class ReflectionConfigError(ReflectionLMError):
    """A reflection call can never succeed as configured (bad credentials, unknown model): do not retry it."""


class ReflectionAuthError(ReflectionConfigError):
    """The endpoint refused the credentials (HTTP 401 or 403)."""


class ReflectionModelNotFoundError(ReflectionConfigError):
    """The endpoint or the model does not exist (HTTP 404)."""


# ---------------------------------------------------------------------------------------------- plain callables
def as_reflection_lm(lm: Any) -> ReflectionLM:
    """``lm`` itself when it is a callable ``str -> str``; a TypeError naming what was given otherwise."""
    if callable(lm):
        return lm
    raise TypeError(f"reflection LM must be a callable str -> str (or built with from_transformers / from_openai), "
                    f"got {type(lm).__name__}")


# ---------------------------------------------------------------------------------------------- transformers
def from_transformers(model: Any, tokenizer: Any, max_new_tokens: int = 512, *, disable_adapter: bool = True,
                      do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                      max_prompt_tokens: int | None = None) -> ReflectionLM:
    """A reflection LM generating with a local ``transformers`` causal LM.

    The prompt is sent as one user message through the tokenizer's chat template (raw text when the tokenizer
    has none). With ``disable_adapter`` and a peft model, generation runs inside ``model.disable_adapter()``, so
    the base model reflects. The model is put in eval mode for the call (no dropout) and its mode restored.
    ``max_prompt_tokens`` keeps the last tokens of an over-long prompt (the instructions to answer are at the end).
    Greedy by default, so the same prompt gives the same reply (the returned callable's ``deterministic``
    attribute says so; the fast learner then does not re-ask a prompt whose reply it rejected).
    """
    if max_new_tokens < 1:
        raise ValueError(f"from_transformers: max_new_tokens must be >= 1, got {max_new_tokens}")
    peft_wrapped = is_peft(model)

    def reflect(prompt: str) -> str:
        import torch  # lazy: importing this module must stay cheap

        if not isinstance(prompt, str):
            raise TypeError(f"reflection LM (transformers): prompt must be str, got {type(prompt).__name__}")
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        else:
            encoded = tokenizer(prompt, return_tensors="pt")
        input_ids = encoded["input_ids"]
        attention_mask = encoded.get("attention_mask")
        if max_prompt_tokens is not None and input_ids.shape[1] > max_prompt_tokens:
            input_ids = input_ids[:, -max_prompt_tokens:]
            attention_mask = attention_mask[:, -max_prompt_tokens:] if attention_mask is not None else None
        device = next(model.parameters()).device
        kwargs: dict[str, Any] = {"input_ids": input_ids.to(device), "max_new_tokens": max_new_tokens,
                                  "do_sample": do_sample}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(device)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token_id", None) is not None:
            kwargs["pad_token_id"] = tokenizer.eos_token_id
        was_training = bool(getattr(model, "training", False))
        adapter_off = model.disable_adapter() if (peft_wrapped and disable_adapter) else contextlib.nullcontext()
        try:
            model.eval()
            with adapter_off, torch.no_grad():
                output = model.generate(**kwargs)
        finally:
            if was_training:
                model.train()
        return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)

    # Greedy decoding answers a prompt the same way every time: the fast learner may skip repeating it.
    reflect.deterministic = not do_sample  # type: ignore[attr-defined]
    return reflect


# ---------------------------------------------------------------------------------------------- OpenAI-compatible
def from_openai(base_url: str, model: str, api_key: str | None = None, *, timeout: float = 120.0,
                max_retries: int = 4, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                temperature: float | None = None, max_tokens: int | None = None,
                extra_body: dict[str, Any] | None = None,
                sleep: Callable[[float], None] = time.sleep) -> ReflectionLM:
    """A reflection LM calling ``POST {base_url}/chat/completions`` on an OpenAI-compatible server.

    ``base_url`` is the API root (e.g. ``http://localhost:8000/v1``). ``api_key`` defaults to the
    ``OPENAI_API_KEY`` environment variable and may be absent (local servers). The HTTP work is
    :class:`fst_env.backends.openai.OpenAIClient`'s: connection errors, timeouts, 429 and 5xx are retried
    ``max_retries`` times with exponential backoff (``backoff_s * 2**attempt``, capped, or the server's
    ``Retry-After``); 401/403 raise :class:`ReflectionAuthError` and 404 :class:`ReflectionModelNotFoundError` at
    once, naming the URL and the model; other failures raise :class:`ReflectionLMError`.
    """
    try:
        client = OpenAIClient(base_url, api_key, timeout=timeout, max_retries=max_retries, backoff=backoff_s,
                              max_backoff=max_backoff_s, label="reflection endpoint", sleep=sleep)
    except ValueError as err:
        raise ValueError(f"from_openai: {err}") from None

    def reflect(prompt: str) -> str:
        if not isinstance(prompt, str):
            raise TypeError(f"reflection LM (openai): prompt must be str, got {type(prompt).__name__}")
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        body.update(extra_body or {})
        try:
            reply = client.post("/chat/completions", body, model=model)
            return chat_text(first_choice(reply, client.where("/chat/completions", model)),
                             client.where("/chat/completions", model))
        except EndpointError as err:
            raise _reflection_error(err) from None

    return reflect


def _reflection_error(err: EndpointError) -> ReflectionLMError:
    """The reflection-side error for an endpoint error (same message; the fast learner branches on these types)."""
    if isinstance(err, EndpointAuthError):
        return ReflectionAuthError(str(err))
    if isinstance(err, EndpointNotFoundError):
        return ReflectionModelNotFoundError(str(err))
    if isinstance(err, EndpointConfigError):
        return ReflectionConfigError(str(err))
    return ReflectionLMError(str(err))


# ---------------------------------------------------------------------------------------------- reply parsing
# Phrases that show the model echoed gepa's reflection prompt instead of answering it.
_PROMPT_ECHO = ("<curr_param>", "<side_info>", "I provided an assistant with the following instructions",
                "Provide the new instructions within")
# A short first line like "Here is the new instruction:" that small models put before an unfenced answer.
_LEAD_IN = re.compile(r"^\s*(?:sure[,!.]?\s*)?(?:here(?:'s| is)|new instructions?|updated instructions?|"
                      r"instructions?)\b[^\n]{0,80}:\s*\n", re.IGNORECASE)


def parse_reflection_output(reply: str, parent_text: str = "", *, min_chars: int = 8,
                            max_chars: int = 20_000) -> tuple[str | None, str]:
    """The new component text in a reflection ``reply``, or ``None`` plus the reason to keep the parent.

    Extraction is gepa's (``InstructionProposalSignature.output_extractor``: the text between the first and
    last fence, language tag dropped, unclosed fences handled, the whole reply when there is no fence), then
    a short lead-in line such as "Here is the new instruction:" is dropped. Rejected: non-str or empty replies,
    fewer than ``min_chars`` or more than ``max_chars`` characters, the parent unchanged, an echo of the
    reflection prompt, and runaway repetition (a sentence repeated three times, or text that compresses more than
    fivefold).
    """
    if not isinstance(reply, str):
        return None, f"reply is not text ({type(reply).__name__})"
    text = InstructionProposalSignature.output_extractor(reply.strip())["new_instruction"]
    if "```" not in reply:
        text = _LEAD_IN.sub("", text, count=1).strip()
    text = text.strip()
    if not text:
        return None, "empty reply"
    if len(text) < min_chars:
        return None, f"reply too short ({len(text)} chars < {min_chars})"
    if len(text) > max_chars:
        return None, f"reply too long ({len(text)} chars > {max_chars})"
    if text == parent_text.strip():
        return None, "reply repeats the current text unchanged"
    if any(marker in text for marker in _PROMPT_ECHO):
        return None, "reply echoes the reflection prompt"
    if _is_repetitive(text):
        return None, "reply is degenerate (runaway repetition)"
    return text, "ok"


def _is_repetitive(text: str) -> bool:
    """True for runaway repetition, the usual failure of small reflection models: a line or sentence (of some
    length) repeated three times or more, or long text that zlib compresses more than fivefold (prose and
    instructions compress about threefold)."""
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) >= 300 and len(zlib.compress(encoded)) * 5 < len(encoded):
        return True
    pieces = [p.strip().lower() for p in re.split(r"\n+|(?<=[.!?])\s+", text)]
    counts: dict[str, int] = {}
    for piece in pieces:
        if len(piece) >= 12:
            counts[piece] = counts.get(piece, 0) + 1
    return any(n >= 3 for n in counts.values())
