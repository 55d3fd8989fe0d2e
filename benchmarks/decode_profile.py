"""Where a decode step of the ``fast`` backend goes: the whole step, its matmuls alone, and its ops by kind.

Usage: ``python benchmarks/decode_profile.py [--model embedded|tiny] [--batch 32] [--steps 64] [--repeats 3]
[--device cpu|cuda]``.

It prefills ``--batch`` chat prompts (``backend_throughput.py``'s) into the decoder the ``fast`` backend builds
(:class:`fst_env.backends.static.SamplerWeights` in the sampling dtype, oneDNN-packed where the CPU allows), then
decodes ``--steps`` tokens greedily and reports, as medians over ``--repeats`` passes:

- **step**: milliseconds per decode step (one token for every row), and the tok/s that step alone allows;
- **matmuls alone**: every matmul of one step (QKV, output, gate/up and down projections of each layer, then
  the output head) run back to back on inputs of the step's shapes, no other op; the weight bytes they read
  per second (on CPU the rate the weights stream at, from cache or memory);
- **sampler**: :func:`fst_env.backends.static.sample_tokens` on one step's logits (T=1, no truncation);
- **by kind** (torch profiler over the decode steps of one pass, self time per step): matmuls, attention,
  everything else (the greedy argmax included).

The step excludes sampling, stop checks and prefill, which ``backend_throughput.py`` includes. It reads the
decoder's internals (``_Decoder``) on purpose: it is a profile of them.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch

MATMUL_OPS = ("mkldnn::_linear_pointwise", "aten::linear", "aten::addmm", "aten::mm", "aten::matmul", "aten::bmm")
ATTENTION_OPS = ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product")


def median_ms(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Median wall milliseconds of ``repeats`` calls of ``fn`` (after one warm-up call)."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="embedded, tiny, a model dir or hub id")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64, help="decode steps per pass")
    parser.add_argument("--repeats", type=int, default=3, help="passes (medians reported)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.batch < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--batch, --steps and --repeats must be >= 1")

    from backend_throughput import load, make_prompts, uptime

    from fst_env.backends import SamplingParams, StaticCacheBackend
    from fst_env.backends.hf import encode_prompts, left_padded
    from fst_env.backends.static import _Decoder, sample_tokens

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    policy = load(args.model, False, args.device)
    backend = StaticCacheBackend(policy, batch_size=args.batch)
    backend.update_weights()
    weights = backend._weights
    assert weights is not None
    prompts = [backend.apply_chat_template(chat) for chat in make_prompts(args.batch, 0)]
    encoded = encode_prompts(policy.tokenizer, prompts, "decode_profile")
    input_ids, attention, positions = left_padded(encoded, policy.tokenizer, device)
    width = input_ids.shape[1]
    print(f"before: {uptime()}", flush=True)

    def decode_pass(step_times: list[float] | None = None, profiler: Any = None) -> torch.Tensor:
        """Prefill, then ``args.steps`` greedy decode steps (only these timed and profiled); the last logits."""
        decoder = _Decoder(weights, args.batch, width + args.steps, device)
        with torch.inference_mode():
            logits = decoder.prefill(input_ids, attention, positions)
            sync()
            next_position = attention.sum(-1)
            with profiler if profiler is not None else contextlib.nullcontext():
                for step in range(args.steps):
                    tokens = logits.argmax(-1)
                    sync()
                    start = time.perf_counter()
                    logits = decoder.decode(tokens, next_position, width + step)
                    sync()
                    if step_times is not None:
                        step_times.append(time.perf_counter() - start)
                    next_position = next_position + 1
        return logits

    step_ms = []
    decode_pass()  # warm-up
    for _ in range(args.repeats):
        times: list[float] = []
        last_logits = decode_pass(times)
        step_ms.append(1000 * statistics.median(times))

    hidden = weights.embed.shape[1]
    x = torch.randn(args.batch, hidden, dtype=weights.dtype, device=device)
    mlp = torch.randn(args.batch, weights.layers[0].wdown.shape[-1], dtype=weights.dtype, device=device)
    attended = torch.randn(args.batch, weights.layers[0].wo.shape[-1], dtype=weights.dtype, device=device)

    def matmuls() -> None:
        with torch.inference_mode():
            for layer in weights.layers:
                weights.linear(x, layer.wqkv, layer.bqkv)
                weights.linear(attended, layer.wo, layer.bo)
                weights.linear(x, layer.wgate_up, layer.bgate_up)
                weights.linear(mlp, layer.wdown, layer.bdown)
            if weights.head_packed:
                weights.linear(x, weights.lm_head, None)
            else:
                torch.nn.functional.linear(x.to(weights.lm_head.dtype), weights.lm_head)

    matrices = [t for layer in weights.layers for t in (layer.wqkv, layer.wo, layer.wgate_up, layer.wdown)]
    weight_bytes = sum(m.numel() * m.element_size() for m in [*matrices, weights.lm_head])
    matmul_ms = median_ms(matmuls, 5 * args.repeats, sync)

    generator = torch.Generator(device=device).manual_seed(0)
    logits32 = last_logits.float()
    sampler_ms = median_ms(lambda: sample_tokens(logits32, SamplingParams(), generator), 20 * args.repeats, sync)

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profile = torch.profiler.profile(activities=activities)
    decode_pass(profiler=profile)
    kinds = {"matmuls": 0.0, "attention": 0.0, "other ops": 0.0}
    for event in profile.key_averages():
        self_us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        if event.key.startswith(MATMUL_OPS):
            kinds["matmuls"] += self_us
        elif event.key.startswith(ATTENTION_OPS):
            kinds["attention"] += self_us
        elif event.key.startswith(("aten::", "mkldnn::")):
            kinds["other ops"] += self_us
    print(f"after: {uptime()}")

    step = statistics.median(step_ms)
    print(f"\n{args.model}, batch {args.batch}, {args.steps} decode steps after a {width}-token prompt, dtype "
          f"{weights.dtype}, packed weights {weights.packed}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"step (decode only, medians of {args.repeats} passes): {step:.2f} ms -> {args.batch / step * 1000:.0f} tok/s"
          f"  (passes: {', '.join(f'{ms:.2f}' for ms in step_ms)})")
    print(f"matmuls alone: {matmul_ms:.2f} ms per step ({matmul_ms / step:.0%} of the step), "
          f"{weight_bytes / 1e6:.0f} MB of weights at {weight_bytes / matmul_ms / 1e6:.1f} GB/s -> "
          f"{args.batch / matmul_ms * 1000:.0f} tok/s if nothing else ran")
    print(f"sampler: {sampler_ms:.2f} ms per step ({args.batch} rows x {logits32.shape[-1]} vocabulary)")
    print("by kind (profiler self time per decode step, argmax included):")
    for kind, total_us in kinds.items():
        print(f"  {kind:<10} {total_us / args.steps / 1000:7.2f} ms")
    if device.type == "cpu":
        try:
            cache = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
            print("cpu caches: " + "; ".join(line.split(":", 1)[0].strip() + " " + line.split(":", 1)[1].strip()
                                             for line in cache.splitlines() if "cache" in line.lower()))
        except (OSError, subprocess.SubprocessError):
            pass


if __name__ == "__main__":
    main()
