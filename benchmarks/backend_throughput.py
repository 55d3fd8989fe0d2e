"""Generation throughput: the transformers reference path (HF), the new default ("fast") and vLLM, side by side.

Usage: ``python benchmarks/backend_throughput.py [--models embedded,tiny] [--batches 8,32] [--max-new-tokens 128]
[--temperature 1.0] [--repeats 3] [--lora] [--device cpu|cuda] [--no-vllm] [--reserved-cpus N]``.

Every contender gets the same chat-formatted prompts (as many as the batch size, one chunk), sampling parameters
and seed; each is warmed up once, then all are timed alternately ``--repeats`` times per batch size and the median
tok/s is reported with its ratio to HF (alternating keeps them exposed to the same background load; on a shared
machine single timings swing by 2-5x, so the load average is printed before and after). Throughput counts
generated tokens (completions end early at eos, so counts differ slightly between backends).

Contenders: ``hf`` is ``HFBackend`` on the policy as loaded (float32 on CPU, bf16 on a bf16 GPU); ``fast`` is
``StaticCacheBackend`` with its default dtype (``fst_env.models.sampling_dtype``: bf16 on CPUs with AVX512-BF16/
AMX and on CUDA); ``fast32h`` the same with a float32 output head (``float32_head=True``); ``vllm``
(``VLLMBackend``'s defaults: the sampling dtype, merged weights reloaded in place per update, no core reserved on
CPU; its reload is timed) runs when ``vllm`` is importable (and not ``--no-vllm``). ``--lora`` serves the
policy through a rank-16 LoRA adapter on every linear layer (the slow learner's default), as during RL; the fast
backend's merge time (the copy made after each slow step) is printed. ``--device cuda`` runs everything on the
GPU (``fast`` then uses CUDA bf16). Start-up (engine or weight copy) is reported apart from tok/s. Unless
``--no-ratio``, the last timed generations at the first batch size are re-scored by the policy as loaded (the
learner's weights and dtype) and the importance ratio learner / sampler per token is summarised.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the heavy imports wait until after argument parsing
    from fst_env.backends import GenerationBackend, SamplingParams
    from fst_env.models import Policy


@dataclass
class Timing:
    """One backend's result at one batch size: start-up seconds and (seconds, tokens) per timed repeat."""

    start_s: float
    runs: list[tuple[float, int]] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return sorted(tokens / seconds for seconds, tokens in self.runs)

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(self.rates)


def uptime() -> str:
    """The ``uptime`` line (load averages), or os.getloadavg() where the command is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def make_prompts(count: int, seed: int) -> list[list[dict[str, str]]]:
    """``count`` short arithmetic word problems as chat messages (procedural, deterministic)."""
    rng = random.Random(seed)
    items = ("apples", "books", "coins", "marbles", "stamps")
    chats = []
    for _ in range(count):
        a, b, item = rng.randint(2, 99), rng.randint(2, 99), rng.choice(items)
        chats.append([{"role": "user", "content": f"Sam has {a} {item} and buys {b} more. How many {item} does "
                                                  "Sam have now? Think step by step, then give the number."}])
    return chats


def load(model: str, lora: bool, device: str) -> Policy:
    """The policy to benchmark: ``tiny`` (random Llama, head size 32 as vLLM's CPU kernels need) or a
    ``load_policy`` name; wrapped in a rank-16 LoRA adapter when ``lora``."""
    import torch

    from fst_env.models import load_policy, seeded, tiny_policy

    policy = tiny_policy(0, hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256,
                         num_layers=4, device=device) if model == "tiny" else load_policy(model, device=device)
    if lora:
        from peft import LoraConfig, get_peft_model

        with seeded(0):
            policy.model = get_peft_model(policy.model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
            with torch.no_grad():  # a trained-looking adapter, so the LoRA path is really exercised
                for name, parameter in policy.model.named_parameters():
                    if "lora_B" in name:
                        parameter.normal_(0, 0.01)
    return policy


def run(backend: GenerationBackend, prompts: list[str], params: SamplingParams) -> tuple[float, int, list[Any]]:
    """Seconds, generated tokens and the generations of one timed ``generate`` call (CUDA work finished inside)."""
    import torch

    start = time.perf_counter()
    generations = backend.generate(prompts, params)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, sum(len(g.completion_ids) for g in generations), generations


def ratio_stats(policy: Policy, generations: list[Any], temperature: float) -> dict[str, float]:
    """The importance ratio learner / sampler per completion token, the learner being ``policy.model`` as loaded
    (float32 on CPU) recomputing each sampled token's log-prob teacher-forced, as the slow learner does."""
    import torch

    from fst_env.agents.slow import TokenBatch, token_logprobs

    pad = policy.tokenizer.pad_token_id or 0
    diffs: list[torch.Tensor] = []
    for start in range(0, len(generations), 4):
        chunk = [g for g in generations[start:start + 4] if g.completion_ids]
        if not chunk:
            continue
        batch = TokenBatch.collate([g.prompt_ids for g in chunk], [g.completion_ids for g in chunk], pad,
                                   policy.device)
        with torch.no_grad():
            learner = token_logprobs(policy.model, batch, temperature=temperature or 1.0)[0].cpu()
        for row, g in enumerate(chunk):
            diffs.append(learner[row, :len(g.logprobs)] - torch.tensor(g.logprobs))
    delta = torch.cat(diffs)
    ratio = delta.exp()
    return {"ratio_mean": float(ratio.mean()), "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()),
            "outside_0.8_1.2": float(((ratio < 0.8) | (ratio > 1.2)).float().mean()),
            "logprob_diff_mean": float(delta.abs().mean()), "tokens": float(delta.numel())}


def build(name: str, policy: Policy, batch: int, args: argparse.Namespace) -> Any:
    """The contender ``name`` serving ``policy`` with chunks of ``batch`` prompts."""
    if name == "hf":
        from fst_env.backends import HFBackend

        return HFBackend(policy, batch_size=batch)
    if name in ("fast", "fast32h"):
        from fst_env.backends import StaticCacheBackend

        backend = StaticCacheBackend(policy, batch_size=batch, float32_head=name == "fast32h")
        backend.update_weights()  # the copy (and merge) the agent makes after each slow step: timed as start-up
        return backend
    from fst_env.backends.vllm import VLLMBackend

    # The fast option: the sampling dtype (bf16 where the hardware has it) and merged weights reloaded in place
    # per update; the reload the agent makes after each slow step is timed here once (after the engine start).
    backend = VLLMBackend(policy, max_model_len=1024)
    start = time.perf_counter()
    backend.update_weights()
    backend.reload_seconds = time.perf_counter() - start
    return backend


def bench(model: str, args: argparse.Namespace, names: list[str]
          ) -> tuple[dict[int, dict[str, Timing]], dict[str, dict[str, float]]]:
    from fst_env.backends import SamplingParams as Params

    policy = load(model, args.lora, args.device)
    params = Params(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    results: dict[int, dict[str, Timing]] = {}
    ratios: dict[str, dict[str, float]] = {}
    for batch in args.batches:
        backends: dict[str, Any] = {}
        timings: dict[str, Timing] = {}
        try:
            for name in names:
                start = time.perf_counter()
                backends[name] = build(name, policy, batch, args)
                timings[name] = Timing(time.perf_counter() - start)
            prompts = [backends["hf"].apply_chat_template(chat) for chat in make_prompts(batch, args.seed)]
            for backend in backends.values():
                backend.generate(prompts, Params(max_new_tokens=8, temperature=args.temperature, seed=args.seed))
            for repeat in range(args.repeats):
                for name, backend in backends.items():
                    seconds, tokens, generations = run(backend, prompts, params)
                    timings[name].runs.append((seconds, tokens))
                    if batch == args.batches[0] and repeat == args.repeats - 1 and not args.no_ratio:
                        ratios[name] = ratio_stats(policy, generations, args.temperature)
                    print(f"[{model} B={batch}] {name} run {repeat + 1}: {tokens} tokens in {seconds:.2f} s "
                          f"({tokens / seconds:.1f} tok/s)", flush=True)
            if "fast" in backends:
                print(f"[{model} B={batch}] fast: weight copy{' + LoRA merge' if args.lora else ''} "
                      f"{backends['fast'].merge_seconds:.2f} s, dtype {backends['fast'].dtype}", flush=True)
            if "vllm" in backends:
                vllm = backends["vllm"]
                print(f"[{model} B={batch}] vllm: engine start {timings['vllm'].start_s - vllm.reload_seconds:.1f} s,"
                      f" per-update weight reload{' (LoRA merged)' if args.lora else ''} {vllm.reload_seconds:.2f} s, "
                      f"dtype {vllm.llm.llm_engine.model_config.dtype}", flush=True)
        finally:
            if "vllm" in backends:
                backends["vllm"].close()
        results[batch] = timings
    return results, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="embedded", help="comma-separated: embedded, tiny, a model dir or hub id")
    parser.add_argument("--batches", default="8,32", help="comma-separated batch sizes (= prompts per call)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per backend and batch (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora", action="store_true", help="serve through a rank-16 LoRA adapter")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-vllm", action="store_true", help="skip vLLM even when it is importable")
    parser.add_argument("--no-ratio", action="store_true", help="skip the learner/sampler ratio check")
    parser.add_argument("--reserved-cpus", type=int, default=None,
                        help="VLLM_CPU_NUM_OF_RESERVED_CPU (CPU only; VLLMBackend sets 0 unless given, vLLM itself 1)")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.reserved_cpus is not None:
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(args.reserved_cpus)
    names = ["hf", "fast", "fast32h"]
    if not args.no_vllm and importlib.util.find_spec("vllm") is not None:
        names.append("vllm")

    import torch

    print(f"before: {uptime()}", flush=True)
    rows = [(model, bench(model, args, names)) for model in [m.strip() for m in args.models.split(",") if m.strip()]]
    print(f"after: {uptime()}")
    print(f"\nprompts = batch, up to {args.max_new_tokens} new tokens, T={args.temperature}, lora={args.lora}, "
          f"device={args.device}, torch threads={torch.get_num_threads()}, cpus={os.cpu_count()}, "
          f"vllm={'vllm' in names}")
    print(f"{'model':<10} {'batch':>5} {'backend':<7} {'start s':>8} {'tokens':>7} {'median tok/s':>13} "
          f"{'x hf':>6}  all runs tok/s")
    for model, (by_batch, _) in rows:
        for batch, results in by_batch.items():
            base = results["hf"].tokens_per_s
            for name, timing in results.items():
                print(f"{model:<10} {batch:>5} {name:<7} {timing.start_s:8.2f} {timing.runs[0][1]:7d} "
                      f"{timing.tokens_per_s:13.1f} {timing.tokens_per_s / base:6.2f}  "
                      + " ".join(f"{rate:.1f}" for rate in timing.rates))

    if not args.no_ratio:
        print(f"\nimportance ratio learner (policy as loaded) / sampler per token, batch {args.batches[0]}, "
              "last timed run")
        for model, (_, ratios) in rows:
            for name, stats in ratios.items():
                print(f"{model:<10} {name:<7} " + ", ".join(f"{k}={v:.4g}" for k, v in stats.items()))


if __name__ == "__main__":
    main()
