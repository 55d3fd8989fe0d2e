"""Reset+step throughput of the registered envs, with correct, wrong and malformed answers.

Prints steps per second for a single env and for ``gym.make_vec(id, num_envs=8)``, pinned to one CPU core.
Target for fst/MathReasoning-v0: >= 2,000 steps/s on one core. When gem-llm's MathEnv is importable (see
--gem-path), it is measured on the same problems in the same run and the ratio is printed.

    python benchmarks/env_throughput.py                       # every registered fst/ id
    python benchmarks/env_throughput.py --ids fst/MathReasoning-v0 --gem-path .bench-deps/gem

It also prints the cost of the step guards: fst/MathReasoning-v0 with the step deadline on vs a same-process
baseline with the deadline machinery bypassed (``judge`` called directly), and reasoning-gym tasks scored in the
isolated worker (fst_env.judging) vs in-process (``--rg-tasks``; none to skip).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import gymnasium as gym

import fst_env

WRONG = "I am fairly sure the answer is \\boxed{-918273}."
MALFORMED = "I could not work this one out, sorry."


def _rate(run, seconds: float) -> float:
    run(8)  # warm caches (problem generation, lazy imports)
    n, start = 16, time.perf_counter()
    while True:
        run(n)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed if n else 0.0
        n *= 2
        start = time.perf_counter()


def single_env_rate(env_id: str, kind: str, seconds: float, problems: int) -> float | None:
    env = gym.make(env_id)
    env.reset(seed=0)
    oracle = getattr(env.unwrapped, "oracle_response", lambda: None)
    if kind == "correct" and oracle() is None:
        return None

    def run(n: int) -> None:
        for i in range(n):
            env.reset(seed=i % problems)
            action = oracle() if kind == "correct" else WRONG if kind == "wrong" else MALFORMED
            env.step(action)

    return _rate(run, seconds)


def vector_env_rate(env_id: str, seconds: float, num_envs: int = 8) -> float:
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
    actions = tuple([WRONG] * num_envs)

    def run(n: int) -> None:
        for i in range(max(1, n // num_envs)):
            envs.reset(seed=i, options={"problem_id": i})
            envs.step(actions)

    return _rate(run, seconds)


def gem_math_rate(seconds: float, problems: int) -> tuple[float, float] | str:
    """GEM's MathEnv and ours on the same generated problems: (gem steps/s, ours steps/s), or why not."""
    try:
        from datasets import Dataset
        from gem.envs.math_env import MathEnv
    except ImportError as exc:
        return (f"gem-llm is not importable ({exc}). It pins reasoning-gym==0.1.23, which conflicts with ours, so "
                "install it beside, not into, this environment: pip install --no-deps --target .bench-deps/gem "
                "gem-llm==0.1.0 nltk==3.9.1 msgspec==0.19.0 pylatexenc; then pass --gem-path .bench-deps/gem")
    logging.disable(logging.INFO)  # gem logs every reset(idx=...) at INFO
    ours = gym.make("fst/MathReasoning-v0", families=("basic_arithmetic", "chain_sum", "gcd", "lcm"))
    rows, answers = [], []
    for i in range(problems):
        prompt, _ = ours.reset(seed=i)
        rows.append({"problem": prompt, "answer": ours.unwrapped.problem.answer})
        answers.append(ours.unwrapped.oracle_response())
    gem_env = MathEnv(dataset=Dataset.from_list(rows), use_mp=False, eval=True)  # its fastest, in-process mode

    def run_gem(n: int) -> None:
        for i in range(n):
            gem_env.reset(idx=i % problems)
            gem_env.step(answers[i % problems])

    def run_ours(n: int) -> None:
        for i in range(n):
            ours.reset(seed=i % problems)
            ours.step(answers[i % problems])

    return _rate(run_gem, seconds), _rate(run_ours, seconds)


def _cycled_rate(env, answers: list[str], seconds: float) -> float:
    def run(n: int) -> None:
        for i in range(n):
            env.reset(seed=i % len(answers))
            env.step(answers[i % len(answers)])

    run(len(answers))  # generate and cache every problem first: only reset+step is timed
    return _rate(run, seconds)


def _answers(env, problems: int) -> list[str]:
    answers = []
    for i in range(problems):
        env.reset(seed=i)
        answers.append(env.unwrapped.oracle_response() or WRONG)
    return answers


def guard_ratio(env_id: str, seconds: float, problems: int) -> tuple[float, float]:
    """(steps/s with the step-deadline guard, steps/s with ``_safe_judge`` bypassed), same env, same answers."""
    env = gym.make(env_id)
    answers = _answers(env, problems)
    guarded = _cycled_rate(env, answers, seconds)
    base = env.unwrapped
    base._safe_judge = lambda action: base.judge(base.problem, action)  # no timer, no length check
    return guarded, _cycled_rate(env, answers, seconds)


def rg_isolation_rates(task: str, seconds: float, problems: int) -> tuple[float, float]:
    """(steps/s scored in the isolated worker, steps/s scored in-process) for one evaluating rg task."""
    env = gym.make("fst/ReasoningGym-v0", task=task)
    answers = _answers(env, problems)
    isolated = _cycled_rate(env, answers, seconds)
    env.unwrapped.isolated = False
    return isolated, _cycled_rate(env, answers, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", nargs="*", default=None, help="env ids (default: every registered fst/ id)")
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time per figure")
    parser.add_argument("--problems", type=int, default=200, help="distinct problems cycled through")
    parser.add_argument("--gem-path", default=None, help="a folder holding gem-llm (installed with --target)")
    parser.add_argument("--rg-tasks", nargs="*",
                        default=["countdown", "puzzle24", "polynomial_multiplication", "simple_integration"],
                        help="rg tasks scored in the isolated worker to compare with in-process scoring")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    if args.gem_path:
        sys.path.insert(0, os.path.abspath(args.gem_path))
    ids = args.ids or fst_env.registered_ids()
    print(f"reset+step per second, one core ({os.cpu_count()} on the machine); single env unless noted")
    print(f"{'env id':32} {'correct':>9} {'wrong':>9} {'malformed':>9} {'vec x8':>9}")
    for env_id in ids:
        try:
            cells = [single_env_rate(env_id, kind, args.seconds, args.problems)
                     for kind in ("correct", "wrong", "malformed")]
            cells.append(vector_env_rate(env_id, args.seconds))
        except Exception as exc:  # one env's failure should not hide the others' figures
            print(f"{env_id:32} failed: {type(exc).__name__}: {exc}"[:200])
            continue
        print(f"{env_id:32} " + " ".join(f"{c:9,.0f}" if c is not None else f"{'n/a':>9}" for c in cells))
    if "fst/MathReasoning-v0" in ids:
        guarded, bare = guard_ratio("fst/MathReasoning-v0", args.seconds, args.problems)
        print(f"\nfst/MathReasoning-v0 step guards: {guarded:,.0f} steps/s with the deadline guard, {bare:,.0f} "
              f"steps/s bypassed; guarded/bypassed = {guarded / bare:.2f}")
    for task in args.rg_tasks:
        isolated, in_process = rg_isolation_rates(task, args.seconds, min(args.problems, 20))
        print(f"rg {task:28} isolated worker {isolated:8,.0f} steps/s, in-process {in_process:8,.0f} steps/s, "
              f"ratio {isolated / in_process:.2f}")
    if "fst/MathReasoning-v0" in ids:
        result = gem_math_rate(args.seconds, args.problems)
        if isinstance(result, str):
            print(f"\ngem-llm MathEnv: not measured. {result}")
        else:
            gem, ours = result
            print(f"\nSame problems, correct answers: gem-llm MathEnv {gem:,.0f} steps/s, fst/MathReasoning-v0 "
                  f"{ours:,.0f} steps/s, ratio ours/gem = {ours / gem:.1f}x")


if __name__ == "__main__":
    main()
