"""Fixtures for the HTTP backends: a real OpenAI-compatible server (``transformers serve``) on loopback.

The server runs in its own process group on 127.0.0.1 and a free port, serving a tiny random Llama saved from
``fst_env.models.tiny_policy`` (no download, ``HF_HUB_OFFLINE=1``). Teardown always kills the whole group and
checks that no process of it is left.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: What ``transformers serve`` imports besides transformers itself (the ``transformers[serving]`` extra).
SERVING_MODULES = ("fastapi", "uvicorn", "openai")

#: The tiny model is served untied: with tied embeddings a random model's greedy choice is the last prompt token
#: again, so every prompt would get the same completion and ordering bugs could hide.
TINY_MODEL_KWARGS = {"tie_word_embeddings": False}

#: vLLM's CPU attention needs a supported head size (64 here, the tiny default is 16).
VLLM_MODEL_KWARGS = {**TINY_MODEL_KWARGS, "hidden_size": 128, "num_heads": 2, "num_kv_heads": 1}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def save_tiny_model(directory: Path, model_kwargs: dict[str, Any] = TINY_MODEL_KWARGS) -> Path:
    """Save ``tiny_policy(0, **model_kwargs)`` (sampling on by default so ``temperature > 0`` samples)."""
    from fst_env.models import tiny_policy

    policy = tiny_policy(0, **model_kwargs)
    # transformers serve only samples when the generation config says so; temperature 0 still turns it off.
    policy.model.generation_config.do_sample = True
    policy.model.save_pretrained(directory)
    policy.tokenizer.save_pretrained(directory)
    return directory


class ServeProcess:
    """An OpenAI-compatible server process on 127.0.0.1 serving one model directory; ``start`` / ``stop`` may
    repeat on the same port.

    ``kind="transformers"``: ``transformers serve`` pinned to the directory (requests name the directory path;
    no API keys). ``kind="vllm"``: vLLM's OpenAI server under ``python`` (an interpreter with vLLM), serving the
    directory as ``"tiny"`` and requiring ``api_key``. ``url`` is the API root (``.../v1``), ``model`` the name
    requests must use. ``stop`` kills the process group and raises if any of its processes survives.
    """

    def __init__(self, model_dir: Path, log_path: Path, *, kind: str = "transformers", python: str = sys.executable,
                 api_key: str | None = None, port: int | None = None) -> None:
        if kind not in ("transformers", "vllm"):
            raise ValueError(f"unknown server kind {kind!r}")
        self.model_dir = model_dir
        self.log_path = log_path
        self.kind = kind
        self.python = python
        self.api_key = api_key
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def model(self) -> str:
        return str(self.model_dir) if self.kind == "transformers" else "tiny"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.root}/v1"

    def command(self) -> list[str]:
        if self.kind == "transformers":
            return [self.python, "-m", "transformers.cli.transformers", "serve", self.model, "--host", "127.0.0.1",
                    "--port", str(self.port), "--device", "cpu", "--dtype", "float32"]
        command = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
                   "--served-model-name", self.model, "--host", "127.0.0.1", "--port", str(self.port),
                   "--max-model-len", "512", "--dtype", "float32"]
        return command + (["--api-key", self.api_key] if self.api_key else [])

    def start(self, *, wait: bool = True, timeout: float = 120.0) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"server on port {self.port} is already running (pid {self.process.pid})")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        # A tiny model gains nothing from threads; on shared CPUs they only contend. vLLM: a 1 GiB KV cache.
        env.update({"OMP_NUM_THREADS": "1"} if self.kind == "transformers" else {"VLLM_CPU_KVCACHE_SPACE": "1"})
        with open(self.log_path, "ab") as log:
            # A new session makes the server a process-group leader, so stop() can kill everything it started.
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited before it was ready; log:\n{self.log_tail()}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError), \
                    urllib.request.urlopen(f"{self.root}/health", timeout=2) as response:
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.kind} server not ready after {timeout:.0f} s; log:\n{self.log_tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # The leader is reaped; make sure nothing else of its group (a worker it forked) lives on.
        for _ in range(50):
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.1)
        raise RuntimeError(f"processes of the server's group {process.pid} survived SIGKILL")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny model directory (see :func:`save_tiny_model`)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-served-model"))


@pytest.fixture(scope="session")
def served_model_in_process() -> Any:
    """The served model run in-process (an ``HFBackend``): what the server must answer under greedy decoding."""
    from fst_env.backends.hf import HFBackend
    from fst_env.models import tiny_policy

    return HFBackend(tiny_policy(0, **TINY_MODEL_KWARGS))


@pytest.fixture(scope="module")
def openai_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A running ``transformers serve`` on 127.0.0.1 (skipped when its serving extras are not installed)."""
    missing = [name for name in SERVING_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"transformers serve needs {', '.join(missing)} (pip install 'transformers[serving]')")
    server = ServeProcess(tiny_model_dir, tmp_path_factory.mktemp("serve-log") / "serve.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def vllm_python() -> str | None:
    """An interpreter with vLLM: ``$FST_VLLM_PYTHON``, or this one when ``vllm`` is importable here."""
    configured = os.environ.get("FST_VLLM_PYTHON")
    if configured:
        return configured
    return sys.executable if importlib.util.find_spec("vllm") is not None else None


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A running vLLM OpenAI server with API key ``"test-key"`` (minutes to start on CPU; skipped without vLLM)."""
    python = vllm_python()
    if python is None:
        pytest.skip("vLLM is not installed here; set FST_VLLM_PYTHON to a Python that has it (e.g. vllm-cpu)")
    model_dir = save_tiny_model(tmp_path_factory.mktemp("tiny-vllm-model"), VLLM_MODEL_KWARGS)
    server = ServeProcess(model_dir, tmp_path_factory.mktemp("vllm-log") / "vllm.log", kind="vllm", python=python,
                          api_key="test-key")
    try:
        server.start(timeout=900)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def vllm_policy() -> Any:
    """The model :func:`vllm_server` serves, in-process (same seed and shape)."""
    from fst_env.models import tiny_policy

    return tiny_policy(0, **VLLM_MODEL_KWARGS)
