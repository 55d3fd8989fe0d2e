"""OpenAIBackend against a REAL OpenAI-compatible server (``transformers serve`` on loopback, tiny model), plus
unit tests of the error and parsing paths against a scripted stdlib ``http.server`` (named ``test_unit_*``):
``transformers serve`` has no API keys, answers an unknown model with 400 (pinned) and never returns log-probs
or token ids, so those paths are checked against replies shaped like vLLM's and OpenAI's."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from fst_env.agents.reflection import from_openai
from fst_env.backends import BACKENDS, GenerationBackend, SamplingParams, make_backend
from fst_env.backends.hf import HFBackend
from fst_env.backends.openai import (
    CHAT_MARKER,
    EndpointAuthError,
    EndpointError,
    EndpointNotFoundError,
    EndpointRequestError,
    EndpointTimeoutError,
    OpenAIBackend,
)

if TYPE_CHECKING:
    from conftest import ServeProcess  # tests/backends/conftest.py (pytest loads it; tests are not a package)

QUESTIONS = ["a", "What is 2+2?", "zzzz", "Tell me a story about a cat."]
GREEDY = SamplingParams(max_new_tokens=8, temperature=0)


def _chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]


def _backend(server: ServeProcess, **kwargs: Any) -> OpenAIBackend:
    return OpenAIBackend(server.url, server.model, **{"timeout": 60.0, "max_retries": 2, "backoff": 0.2, **kwargs})


@pytest.fixture(scope="module")
def local_backend(served_model_in_process: HFBackend) -> HFBackend:
    """The served model in-process (see conftest): the server's greedy answers must equal its answers."""
    return served_model_in_process


# ---------------------------------------------------------------------------------------------- real server
def test_chat_round_trip_matches_the_same_model_in_process(openai_server: ServeProcess,
                                                          local_backend: HFBackend) -> None:
    backend = make_backend("openai", None, base_url=openai_server.url, model=openai_server.model)
    assert isinstance(backend, GenerationBackend) and "openai" in BACKENDS
    prompt = backend.apply_chat_template(_chat(QUESTIONS[1]))
    assert prompt.startswith(CHAT_MARKER)
    [generation] = backend.generate([prompt], GREEDY)
    expected = local_backend.generate([local_backend.apply_chat_template(_chat(QUESTIONS[1]))], GREEDY)[0]
    # The server applied the same chat template to the decoded messages and decoded the same greedy tokens.
    assert generation.text == expected.text and generation.text
    assert generation.finish_reason == expected.finish_reason == "length"
    # transformers serve returns neither log-probs nor token ids: such a backend cannot feed the slow learner.
    assert generation.logprobs == [] and generation.prompt_ids == [] and generation.completion_ids == []
    assert backend.generate_messages([_chat(QUESTIONS[1])], GREEDY)[0].text == expected.text
    # A plain string is one user message.
    plain = backend.generate([QUESTIONS[0]], GREEDY)[0].text
    assert plain == backend.generate_messages([[{"role": "user", "content": QUESTIONS[0]}]], GREEDY)[0].text


def test_completions_endpoint_renders_with_the_policy_tokenizer(openai_server: ServeProcess,
                                                                local_backend: HFBackend) -> None:
    backend = make_backend("openai", local_backend.policy, base_url=openai_server.url, model=openai_server.model,
                           chat=False)
    prompt = backend.apply_chat_template(_chat(QUESTIONS[2]))
    assert prompt == local_backend.apply_chat_template(_chat(QUESTIONS[2]))  # rendered locally, raw text
    expected = local_backend.generate([prompt], GREEDY)[0].text
    assert backend.generate([prompt], GREEDY)[0].text == expected


def test_batch_runs_in_parallel_and_keeps_the_input_order(openai_server: ServeProcess,
                                                         local_backend: HFBackend) -> None:
    backend = _backend(openai_server, max_workers=4)
    prompts = [backend.apply_chat_template(_chat(q)) for q in QUESTIONS]
    expected = [g.text for g in local_backend.generate([local_backend.apply_chat_template(_chat(q))
                                                        for q in QUESTIONS], GREEDY)]
    assert len(set(expected)) == len(QUESTIONS)  # distinct answers, so a shuffled batch would show
    assert [g.text for g in backend.generate(prompts, GREEDY)] == expected
    assert backend.generate([], GREEDY) == []


def test_stop_strings_cut_the_completion(openai_server: ServeProcess) -> None:
    backend = _backend(openai_server, max_workers=1)  # the server seeds one global RNG: one request at a time
    prompt = backend.apply_chat_template(_chat(QUESTIONS[0]))
    for seed in range(20):
        sampled = SamplingParams(max_new_tokens=40, temperature=1.0, seed=seed)
        baseline = backend.generate([prompt], sampled)[0].text
        # A stop string of two printable ASCII characters, not at the very start (random bytes are mostly not).
        found = re.search(r"[!-~]{2}", baseline[2:])
        if found:
            break
    else:
        pytest.fail("no printable pair in 20 sampled completions of the tiny model")
    assert backend.generate([prompt], sampled)[0].text == baseline  # same seed, same completion
    stop = found.group(0)
    cut = baseline.index(stop)
    kept = backend.generate([prompt], SamplingParams(max_new_tokens=40, temperature=1.0, seed=seed, stop=[stop]))[0]
    assert (kept.text, kept.stop, kept.finish_reason) == (baseline[:cut + len(stop)], stop, "stop")
    dropped = backend.generate([prompt], SamplingParams(max_new_tokens=40, temperature=1.0, seed=seed, stop=[stop],
                                                        include_stop=False))[0]
    assert (dropped.text, dropped.stop) == (baseline[:cut], stop)


def test_unknown_model_fails_at_once_naming_url_and_model(openai_server: ServeProcess) -> None:
    backend = OpenAIBackend(openai_server.url, "no-such-model", max_retries=3, backoff=5.0)
    start = time.monotonic()
    with pytest.raises(EndpointRequestError) as info:
        backend.generate([backend.apply_chat_template(_chat("hi"))], GREEDY)
    message = str(info.value)
    assert f"{openai_server.url}/chat/completions" in message and "'no-such-model'" in message
    assert "pinned" in message  # the server's own explanation is passed on
    assert time.monotonic() - start < 5.0  # not retried (one backoff would take 5 s)


def test_wrong_base_url_is_a_404_naming_url_and_model(openai_server: ServeProcess) -> None:
    backend = OpenAIBackend(openai_server.root, openai_server.model, max_retries=3, backoff=5.0)  # no /v1
    with pytest.raises(EndpointNotFoundError) as info:
        backend.generate(["hi"], GREEDY)
    message = str(info.value)
    assert f"{openai_server.root}/chat/completions" in message and repr(openai_server.model) in message
    assert "end in /v1" in message


def test_reflection_lm_shares_the_client(openai_server: ServeProcess, local_backend: HFBackend) -> None:
    lm = from_openai(openai_server.url, openai_server.model, temperature=0.0, max_tokens=8)
    expected = local_backend.generate([local_backend.apply_chat_template([{"role": "user", "content": "reflect"}])],
                                      GREEDY)[0].text
    assert lm("reflect") == expected


def test_timeouts_are_retried_then_reported(openai_server: ServeProcess) -> None:
    sleeps: list[float] = []
    backend = _backend(openai_server, timeout=0.02, max_retries=1, backoff=0.1, sleep=sleeps.append)
    long_greedy = SamplingParams(max_new_tokens=120, temperature=0)
    with pytest.raises(EndpointTimeoutError, match=r"failed after 2 attempts; last error: timed out after 0.02 s"):
        backend.generate([backend.apply_chat_template(_chat("time me out"))], long_greedy)
    assert sleeps == [0.1]
    # The server still finishes the abandoned generations; wait for them so later tests see an idle server.
    assert _backend(openai_server).generate(["drain"], SamplingParams(max_new_tokens=1))[0].finish_reason


@pytest.mark.slow  # a server restart: ~15 s on two shared cores
def test_requests_are_retried_while_the_server_restarts(openai_server: ServeProcess,
                                                        local_backend: HFBackend) -> None:
    """Kill the server, send a request, start the server again: the request succeeds after retries."""
    sleeps: list[float] = []

    def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    backend = _backend(openai_server, max_retries=200, backoff=0.1, max_backoff=0.5, sleep=recording_sleep)
    prompt = backend.apply_chat_template(_chat(QUESTIONS[3]))
    openai_server.stop()
    restarter = threading.Timer(0.5, openai_server.start, kwargs={"wait": False})
    restarter.start()
    try:
        [generation] = backend.generate([prompt], GREEDY)
    finally:
        restarter.join()
        openai_server.wait_ready()  # leave a running server behind for the fixture's teardown
    expected = local_backend.generate([local_backend.apply_chat_template(_chat(QUESTIONS[3]))], GREEDY)[0].text
    assert generation.text == expected
    assert sleeps[:3] == [0.1, 0.2, 0.4] and len(sleeps) > 3  # connection refused, retried with backoff


# ---------------------------------------------------------------------------------------------- scripted unit server
Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]


class Script:
    """What the unit server answers: ``answer(path, headers, body) -> (status, json[, headers])``, plus a record
    of the requests and of the most requests in flight at once."""

    def __init__(self, answer: Callable[[str, dict[str, str], dict[str, Any]], Reply], delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()


@pytest.fixture
def unit_server() -> Iterator[Callable[..., tuple[str, Script]]]:
    """Start scripted chat-completions servers on 127.0.0.1; each call returns its API root and script."""
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Callable[..., Reply], delay: float = 0.0) -> tuple[str, Script]:
        script = Script(answer, delay)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with script.lock:
                    script.requests.append((self.path, dict(self.headers), body))
                    script.in_flight += 1
                    script.max_in_flight = max(script.max_in_flight, script.in_flight)
                try:
                    time.sleep(script.delay)
                    status, payload, *extra = script.answer(self.path, dict(self.headers), body)
                finally:
                    with script.lock:
                        script.in_flight -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1", script

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _chat_reply(content: str, **choice: Any) -> tuple[int, dict[str, Any]]:
    return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": "stop", **choice}]}


def _echo(path: str, headers: dict[str, str], body: dict[str, Any]) -> Reply:
    return _chat_reply(f"echo:{body['messages'][-1]['content']}")


def test_unit_request_body_maps_the_sampling_params(unit_server: Callable[..., tuple[str, Script]]) -> None:
    url, script = unit_server(_echo)
    backend = OpenAIBackend(url, "served", api_key="k-1", extra_body={"return_token_ids": True})
    params = SamplingParams(max_new_tokens=7, temperature=0.5, top_p=0.9, stop=["</a>"], seed=11)
    out = backend.generate([backend.apply_chat_template(_chat("x")), "y"], params)
    assert [g.text for g in out] == ["echo:x", "echo:y"]
    bodies = sorted((r[2] for r in script.requests), key=lambda b: b["seed"])
    assert bodies[0] == {"model": "served", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "stop": ["</a>"],
                         "seed": 11, "logprobs": True, "messages": _chat("x"), "return_token_ids": True}
    assert bodies[1]["seed"] == 12 and bodies[1]["messages"] == [{"role": "user", "content": "y"}]
    assert all(r[0] == "/v1/chat/completions" and r[1]["Authorization"] == "Bearer k-1" for r in script.requests)
    # top_k only when set; set_adapter switches the served model name (vLLM serves LoRA adapters by name).
    backend.set_adapter("my-lora")
    backend.generate(["z"], SamplingParams(top_k=5, seed=None))
    assert script.requests[-1][2]["model"] == "my-lora" and script.requests[-1][2]["top_k"] == 5
    assert "seed" not in script.requests[-1][2]
    backend.set_adapter(None)
    backend.generate(["z"], SamplingParams())
    assert script.requests[-1][2]["model"] == "served" and "top_k" not in script.requests[-1][2]


def test_unit_batch_requests_are_in_flight_together(unit_server: Callable[..., tuple[str, Script]]) -> None:
    url, script = unit_server(_echo, delay=0.3)
    backend = OpenAIBackend(url, "m", max_workers=3)
    out = backend.generate([str(i) for i in range(6)], SamplingParams())
    assert [g.text for g in out] == [f"echo:{i}" for i in range(6)]
    assert script.max_in_flight == 3  # each request takes 0.3 s, so three at once means they overlapped


def _vllm_reply(*_: Any) -> Reply:
    """A reply shaped like vLLM's with ``return_token_ids``: the stop string stripped and named in stop_reason."""
    status, payload = _chat_reply("The answer is 4", stop_reason="</a>", token_ids=[5, 6, 7],
                                  logprobs={"content": [{"token": t, "logprob": lp} for t, lp in
                                                        (("The", -0.5), (" answer", -1.25), (" is 4", -2.0))]})
    return status, {**payload, "prompt_token_ids": [1, 2]}


def test_unit_logprobs_token_ids_and_stop_reason_are_read(unit_server: Callable[..., tuple[str, Script]]) -> None:
    url, _ = unit_server(_vllm_reply)
    backend = OpenAIBackend(url, "m")
    kept = backend.generate(["q"], SamplingParams(stop=["</a>"]))[0]
    assert (kept.text, kept.stop, kept.finish_reason) == ("The answer is 4</a>", "</a>", "stop")
    assert kept.logprobs == [-0.5, -1.25, -2.0] and kept.completion_ids == [5, 6, 7] and kept.prompt_ids == [1, 2]
    dropped = backend.generate(["q"], SamplingParams(stop=["</a>"], include_stop=False))[0]
    assert (dropped.text, dropped.stop) == ("The answer is 4", "</a>")
    # A server that ignored the stop field: the text is cut here.
    url, _ = unit_server(lambda *a: (200, {"choices": [{"message": {"content": "ab</a>cd</a>"},
                                                          "finish_reason": "length"}]}))
    cut = OpenAIBackend(url, "m").generate(["q"], SamplingParams(stop=["cd", "</a>"]))[0]
    assert (cut.text, cut.stop, cut.finish_reason) == ("ab</a>", "</a>", "stop")


def test_unit_completions_endpoint(unit_server: Callable[..., tuple[str, Script]]) -> None:
    url, script = unit_server(lambda *a: (200, {"choices": [{"text": " four", "finish_reason": "length",
                                                             "logprobs": {"token_logprobs": [-0.1, -0.2]}}]}))
    backend = OpenAIBackend(url, "m", chat=False)
    out = backend.generate(["2+2="], SamplingParams(max_new_tokens=2))[0]
    assert (out.text, out.finish_reason, out.logprobs) == (" four", "length", [-0.1, -0.2])
    path, _, body = script.requests[0]
    assert path == "/v1/completions" and body["prompt"] == "2+2=" and body["logprobs"] == 1
    with pytest.raises(ValueError, match="tokenizer"):
        backend.apply_chat_template(_chat("x"))  # chat=False renders locally and has no tokenizer here


def test_unit_401_is_an_auth_error_and_stops_the_batch(unit_server: Callable[..., tuple[str, Script]]) -> None:
    url, script = unit_server(lambda *a: (401, {"error": {"message": "Invalid API key"}}), delay=0.3)
    backend = OpenAIBackend(url, "tiny", api_key="wrong", max_workers=2, backoff=5.0)
    with pytest.raises(EndpointAuthError) as info:
        backend.generate(["a", "b", "c", "d", "e", "f"], SamplingParams())
    message = str(info.value)
    assert f"{url}/chat/completions" in message and "'tiny'" in message and "Invalid API key" in message
    time.sleep(0.5)
    assert len(script.requests) < 6  # queued requests of the batch were dropped, none retried


def test_unit_404_is_not_found_naming_the_model(unit_server: Callable[..., tuple[str, Script]]) -> None:
    url, script = unit_server(lambda *a: (404, {"error": {"message": "The model `nope` does not exist."}}))
    with pytest.raises(EndpointNotFoundError, match=r"'nope'.*does not exist"):
        OpenAIBackend(url, "nope").generate(["a"], SamplingParams())
    assert len(script.requests) == 1


def test_unit_429_and_503_are_retried_honouring_retry_after(unit_server: Callable[..., tuple[str, Script]]) -> None:
    answers = iter([(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.25"}), (503, {"detail": "busy"}),
                    _chat_reply("done")])
    url, _ = unit_server(lambda *a: next(answers))
    sleeps: list[float] = []
    out = OpenAIBackend(url, "m", backoff=1.0, max_retries=3, sleep=sleeps.append).generate(["a"], SamplingParams())
    assert out[0].text == "done" and sleeps == [0.25, 2.0]  # Retry-After first, then backoff * 2**1
    url, _ = unit_server(lambda *a: (503, {"detail": "still busy"}))
    with pytest.raises(EndpointError, match=r"failed after 3 attempts; last error: HTTP 503: still busy"):
        OpenAIBackend(url, "m", max_retries=2, sleep=lambda s: None).generate(["a"], SamplingParams())


def test_unit_malformed_replies_raise(unit_server: Callable[..., tuple[str, Script]]) -> None:
    url, _ = unit_server(lambda *a: (200, {"unexpected": True}))
    with pytest.raises(EndpointError, match=r"choices\[0\]\.message\.content"):
        OpenAIBackend(url, "m").generate(["a"], SamplingParams())
    url, _ = unit_server(lambda *a: (200, ["not", "an", "object"]))
    with pytest.raises(EndpointError, match="not an object"):
        OpenAIBackend(url, "m").generate(["a"], SamplingParams())


def test_unit_connection_refused_is_retried_then_reported() -> None:
    sleeps: list[float] = []
    with socket.socket() as sock:  # a port nobody listens on once this socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff=0.5,
                            sleep=sleeps.append)
    with pytest.raises(EndpointError, match=r"failed after 3 attempts; last error: URLError"):
        backend.generate(["a"], SamplingParams())
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize("call, error, pattern", [
    (lambda b: b.generate("one string", SamplingParams()), TypeError, "single str"),
    (lambda b: b.generate(["ok", 3], SamplingParams()), TypeError, "prompt 1 must be str, got int"),
    (lambda b: b.generate(["ok"], SamplingParams(max_new_tokens=0)), ValueError, "max_new_tokens"),
    (lambda b: b.generate([CHAT_MARKER + "{broken"], SamplingParams()), ValueError, "broken JSON"),
    (lambda b: b.generate_messages([[{"role": "user"}]], SamplingParams()), TypeError, "'role' and 'content'"),
    (lambda b: b.apply_chat_template([]), TypeError, "non-empty list"),
    (lambda b: b.apply_chat_template(_chat("x"), add_generation_prompt=False), ValueError, "always answers"),
    (lambda b: b.update_weights(), NotImplementedError, "cannot feed the slow learner"),
    (lambda b: b.set_adapter(""), ValueError, "served model name"),
])
def test_unit_bad_input_raises_clear_errors(call: Callable[[OpenAIBackend], Any], error: type[Exception],
                                           pattern: str) -> None:
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m")  # never contacted: every call fails before a request
    with pytest.raises(error, match=pattern):
        call(backend)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"base_url": "localhost:8000/v1"}, "http"), ({"model": ""}, "model"), ({"timeout": 0}, "timeout"),
    ({"max_retries": -1}, "max_retries"), ({"max_workers": 0}, "max_workers"), ({"backoff": -1}, "backoff"),
])
def test_unit_bad_settings_are_rejected(kwargs: dict[str, Any], pattern: str) -> None:
    settings = {"base_url": "http://127.0.0.1:9/v1", "model": "m", **kwargs}
    with pytest.raises(ValueError, match=pattern):
        OpenAIBackend(**settings)


def test_unit_make_backend_needs_the_endpoint() -> None:
    with pytest.raises(TypeError, match="base_url"):
        make_backend("openai", None)
    assert make_backend("openai", None, base_url="http://127.0.0.1:9/v1", model="m").trainable is False



# ---------------------------------------------------------------------------------------------- real vLLM server
@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_server_gives_token_ids_logprobs_stop_reason_and_real_http_errors(vllm_server: ServeProcess,
                                                                              vllm_policy: Any) -> None:
    """The paths transformers serve cannot show, against vLLM's own OpenAI server (skipped without vLLM)."""
    import torch

    tokenizer = vllm_policy.tokenizer
    backend = OpenAIBackend(vllm_server.url, vllm_server.model, api_key="test-key", timeout=120.0,
                            extra_body={"return_token_ids": True})
    messages = _chat(QUESTIONS[1])
    prompt = backend.apply_chat_template(messages)
    sampled = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
    [generation] = backend.generate([prompt], sampled)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert generation.prompt_ids == tokenizer(rendered, add_special_tokens=False).input_ids
    assert 0 < len(generation.completion_ids) == len(generation.logprobs)
    # vLLM's default log-probs are the raw model's (temperature 1 here, so also the sampling distribution's).
    ids = torch.tensor([generation.prompt_ids + generation.completion_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(vllm_policy.model(ids).logits[0].float(), dim=-1)
    start = len(generation.prompt_ids) - 1
    reference = [logprobs[start + i, t].item() for i, t in enumerate(generation.completion_ids)]
    assert generation.logprobs == pytest.approx(reference, abs=2e-3)

    # Stop strings: vLLM strips the stop string and names it in stop_reason; include_stop puts it back.
    longer = SamplingParams(max_new_tokens=40, temperature=1.0, seed=5)
    baseline = backend.generate([prompt], longer)[0].text
    found = re.search(r"[!-~]{2}", baseline)
    assert found, f"no printable pair in {baseline!r}"
    stop, cut = found.group(0), baseline.index(found.group(0))
    kept = backend.generate([prompt], SamplingParams(max_new_tokens=40, temperature=1.0, seed=5, stop=[stop]))[0]
    assert (kept.text, kept.stop, kept.finish_reason) == (baseline[:cut + len(stop)], stop, "stop")

    # Raw completions with a local template: log-probs from the legacy logprobs block.
    completions = OpenAIBackend(vllm_server.url, vllm_server.model, api_key="test-key", chat=False,
                                tokenizer=tokenizer, extra_body={"return_token_ids": True})
    raw = completions.generate([completions.apply_chat_template(messages)], sampled)[0]
    assert raw.prompt_ids == generation.prompt_ids and 0 < len(raw.logprobs) == len(raw.completion_ids)

    with pytest.raises(EndpointAuthError, match=r"HTTP 401"):
        OpenAIBackend(vllm_server.url, vllm_server.model, api_key="wrong-key").generate([prompt], sampled)
    with pytest.raises(EndpointNotFoundError, match=r"'nope'.*does not exist"):
        OpenAIBackend(vllm_server.url, "nope", api_key="test-key").generate([prompt], sampled)
