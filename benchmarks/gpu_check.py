"""GPU check: the transformers backend and FST slow steps on CUDA, with random-weight models built from a config.

    python benchmarks/gpu_check.py                     # on a machine with a CUDA device
    python benchmarks/gpu_check.py --device cpu --quick  # the script itself, anywhere (smoke run)

Models (no download, random weights, the byte-level test tokenizer): ``tiny`` (the test model, 2 layers of 64)
and ``smollm2-shape`` (the embedded SmolLM2-135M's layer shapes: 30 layers of 576, 9 heads / 3 KV heads, MLP
1536; its vocabulary is the small test one). For each model it prints

1. generation tokens/s through :class:`HFBackend`, CPU fp32 (the same-process baseline) and the device in fp32
   and bf16, with the device/CPU ratio;
2. seconds per FSTAgent update on the device in bf16, RL only and FST, split by phase
   (``benchmarks/step_breakdown.py``) on a graded-reward task, so every group has reward variance;
3. bf16 checks: the base weights are bf16 (peft keeps LoRA adapters in fp32), log-probs, loss and grad norm
   are finite, the LoRA weights moved, and the importance ratio of the first slow step is 1 (the learner
   recomputes the backend's log-probs).

Then two steps of :class:`FSTGRPOTrainer` (TRL) with LoRA in bf16 on the device, with a fast round after each.
Exits 1 when a check fails; ``--json`` also writes every figure to a file.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import fst_env
from fst_env.backends.base import SamplingParams
from fst_env.backends.hf import HFBackend
from fst_env.models import Policy, tiny_policy

sys.path.insert(0, str(Path(__file__).parent))
from step_breakdown import PHASES, measure

ENV_ID = "gpucheck/Charset-v0"
SHAPES = {
    "tiny": {},
    "smollm2-shape": dict(hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, intermediate_size=1536,
                          tie_word_embeddings=True),
}


def _charset_reward(response: str, problem: dict) -> tuple[float, str]:
    """Share of letters and digits: graded, so a random model's groups have reward variance (slow steps run)."""
    text = response.strip()
    good = sum(ch.isascii() and ch.isalnum() for ch in text) / max(len(text), 1)
    return good, f"{good:.0%} of the characters are letters or digits; use only letters and digits."


fst_env.register_task(ENV_ID, [{"prompt": f"Name item {i}."} for i in range(1000)], _charset_reward,
                      summary="GPU check task: answer with letters and digits only")


def policy_for(shape: str, device: str, dtype: torch.dtype) -> Policy:
    return tiny_policy(0, device=device, dtype=dtype, **SHAPES[shape])


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def generation_rate(policy: Policy, prompts: list[str], new_tokens: int, repeats: int) -> dict[str, float]:
    """Completion tokens per second through HFBackend (median of ``repeats`` after one warm-up)."""
    backend = HFBackend(policy, batch_size=len(prompts))
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0)
    backend.generate(prompts, params)
    rates, finite = [], True
    for _ in range(repeats):
        synchronize(str(policy.device))
        start = time.perf_counter()
        generations = backend.generate(prompts, params)
        seconds = time.perf_counter() - start
        rates.append(sum(len(g.completion_ids) for g in generations) / seconds)
        finite &= all(math.isfinite(lp) for g in generations for lp in g.logprobs)
    return {"tokens_per_s": statistics.median(rates), "logprobs_finite": float(finite)}


def slow_step_checks(policy: Policy, history: list[dict]) -> dict[str, bool]:
    slow = [m for m in history if m.get("slow/skipped") == 0.0]
    first = slow[0] if slow else {}
    lora_b = [p for name, p in policy.model.named_parameters() if "lora_B" in name]
    return {
        # peft keeps LoRA adapters in fp32 (autocast_adapter_dtype); the base weights must be bf16.
        "base_weights_bf16": all(p.dtype == torch.bfloat16 for name, p in policy.model.named_parameters()
                                 if "lora_" not in name),
        "slow_steps_ran": len(slow) == len(history) > 0,
        "loss_and_grad_finite": all(math.isfinite(m["slow/loss"]) and math.isfinite(m["slow/grad_norm"])
                                    for m in slow) and bool(slow),
        "lora_weights_moved": bool(lora_b) and any(float(p.detach().abs().sum()) > 0 for p in lora_b),
        # bf16 forward passes of the same weights differ in the last bits between batch shapes: ~1e-2 is bf16.
        "first_step_ratio_is_1": bool(first) and abs(first["slow/is_ratio_mean"] - 1.0) < 2e-2,
    }


def trl_check(device: str, shape: str, output_dir: str) -> dict[str, object]:
    from peft import LoraConfig

    from fst_env.agents.fast import NotesFastLearner
    from fst_env.integrations.trl import FSTGRPOTrainer, fst_grpo_config

    policy = policy_for(shape, device, torch.bfloat16)
    config = fst_grpo_config(output_dir, max_steps=2, per_device_train_batch_size=8, num_generations=4,
                             max_completion_length=32, report_to=[], bf16=device.startswith("cuda"),
                             use_cpu=not device.startswith("cuda"), logging_steps=1, save_strategy="no",
                             learning_rate=1e-3, seed=0, gradient_checkpointing=False)
    trainer = FSTGRPOTrainer(policy.model, ENV_ID, config, processing_class=policy.tokenizer,
                             fast_learner=NotesFastLearner(minibatch_size=2, proposals_per_round=1, seed=0),
                             fast_every=1, fast_problems=2,
                             peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    fast = [e for e in trainer.state.log_history if "fast/n_proposals" in e]
    return {"seconds_per_step": seconds / 2, "losses": losses, "fast_rounds": len(fast),
            "model_device": str(next(trainer.model.parameters()).device),
            "ok": len(losses) == 2 and all(math.isfinite(x) for x in losses) and len(fast) == 2}


def generation_section(args: argparse.Namespace, shape: str, settings: dict) -> tuple[dict, list[str]]:
    batch, new_tokens = settings["batch"], settings["new_tokens"]
    prompts = [f"<|im_start|>user\nName item {i}.<|im_end|>\n<|im_start|>assistant\n" for i in range(batch)]
    print(f"\n== {shape}: generation through HFBackend, {batch} prompts x {new_tokens} new tokens")
    rates = {"cpu/float32": generation_rate(policy_for(shape, "cpu", torch.float32), prompts, new_tokens,
                                            settings["repeats"])}
    if args.device != "cpu":
        for dtype in (torch.float32, torch.bfloat16):
            rates[f"{args.device}/{str(dtype)[6:]}"] = generation_rate(policy_for(shape, args.device, dtype),
                                                                       prompts, new_tokens, settings["repeats"])
    failed = []
    for name, rate in rates.items():
        ratio = rate["tokens_per_s"] / rates["cpu/float32"]["tokens_per_s"]
        print(f"  {name:18} {rate['tokens_per_s']:10.0f} tokens/s  ({ratio:5.1f}x CPU fp32)"
              f"  log-probs finite: {bool(rate['logprobs_finite'])}")
        if not rate["logprobs_finite"]:
            failed.append(f"{shape} {name}: non-finite log-probs")
    return rates, failed


def updates_section(args: argparse.Namespace, shape: str, settings: dict) -> tuple[dict, list[str]]:
    step_args = argparse.Namespace(env=ENV_ID, updates=settings["updates"], group_size=settings["group_size"],
                                   groups_per_step=2, fast_every=settings["fast_every"], fast_problems=4,
                                   max_new_tokens=settings["new_tokens"])
    print(f"\n== {shape}: seconds per FSTAgent update on {args.device} bf16 (batch {step_args.group_size * 2}, "
          f"{step_args.max_new_tokens} new tokens, {step_args.updates} timed updates after 1 untimed)")
    phases, checks = {}, {}
    for mode in ("rl", "fst"):
        policy = policy_for(shape, args.device, torch.bfloat16)
        phases[mode], history = measure(mode, step_args, ENV_ID, {}, policy=policy, warmup=1)
        checks[mode] = slow_step_checks(policy, history)
    print(f"  {'phase':16} {'RL only':>9} {'FST':>9}")
    for key in PHASES:  # step_breakdown's phases, so the two reports cannot drift apart
        print(f"  {key:16} {phases['rl'][key]:9.3f} {phases['fst'][key]:9.3f}")
    print(f"  {'one fast round':16} {'-':>9} {phases['fst']['fast_round']:9.3f}")
    print(f"  FST / RL time per update: {phases['fst']['total'] / phases['rl']['total']:.2f}x")
    failed = []
    for mode, results in checks.items():
        print(f"  bf16 checks ({mode}): " + ", ".join(f"{k}={v}" for k, v in results.items()))
        failed += [f"{shape} {mode}: {k}" for k, v in results.items() if not v]
    return {"update_seconds": phases, "checks": checks}, failed


def trl_section(args: argparse.Namespace, shape: str, settings: dict) -> tuple[dict, list[str]]:
    print(f"\n== FSTGRPOTrainer (TRL) on {args.device}, bf16 LoRA, {shape} model, 2 steps, a fast round after each")
    try:
        with tempfile.TemporaryDirectory() as out:
            result = trl_check(args.device, shape, out)
    except Exception as error:  # a report, not a crash: the other figures still print
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    print("  " + ", ".join(f"{k}={v}" for k, v in result.items()))
    return result, [] if result["ok"] else ["FSTGRPOTrainer run"]


PER_MODEL = {"generation": generation_section, "updates": updates_section}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--sections", nargs="+", default=["generation", "updates", "trl"],
                        choices=["generation", "updates", "trl"], help="what to run, in this order")
    parser.add_argument("--quick", action="store_true", help="small batches and few repeats (smoke run)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu for a smoke run", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}, bf16 supported: {torch.cuda.is_bf16_supported()}")
    settings = dict(batch=4, new_tokens=16, repeats=1, updates=2, group_size=4, fast_every=2) if args.quick \
        else dict(batch=32, new_tokens=128, repeats=3, updates=6, group_size=8, fast_every=3)
    report: dict[str, dict] = {"run": {"device": args.device, "torch": torch.__version__}}
    failed: list[str] = []
    for section in args.sections:
        if section == "trl":  # once, on the tiny model: it checks TRL on the device, not model speed
            report["trl"], problems = trl_section(args, "tiny", settings)
            failed += problems
        for shape in args.models if section in PER_MODEL else []:
            report.setdefault(shape, {})[section], problems = PER_MODEL[section](args, shape, settings)
            failed += problems
        if args.json:  # after every section, so a run stopped at its time limit keeps what it measured
            Path(args.json).write_text(json.dumps(report | {"failed": failed}, indent=2, default=str))

    print("\nall checks passed" if not failed else f"\nFAILED: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
