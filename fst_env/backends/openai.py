"""Generation through an OpenAI-compatible HTTP server (vLLM, ``transformers serve``, llama.cpp, OpenAI...).

Two layers, standard library only (``urllib``, threads):

- :class:`OpenAIClient`: the HTTP core. ``POST {base_url}{path}`` with a JSON body, retries with exponential
  backoff on connection errors, timeouts, 408/409/425/429 and 500/502/503/504 (the server's numeric
  ``Retry-After`` wins when it sends one), and errors that name the URL and the model: 401/403 raise
  :class:`EndpointAuthError`, 404 :class:`EndpointNotFoundError` (both at once, never retried), other 4xx
  :class:`EndpointRequestError`, exhausted retries :class:`EndpointError` (:class:`EndpointTimeoutError` when
  the last attempt timed out). The reflection LM (``fst_env.agents.reflection.from_openai``) uses it too.
- :class:`OpenAIBackend`: the :class:`~fst_env.backends.base.GenerationBackend` protocol on top of it, for
  frozen-policy agents, evaluation against a served model and the reflection LM.

How prompts reach a chat endpoint. ``generate`` takes prompts as strings, but a chat endpoint takes messages
and applies the *server's* chat template. So with ``chat=True`` (the default) :meth:`OpenAIBackend.apply_chat_template`
does not render anything: it returns a marker string (:data:`CHAT_MARKER` followed by the JSON of the messages)
that ``generate`` decodes back into the messages it sends to ``/v1/chat/completions``. Any other string given
to ``generate`` is sent as one user message, so a plain question works too. :meth:`OpenAIBackend.generate_messages`
takes the messages directly. With ``chat=False`` prompts are raw text for ``/v1/completions``; then
``apply_chat_template`` renders with a local tokenizer (``tokenizer=``, or the policy's via :meth:`for_policy`).

What comes back, and what it can feed. ``Generation.text`` always. ``Generation.logprobs`` holds the per-token
log-probs the server returned (``logprobs=True`` is requested; vLLM and OpenAI return them, ``transformers serve``
ignores the field), else ``[]``. Token ids are not part of the OpenAI API: ``prompt_ids`` / ``completion_ids``
are filled only when the server sends them (vLLM with ``extra_body={"return_token_ids": True}``), else ``[]``.
Note that vLLM's log-probs are those of the raw model distribution unless it runs with
``--logprobs-mode processed_logprobs``, not necessarily ``log_softmax(logits / T)`` as
:mod:`fst_env.backends.base` specifies. Either way the served weights are frozen from our side: this backend
cannot serve the slow learner's updated weights (``update_weights`` raises, ``trainable`` is False); train with
the ``hf`` or ``vllm`` backend.

Sampling: ``max_new_tokens`` -> ``max_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``stop``, ``seed``;
``top_k`` is sent only when set (it is a vLLM extension that strict servers reject). Prompt ``i`` of a batch gets
seed ``params.seed + i``, so a GRPO group of identical prompts gets distinct samples while the same prompts and
seed ask for the same completions (whether they come back identical is up to the server: ``transformers serve``
seeds one global RNG, so concurrent requests are only reproducible with ``max_workers=1``). Stop strings are
enforced on the returned text as well: text is cut at the earliest stop string found (kept when
``include_stop``), and a stop the server stripped but named (vLLM's ``stop_reason``) is put back when
``include_stop``. A batch is sent as parallel requests on a small thread pool; results keep the input order.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from fst_env.backends.base import Generation, Message, SamplingParams

__all__ = ["CHAT_MARKER", "RETRY_STATUS", "EndpointAuthError", "EndpointConfigError", "EndpointError",
           "EndpointNotFoundError", "EndpointRequestError", "EndpointTimeoutError", "OpenAIBackend", "OpenAIClient",
           "chat_text", "decode_chat_prompt", "encode_chat_prompt", "first_choice"]

#: HTTP statuses that a later attempt may get past (rate limits, overload, gateway trouble).
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

#: Prefix of the prompts :meth:`OpenAIBackend.apply_chat_template` returns in chat mode; the JSON of the messages
#: follows. Starts with a control character no chat template emits, so rendered text is never mistaken for it.
CHAT_MARKER = "\x1e<fst-chat-messages>"


class EndpointError(RuntimeError):
    """A request to an OpenAI-compatible endpoint failed (after retries, or with an unusable reply)."""


class EndpointConfigError(EndpointError):
    """A request that can never succeed as configured (bad credentials, wrong URL or model): never retried."""


class EndpointAuthError(EndpointConfigError):
    """The endpoint refused the credentials (HTTP 401 or 403)."""


class EndpointNotFoundError(EndpointConfigError):
    """The endpoint or the model does not exist (HTTP 404)."""


class EndpointRequestError(EndpointError):
    """The endpoint rejected this request (a 4xx other than 401/403/404, e.g. a prompt too long): not retried."""


class EndpointTimeoutError(EndpointError):
    """Every attempt ran past the timeout (the last one did, at least)."""


# ---------------------------------------------------------------------------------------------- HTTP core
class OpenAIClient:
    """The HTTP core shared by :class:`OpenAIBackend` and the reflection LM: JSON POSTs with retries.

    ``base_url`` is the API root (e.g. ``http://127.0.0.1:8000/v1``). ``api_key`` defaults to the
    ``OPENAI_API_KEY`` environment variable and may be absent (local servers). Attempt ``k`` (from 0) that fails
    in a retryable way is followed by a pause of ``min(backoff * 2**k, max_backoff)`` seconds, or the server's
    ``Retry-After`` (also capped); ``max_retries`` retries at most. ``label`` starts every error message (e.g.
    "reflection endpoint"). Thread-safe: it holds no per-request state.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 120.0, max_retries: int = 4,
                 backoff: float = 1.0, max_backoff: float = 30.0, label: str = "OpenAI endpoint",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://localhost:8000/v1, got {base_url!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not (isinstance(backoff, (int, float)) and backoff >= 0 and isinstance(max_backoff, (int, float))
                and max_backoff >= 0):
            raise ValueError(f"backoff and max_backoff must be numbers >= 0, got {backoff!r}, {max_backoff!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.label = label
        self.sleep = sleep
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    def url(self, path: str) -> str:
        """The full URL of an API path such as ``/chat/completions``."""
        return self.base_url + "/" + path.lstrip("/")

    def where(self, path: str, model: str) -> str:
        """How error messages name a request: label, URL and model."""
        return f"{self.label} {self.url(path)} (model {model!r})"

    def post(self, path: str, body: Mapping[str, Any], *, model: str,
             cancel: threading.Event | None = None) -> dict[str, Any]:
        """The JSON object the server answers to ``body`` at ``path``, retrying transient failures.

        ``model`` only names the request in errors. A set ``cancel`` event stops further attempts (a batch sets
        it when one of its requests has failed for good).
        """
        url = self.url(path)
        data = json.dumps(body).encode("utf-8")
        last_problem, timed_out = "", False
        for attempt in range(self.max_retries + 1):
            if cancel is not None and cancel.is_set():
                raise EndpointError(f"{self.where(path, model)}: cancelled after {attempt} attempts because "
                                    f"another request of the batch failed")
            request = urllib.request.Request(url, data=data, headers=self._headers, method="POST")
            retry_after: float | None = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                return self._decode(raw, path, model)
            except urllib.error.HTTPError as err:
                detail = _error_detail(err)
                if err.code in (401, 403):
                    raise EndpointAuthError(f"{self.where(path, model)} refused the credentials (HTTP {err.code}): "
                                            f"{detail}. Check api_key (or OPENAI_API_KEY).") from None
                if err.code == 404:
                    raise EndpointNotFoundError(f"{self.where(path, model)} answered 404: {detail}. Check base_url "
                                                f"(it should end in /v1) and the model name the server serves."
                                                ) from None
                if err.code not in RETRY_STATUS:
                    raise EndpointRequestError(f"{self.where(path, model)} answered HTTP {err.code}: {detail}"
                                               ) from None
                last_problem, timed_out = f"HTTP {err.code}: {detail}", False
                retry_after = _retry_after(err)
            except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as err:
                # URLError wraps refused connections, DNS failures and connect timeouts; TimeoutError is a read
                # timeout; HTTPException covers a server that died mid-reply (RemoteDisconnected, IncompleteRead).
                reason = getattr(err, "reason", err)
                timed_out = isinstance(reason, TimeoutError) or isinstance(err, TimeoutError)
                last_problem = (f"timed out after {self.timeout:g} s" if timed_out
                                else f"{type(err).__name__}: {reason}")
            if attempt < self.max_retries:
                delay = retry_after if retry_after is not None else self.backoff * (2 ** attempt)
                self.sleep(min(delay, self.max_backoff))
        error = EndpointTimeoutError if timed_out else EndpointError
        raise error(f"{self.where(path, model)} failed after {self.max_retries + 1} attempts; "
                    f"last error: {last_problem}")

    def _decode(self, raw: bytes, path: str, model: str) -> dict[str, Any]:
        try:
            payload = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise EndpointError(f"{self.where(path, model)} sent a reply that is not JSON: "
                                f"{raw[:300].decode('utf-8', errors='replace')!r}") from None
        if not isinstance(payload, dict):
            raise EndpointError(f"{self.where(path, model)} sent a JSON reply that is not an object: {payload!r:.300}")
        return payload


def _error_detail(err: urllib.error.HTTPError) -> str:
    """The server's error message (OpenAI ``{"error": {"message": ...}}``, FastAPI ``{"detail": ...}`` or the raw
    body), shortened."""
    try:
        raw = err.read()
    except OSError:
        raw = b""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        message = payload.get("error", payload.get("detail", payload))
        if isinstance(message, dict):
            message = message.get("message", message)
        text = str(message)
    return (text or str(err.reason or "") or "no details")[:300]


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    """The ``Retry-After`` header in seconds, when the server sent a numeric one."""
    value = err.headers.get("Retry-After") if err.headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def first_choice(payload: Mapping[str, Any], where: str, wanted: str = "message.content") -> dict[str, Any]:
    """``payload["choices"][0]`` of a completions reply; an :class:`EndpointError` naming ``where`` and the
    ``wanted`` field otherwise."""
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise EndpointError(f"{where} sent a reply without choices[0].{wanted}: {json.dumps(payload)[:300]!r}")
    return choices[0]


def chat_text(choice: Mapping[str, Any], where: str) -> str:
    """The assistant text of a chat-completions choice (``""`` for a null content, e.g. a pure tool call)."""
    message = choice.get("message")
    if not isinstance(message, dict) or "content" not in message:
        raise EndpointError(f"{where} sent a reply without choices[0].message.content: {json.dumps(choice)[:300]!r}")
    content = message["content"]
    if content is None:
        return ""
    if not isinstance(content, str):
        raise EndpointError(f"{where} sent non-text content: {content!r:.300}")
    return content


# ---------------------------------------------------------------------------------------------- chat prompts
def encode_chat_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """The marker prompt carrying ``messages`` (see the module docstring)."""
    return CHAT_MARKER + json.dumps(_check_messages(messages, "apply_chat_template"), ensure_ascii=False)


def decode_chat_prompt(prompt: str) -> list[Message] | None:
    """The messages a marker prompt carries, or ``None`` when ``prompt`` is ordinary text."""
    if not prompt.startswith(CHAT_MARKER):
        return None
    try:
        messages = json.loads(prompt[len(CHAT_MARKER):])
    except ValueError as err:
        raise ValueError(f"OpenAIBackend: a chat-marker prompt holds broken JSON ({err}); build prompts with "
                         f"apply_chat_template and do not edit them") from None
    return _check_messages(messages, "generate")


def _check_messages(messages: Any, where: str) -> list[Message]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise TypeError(f"OpenAIBackend.{where}: messages must be a non-empty list of dicts, "
                        f"got {type(messages).__name__}")
    out: list[Message] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise TypeError(f"OpenAIBackend.{where}: message {i} must be a dict with str 'role' and 'content', "
                            f"got {message!r:.200}")
        out.append(dict(message))
    return out


# ---------------------------------------------------------------------------------------------- the backend
class OpenAIBackend:
    """Generation backend that sends each prompt to an OpenAI-compatible server (see the module docstring).

    ``model`` is the name the server serves (``set_adapter(name)`` switches requests to another served name,
    which is how vLLM exposes LoRA adapters; ``None`` goes back to ``model``). ``chat`` picks
    ``/v1/chat/completions`` (messages) or ``/v1/completions`` (raw text). ``timeout`` is per request,
    ``max_retries`` / ``backoff`` / ``max_backoff`` as in :class:`OpenAIClient`. ``max_workers`` requests are in
    flight at once. ``logprobs`` asks for per-token log-probs (turn it off for a server that rejects the field).
    ``extra_body`` is merged into every request (server extensions such as vLLM's ``return_token_ids``).
    ``tokenizer`` renders chat prompts locally when ``chat=False``. ``generate`` raises an
    :class:`EndpointError` subclass when a request fails for good; the rest of the batch is then cancelled.
    """

    #: This backend cannot serve trainer weights, so it cannot feed the slow learner.
    trainable = False

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, timeout: float = 120.0,
                 max_retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0, chat: bool = True,
                 max_workers: int = 8, logprobs: bool = True, extra_body: Mapping[str, Any] | None = None,
                 tokenizer: Any = None, sleep: Callable[[float], None] = time.sleep) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError(f"OpenAIBackend: model must be the non-empty name the server serves, got {model!r}")
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"OpenAIBackend: max_workers must be an int >= 1, got {max_workers!r}")
        try:
            self.client = OpenAIClient(base_url, api_key, timeout=timeout, max_retries=max_retries, backoff=backoff,
                                       max_backoff=max_backoff, label="OpenAI endpoint", sleep=sleep)
        except ValueError as err:
            raise ValueError(f"OpenAIBackend: {err}") from None
        self.model = model
        self.chat = bool(chat)
        self.max_workers = max_workers
        self.logprobs = bool(logprobs)
        self.extra_body = dict(extra_body or {})
        self.tokenizer = tokenizer
        self._served_model = model

    @classmethod
    def for_policy(cls, policy: Any, **kwargs: Any) -> OpenAIBackend:
        """A backend for ``make_backend("openai", policy, base_url=..., model=...)``: the endpoint serves its own
        weights, so only the policy's tokenizer is used (to render prompts when ``chat=False``)."""
        if "tokenizer" not in kwargs and policy is not None:
            kwargs["tokenizer"] = getattr(policy, "tokenizer", None)
        return cls(**kwargs)

    def __repr__(self) -> str:
        return (f"OpenAIBackend({self.client.base_url!r}, model={self._served_model!r}, "
                f"endpoint={'chat' if self.chat else 'completions'})")

    # ------------------------------------------------------------------------------------------- protocol
    def apply_chat_template(self, messages: list[Message], *, add_generation_prompt: bool = True) -> str:
        """A prompt for :meth:`generate`: the messages marker (chat mode) or text rendered by the local tokenizer."""
        if not self.chat:
            return self._render(_check_messages(messages, "apply_chat_template"), add_generation_prompt)
        if not add_generation_prompt:
            raise ValueError("OpenAIBackend.apply_chat_template: a chat endpoint always answers as the assistant; "
                             "add_generation_prompt=False needs chat=False and a tokenizer")
        return encode_chat_prompt(messages)

    def update_weights(self, model: Any = None) -> None:
        """Always raises: the server's weights cannot be replaced from here (train with the hf or vllm backend)."""
        raise NotImplementedError(f"{self!r} serves a frozen model: it cannot load the trainer's weights, so it "
                                  f"cannot feed the slow learner. Use backend 'hf' or 'vllm' for training, or "
                                  f"reload the server with the new weights yourself.")

    def set_adapter(self, name: str | None) -> None:
        """Send later requests to the served model called ``name`` (vLLM serves each LoRA adapter under its own
        name), or back to ``model`` for ``None``."""
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"OpenAIBackend.set_adapter: name must be a served model name or None, got {name!r}")
        self._served_model = name if name is not None else self.model

    def generate(self, prompts: Sequence[str], params: SamplingParams | None = None) -> list[Generation]:
        """One :class:`Generation` per prompt, in order (marker prompts become chat messages; see the module doc)."""
        if isinstance(prompts, str):
            raise TypeError("OpenAIBackend.generate: prompts must be a list of str, got a single str")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"OpenAIBackend.generate: prompt {i} must be str, got {type(prompt).__name__}")
        requests: list[tuple[str, dict[str, Any]]] = []
        for prompt in prompts:
            messages = decode_chat_prompt(prompt)
            if self.chat:
                requests.append(("/chat/completions",
                                 {"messages": messages or [{"role": "user", "content": prompt}]}))
            else:
                requests.append(("/completions", {"prompt": self._render(messages, True) if messages else prompt}))
        return self._run(requests, (params or SamplingParams()).validate())

    def generate_messages(self, conversations: Sequence[Sequence[Message]],
                          params: SamplingParams | None = None) -> list[Generation]:
        """One :class:`Generation` per conversation (a list of role/content messages), in order."""
        if isinstance(conversations, (str, bytes)) or not isinstance(conversations, Sequence):
            raise TypeError(f"OpenAIBackend.generate_messages: conversations must be a list of message lists, "
                            f"got {type(conversations).__name__}")
        checked = [_check_messages(c, "generate_messages") for c in conversations]
        if self.chat:
            requests = [("/chat/completions", {"messages": c}) for c in checked]
        else:
            requests = [("/completions", {"prompt": self._render(c, True)}) for c in checked]
        return self._run(requests, (params or SamplingParams()).validate())

    # ------------------------------------------------------------------------------------------- internals
    def _render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        if self.tokenizer is None:
            raise ValueError(f"{self!r}: chat=False sends raw text to /v1/completions, so chat messages must be "
                             f"rendered locally; pass tokenizer= (or build with OpenAIBackend.for_policy)")
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def _sampling_body(self, params: SamplingParams, index: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._served_model, "max_tokens": params.max_new_tokens,
                                "temperature": float(params.temperature), "top_p": float(params.top_p)}
        if params.top_k:
            body["top_k"] = params.top_k
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed + index
        if self.logprobs:
            # Chat takes a flag; the legacy completions API takes how many alternatives to list per token.
            body["logprobs"] = True if self.chat else 1
        return body

    def _run(self, requests: list[tuple[str, dict[str, Any]]], params: SamplingParams) -> list[Generation]:
        if not requests:
            return []
        bodies = [(path, {**self._sampling_body(params, i), **payload, **self.extra_body})
                  for i, (path, payload) in enumerate(requests)]
        cancel = threading.Event()
        model = self._served_model

        def one(path: str, body: dict[str, Any]) -> Generation:
            reply = self.client.post(path, body, model=model, cancel=cancel)
            return self._generation(reply, path, model, params)

        if len(bodies) == 1:
            return [one(*bodies[0])]
        pool = ThreadPoolExecutor(max_workers=min(self.max_workers, len(bodies)), thread_name_prefix="openai-backend")
        try:
            futures = [pool.submit(one, path, body) for path, body in bodies]
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # the first failed request in input order
            return [future.result() for future in futures]
        finally:
            # On failure (or interrupt) stop the rest of the batch: queued requests are dropped and running ones
            # make no further attempts; on success this changes nothing.
            cancel.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def _generation(self, reply: dict[str, Any], path: str, model: str, params: SamplingParams) -> Generation:
        where = self.client.where(path, model)
        choice = first_choice(reply, where, "message.content" if self.chat else "text")
        if self.chat:
            text = chat_text(choice, where)
            logprobs = _chat_logprobs(choice.get("logprobs"))
            prompt_ids = reply.get("prompt_token_ids")
        else:
            text = choice.get("text")
            if not isinstance(text, str):
                raise EndpointError(f"{where} sent a reply without choices[0].text: {json.dumps(choice)[:300]!r}")
            logprobs = _completion_logprobs(choice.get("logprobs"))
            prompt_ids = choice.get("prompt_token_ids")
        completion_ids = choice.get("token_ids")
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        stops = tuple(params.stop)
        matched: str | None = None
        hits = [(text.find(s), s) for s in stops if s in text]
        if hits:
            # The server may return the stop string (transformers serve) or ignore the field: enforce it here.
            index, matched = min(hits)
            text = text[:index + len(matched)] if params.include_stop else text[:index]
            finish = "stop"
        elif finish == "stop" and isinstance(choice.get("stop_reason"), str) and choice["stop_reason"] in stops:
            # vLLM strips the stop string and names it in stop_reason.
            matched = choice["stop_reason"]
            text = text + matched if params.include_stop else text
        return Generation(text=text, prompt_ids=_int_list(prompt_ids), completion_ids=_int_list(completion_ids),
                          logprobs=logprobs, finish_reason=finish, stop=matched)


def _chat_logprobs(block: Any) -> list[float]:
    """Per-token log-probs of a chat choice (``logprobs.content[i].logprob``), ``[]`` when absent."""
    content = block.get("content") if isinstance(block, dict) else None
    if not isinstance(content, list):
        return []
    return [float(item["logprob"]) for item in content if isinstance(item, dict) and item.get("logprob") is not None]


def _completion_logprobs(block: Any) -> list[float]:
    """Per-token log-probs of a legacy completions choice (``logprobs.token_logprobs``), ``[]`` when absent."""
    values = block.get("token_logprobs") if isinstance(block, dict) else None
    if not isinstance(values, list):
        return []
    return [float(v) for v in values if v is not None]


def _int_list(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list) else []
