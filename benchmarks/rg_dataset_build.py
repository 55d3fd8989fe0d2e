"""Env construction time for reasoning-gym tasks with and without the process-wide dataset cache.

Other libraries build a fresh reasoning-gym dataset object inside every env instance; ours builds one per
(task, config) per process. This script times ``gym.make`` (plus the first ``reset``) both ways and prints the
ratio. "Without cache" clears the cache before every construction, which is what a per-instance build costs.

    python benchmarks/rg_dataset_build.py [--repeats 20] [--tasks acre word_ladder ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym

from fst_env.envs import reasoning_gym as rg_env  # importing fst_env registers the fst/ ids

#: Tasks whose datasets do real work when built (word lists, precomputed pools, ARC data) plus two cheap ones.
DEFAULT_TASKS = ["acre", "arc_agi", "codeio", "figlet_font", "group_anagrams", "word_ladder", "spell_backward",
                 "knights_knaves", "mini_sudoku"]


def _time_once(task: str, reset: bool) -> float:
    start = time.perf_counter()
    env = gym.make("fst/ReasoningGym-v0", task=task)
    if reset:
        env.reset(options={"problem_id": 0})
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed


def _median_ms(repeats: int, before_each: Callable[[], None], task: str, reset: bool) -> float:
    samples = []
    for _ in range(repeats):
        before_each()
        samples.append(_time_once(task, reset))
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="constructions per task and mode (median shown)")
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, help="reasoning-gym task names")
    args = parser.parse_args()

    _time_once(args.tasks[0], reset=True)  # pay the one-off `import reasoning_gym` before timing anything
    print(f"median of {args.repeats} constructions, milliseconds (construct = gym.make; +reset = gym.make and "
          "the first reset)")
    header = f"{'task':16s} {'construct':>10s} {'cached':>8s} {'ratio':>8s} {'+reset':>9s} {'cached':>8s} {'ratio':>8s}"
    print(header)
    print("-" * len(header))
    ratios = []
    for task in args.tasks:
        row = [f"{task:16s}"]
        for reset in (False, True):
            cold = _median_ms(args.repeats, rg_env.clear_dataset_cache, task, reset)
            _time_once(task, reset)  # warm the cache once
            warm = _median_ms(args.repeats, lambda: None, task, reset)
            ratio = cold / warm if warm > 0 else float("inf")
            ratios.append(ratio)
            row.append(f"{cold:10.2f} {warm:8.3f} {ratio:7.0f}x" if reset is False
                       else f"{cold:9.2f} {warm:8.3f} {ratio:7.0f}x")
        print(" ".join(row))
    print(f"geometric-mean speed-up from the cache: {statistics.geometric_mean(ratios):.0f}x")


if __name__ == "__main__":
    main()
