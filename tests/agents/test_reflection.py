"""Reflection LM adapters and the reflection-reply parser (no real LLM, no network beyond 127.0.0.1)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fst_env.agents.reflection import (
    ReflectionAuthError,
    ReflectionLMError,
    ReflectionModelNotFoundError,
    as_reflection_lm,
    from_openai,
    from_transformers,
    parse_reflection_output,
)

# ---------------------------------------------------------------------------------------------- parser


@pytest.mark.parametrize(("reply", "expected"), [
    ("Sure!\n```\nAlways show your work.\n```\nHope this helps.", "Always show your work."),
    ("```markdown\nAlways show your work.\n```", "Always show your work."),
    ("```\nAlways show your work.", "Always show your work."),  # unclosed fence (truncated generation)
    ("Always show your work.", "Always show your work."),  # no fence: the whole reply
    ("Here is the new instruction:\nAlways show your work.", "Always show your work."),  # lead-in dropped
    ("  New instructions:\n\nAlways show your work.\n", "Always show your work."),
])
def test_parser_extracts_the_new_text(reply: str, expected: str) -> None:
    assert parse_reflection_output(reply, "Solve it.") == (expected, "ok")


def test_parser_keeps_a_long_structured_instruction() -> None:
    text = "\n".join([
        "You solve arithmetic word problems.",
        "- Read the problem twice and list the quantities it gives, with their units.",
        "- Decide which operation links them; write the equation before computing anything.",
        "- Compute step by step and check each intermediate result by estimation.",
        "- Convert the result to the unit the question asks for.",
        "- Put only the final number inside <answer></answer> tags, with no units or words.",
        "- If a quantity is missing, state the assumption you make in one short sentence.",
    ])
    assert parse_reflection_output(f"```\n{text}\n```", "Solve it.") == (text, "ok")


# A real reply of SmolLM2-135M-Instruct to gepa's reflection prompt (greedy): a chat-bot loop, not an instruction.
SMOLLM_LOOP = ("I'm ready to assist you with your math problem.\n\nPlease provide the math problem you'd like to "
               "solve, and I'll provide a detailed and accurate solution.\n\n"
               + "Please provide the task you'd like to solve with the assistant, and I'll provide a detailed and "
                 "accurate solution.\n\n" * 5)


@pytest.mark.parametrize(("reply", "reason"), [
    ("", "empty"),
    ("```\n```", "empty"),
    ("```\nok\n```", "too short"),
    ("```\nSolve it.\n```", "unchanged"),
    ("I provided an assistant with the following instructions to perform a task", "echoes"),
    ("Be careful. " * 100, "degenerate"),
    (SMOLLM_LOOP, "degenerate"),
    ("\n".join(["Check the answer."] * 8 + ["Done now."]), "degenerate"),
    ("x" * 30_000 + " tail", "too long"),
    (None, "not text"),
])
def test_parser_rejects_degenerate_replies(reply: object, reason: str) -> None:
    text, why = parse_reflection_output(reply, "Solve it.")  # type: ignore[arg-type]
    assert text is None and reason in why


def test_plain_callables_are_accepted_as_is() -> None:
    def lm(prompt: str) -> str:
        return prompt.upper()

    assert as_reflection_lm(lm) is lm
    with pytest.raises(TypeError, match="callable"):
        as_reflection_lm("gpt-x")


# ---------------------------------------------------------------------------------------------- OpenAI client
class _Script:
    """What the fake server answers, in order: (status, json body); records each request it got."""

    def __init__(self, answers: list[tuple[int, dict]]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, dict, dict]] = []


def _handler(script: _Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.requests.append((self.path, dict(self.headers), body))
            status, answer = script.answers[min(len(script.requests), len(script.answers)) - 1]
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, _Script]]:
    """A local chat-completions endpoint on 127.0.0.1 whose answers each test scripts."""
    script = _Script([])
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def _ok(text: str) -> tuple[int, dict]:
    return 200, {"choices": [{"message": {"role": "assistant", "content": text}}]}


def test_openai_client_unit_success_request_shape(server: tuple[str, _Script]) -> None:
    url, script = server
    script.answers = [_ok("```\nnew\n```")]
    lm = from_openai(url, "tiny-model", api_key="k-123", temperature=0.2, max_tokens=64)
    assert lm("reflect on this") == "```\nnew\n```"
    path, headers, body = script.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer k-123"
    assert body == {"model": "tiny-model", "messages": [{"role": "user", "content": "reflect on this"}],
                    "temperature": 0.2, "max_tokens": 64}


def test_openai_client_unit_401_is_an_auth_error_naming_url_and_model(server: tuple[str, _Script]) -> None:
    url, script = server
    script.answers = [(401, {"error": {"message": "Invalid API key"}})]
    with pytest.raises(ReflectionAuthError) as info:
        from_openai(url, "tiny-model", api_key="wrong", sleep=lambda s: None)("p")
    message = str(info.value)
    assert f"{url}/chat/completions" in message and "'tiny-model'" in message and "Invalid API key" in message
    assert len(script.requests) == 1  # never retried


def test_openai_client_unit_404_is_model_not_found(server: tuple[str, _Script]) -> None:
    url, script = server
    script.answers = [(404, {"error": {"message": "The model `nope` does not exist"}})]
    with pytest.raises(ReflectionModelNotFoundError) as info:
        from_openai(url, "nope", sleep=lambda s: None)("p")
    assert "'nope'" in str(info.value) and url in str(info.value) and "does not exist" in str(info.value)
    assert len(script.requests) == 1


def test_openai_client_unit_500_then_200_is_retried_with_backoff(server: tuple[str, _Script]) -> None:
    url, script = server
    script.answers = [(500, {"error": {"message": "overloaded"}}), (503, {}), _ok("fine")]
    delays: list[float] = []
    lm = from_openai(url, "m", max_retries=3, backoff_s=0.5, sleep=delays.append)
    assert lm("p") == "fine"
    assert len(script.requests) == 3 and delays == [0.5, 1.0]  # exponential backoff


def test_openai_client_unit_gives_up_after_max_retries(server: tuple[str, _Script]) -> None:
    url, script = server
    script.answers = [(429, {"error": {"message": "rate limited"}})]
    with pytest.raises(ReflectionLMError, match="after 3 attempts; last error: HTTP 429: rate limited"):
        from_openai(url, "m", max_retries=2, sleep=lambda s: None)("p")
    assert len(script.requests) == 3


def test_openai_client_unit_bad_request_and_malformed_reply(server: tuple[str, _Script]) -> None:
    url, script = server
    script.answers = [(400, {"error": {"message": "context too long"}})]
    with pytest.raises(ReflectionLMError, match="HTTP 400: context too long"):
        from_openai(url, "m", sleep=lambda s: None)("p")
    script.answers, script.requests = [(200, {"unexpected": True})], []
    with pytest.raises(ReflectionLMError, match=r"choices\[0\]\.message\.content"):
        from_openai(url, "m", sleep=lambda s: None)("p")


def test_openai_client_unit_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as sock:  # a port nobody listens on once this socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    delays: list[float] = []
    with pytest.raises(ReflectionLMError, match="failed after 2 attempts"):
        from_openai(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, timeout=2, sleep=delays.append)("p")
    assert delays == [1.0]


def test_openai_client_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="http"):
        from_openai("localhost:8000/v1", "m")
    with pytest.raises(TypeError, match="prompt must be str"):
        from_openai("http://127.0.0.1:9/v1", "m")(["not", "text"])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- transformers
def _tiny_model_and_tokenizer():  # type: ignore[no-untyped-def]
    """A 2-layer Llama and a word-level tokenizer with a chat template, built in memory (no download)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "user:", "assistant:", *(f"w{i}" for i in range(59))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    tokenizer.chat_template = ("{% for m in messages %}user: {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}assistant:{% endif %}")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1)
    return LlamaForCausalLM(config), tokenizer


def test_from_transformers_reflects_with_the_base_model_when_peft() -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    base, tokenizer = _tiny_model_and_tokenizer()
    prompt = "w1 w2 w3 w4"
    # Greedy reply of the plain base model, before any adapter exists.
    plain = from_transformers(base, tokenizer, max_new_tokens=6)(prompt)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "lm_head"],
                                            init_lora_weights=False))
    with torch.no_grad():  # make the adapter change the output for sure
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param) * 2.0)
    model.train()
    with_adapter = from_transformers(model, tokenizer, max_new_tokens=6, disable_adapter=False)(prompt)
    without_adapter = from_transformers(model, tokenizer, max_new_tokens=6, disable_adapter=True)(prompt)
    assert with_adapter != plain  # precondition: the adapter matters
    assert without_adapter == plain  # the base model reflected
    assert model.training  # mode restored
    assert isinstance(without_adapter, str) and without_adapter.split()


def test_from_transformers_says_whether_its_replies_are_deterministic():
    from fst_env.agents.reflection import from_transformers as build

    assert build(object(), object()).deterministic is True  # greedy: the fast learner may cache rejections
    assert build(object(), object(), do_sample=True).deterministic is False
