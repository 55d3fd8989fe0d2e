"""Our slow step (HFBackend sampling + SlowLearner CISPO step) against TRL's GRPOTrainer, side by side.

Both sides do the same work per step: sample ``prompts x group`` completions of at most ``--length`` tokens
from the same tiny Llama (saved to a temp dir so TRL can load it), score them with the same reward
function, and take one CISPO optimizer step on a LoRA adapter of the same shape (rank 16, alpha 32, all
linear layers), one micro-batch, no KL term (TRL ``beta=0``; ours ``track_kl=False``), no gradient
checkpointing, float32. TRL is configured with ``loss_type="cispo"`` and an explicit ``epsilon_high=4.0``
(left unset it would cap every ratio at 0.2). The first step of each side is a warm-up and is not timed.

Usage: ``python benchmarks/vs_trl.py [--steps 6] [--prompts 4] [--group 4] [--length 64] [--hidden 256]``;
``--model embedded`` (or a model directory) runs the same comparison on a real model instead of the tiny one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings


def reward_fn(text: str) -> float:
    """A deterministic reward that varies between samples: the share of ASCII letters in the completion."""
    return sum(c.isascii() and c.isalpha() for c in text) / max(len(text), 1)


def build_model(directory: str, hidden: int, layers: int) -> None:
    from fst_env.models import tiny_policy

    tiny_policy(seed=0, hidden_size=hidden, num_layers=layers, num_heads=max(hidden // 64, 2),
                num_kv_heads=max(hidden // 128, 1), intermediate_size=hidden * 2).save(directory)


def prompt_texts(n: int) -> list[str]:
    from fst_env.models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    return [tokenizer.apply_chat_template([{"role": "user", "content": f"Problem {i}: what is {i} + {i * 3}?"}],
                                          tokenize=False, add_generation_prompt=True) for i in range(n)]


def run_ours(model_dir: str, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    import torch

    from fst_env.agents.rollout import Rollout
    from fst_env.agents.slow import LoraSettings, SlowLearner
    from fst_env.backends import HFBackend, SamplingParams
    from fst_env.models import load_policy

    policy = load_policy(model_dir, device="cpu", dtype=torch.float32)
    learner = SlowLearner(policy, lora=LoraSettings(rank=16, alpha=32), lr=1e-5, loss="cispo", tau=4.0,
                          micro_batch_size=args.prompts * args.group, track_kl=False, temperature=1.0)
    backend = HFBackend(policy, batch_size=args.prompts * args.group)
    prompts = prompt_texts(args.prompts)
    times, lengths = [], []
    for step in range(args.steps):
        start = time.perf_counter()
        batch = [p for p in prompts for _ in range(args.group)]
        generations = backend.generate(batch, SamplingParams(max_new_tokens=args.length, temperature=1.0,
                                                             seed=step))
        rollouts = [Rollout(group=f"p{i // args.group}", problem=batch[i], context_id=0, context={},
                            completion=g.text, reward=reward_fn(g.text), prompt_ids=g.prompt_ids,
                            completion_ids=g.completion_ids, old_logprobs=g.logprobs)
                    for i, g in enumerate(generations)]
        learner.step(rollouts)
        elapsed = time.perf_counter() - start
        print(f"  ours step {step}: {elapsed:.2f} s", file=sys.stderr, flush=True)
        if step:  # step 0 warms up
            times.append(elapsed)
        lengths.extend(len(g.completion_ids) for g in generations)
    return times, lengths


def run_trl(model_dir: str, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    lengths: list[float] = []

    def reward(completions: list[str], completion_ids: list[list[int]], **kwargs: object) -> list[float]:
        lengths.extend(len(ids) for ids in completion_ids)
        return [reward_fn(c) for c in completions]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, *a: object, **k: object) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *a: object, **k: object) -> None:
            self.times.append(time.perf_counter() - self.start)
            print(f"  TRL step {len(self.times) - 1}: {self.times[-1]:.2f} s", file=sys.stderr, flush=True)

    rows = args.prompts * args.group
    dataset = Dataset.from_dict({"prompt": prompt_texts(args.prompts) * (args.steps + 1)})
    with tempfile.TemporaryDirectory(prefix="trl-out-") as out:
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=rows, gradient_accumulation_steps=1,
            num_generations=args.group, max_completion_length=args.length, temperature=1.0, top_k=0, top_p=1.0,
            loss_type="cispo", epsilon_high=4.0, beta=0.0, learning_rate=1e-5, max_steps=args.steps,
            gradient_checkpointing=False, bf16=False, use_cpu=True, logging_steps=10_000, save_strategy="no",
            report_to="none", shuffle_dataset=False, disable_tqdm=True, seed=0,
        )
        timer = StepTimer()
        trainer = GRPOTrainer(model=model_dir, reward_funcs=reward, args=config, train_dataset=dataset,
                              peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                     target_modules="all-linear", task_type="CAUSAL_LM"),
                              callbacks=[timer])
        trainer.train()
    return timer.times[1:], lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--model", default="tiny", help="tiny (default), embedded, or a local model directory")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is much faster on a shared, busy CPU")
    args = parser.parse_args()
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (the first step is a warm-up)")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    warnings.filterwarnings("ignore")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="fst-vs-trl-") as tmp:
        if args.model == "tiny":
            model_dir, label = tmp, f"tiny Llama (hidden {args.hidden}, {args.layers} layers)"
            build_model(model_dir, args.hidden, args.layers)
        elif args.model == "embedded":
            from fst_env.models import default_cache_dir, embedded_gguf_path, gguf_cache_entry, load_policy

            load_policy("embedded", device="cpu")  # makes sure the safetensors cache entry exists
            model_dir, label = str(gguf_cache_entry(embedded_gguf_path(), default_cache_dir())), "SmolLM2-135M"
        else:
            model_dir, label = args.model, args.model
        ours, our_lengths = run_ours(model_dir, args)
        trl, trl_lengths = run_trl(model_dir, args)
    print(f"{label}, CPU x{torch.get_num_threads()} threads; "
          f"{args.prompts} prompts x {args.group} samples, <= {args.length} new tokens; generate + one CISPO "
          f"LoRA step; {args.steps - 1} timed steps")
    for name, times, lengths in (("fst-env SlowLearner", ours, our_lengths), ("TRL GRPOTrainer", trl, trl_lengths)):
        print(f"{name:22s} {statistics.median(times):7.3f} s/step (median; mean {statistics.mean(times):.3f}), "
              f"mean completion {statistics.mean(lengths):5.1f} tokens")
    print(f"ratio TRL / ours: {statistics.median(trl) / statistics.median(ours):.2f}x (> 1 means ours is faster)")


if __name__ == "__main__":
    main()
