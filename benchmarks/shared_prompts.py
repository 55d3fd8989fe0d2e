"""What sharing a repeated prompt saves: the learner's step and the ``fast`` backend's generate on a batch of G
samples per problem, each against its padded baseline in the same process.

In an RL batch every problem's G samples share one prompt. The learner
(:func:`fst_env.agents.tokens.token_logprobs`) runs each distinct prompt once with a KV cache and the completions on
top of it, and keeps one prompt's pieces in one micro-batch; the ``fast`` backend prefills each distinct prompt once
(:func:`fst_env.backends.base.repeated_prompts`). The baselines are the layouts before that change, rebuilt here:
one forward over every padded row with pieces ordered by total length, and one prefill row per sample.

    python benchmarks/shared_prompts.py              # embedded SmolLM2-135M, the main job's 4 x G=4, 64 tokens
    python benchmarks/shared_prompts.py --problems 2 --group-size 8 --max-new-tokens 96
    python benchmarks/shared_prompts.py --model tiny --repeats 1   # smoke run

The batch is one collect of the ``cpu`` preset's RL agent on the main job's task. Its rewards are then set so that
every group has reward variance (one success per group), so every piece trains, as in a step where all groups
carry signal; the learner's weights and optimizer are restored before each timed step, so every step does the
same work. Contenders alternate; medians over ``--repeats`` are printed with the load before and after.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from backend_throughput import uptime

import fst_env.agents.tokens as tokens
import fst_env.backends.static as static
from fst_env.agents.fst_agent import FSTAgent, FSTConfig
from fst_env.agents.slow import SlowLearner
from fst_env.backends import SamplingParams
from fst_env.config import DEFAULT_ENV, DEFAULT_ENV_KWARGS, PRESETS
from fst_env.models import Policy, load_policy, tiny_policy
from fst_env.peft_utils import core_model


def padded_logits(model: Any, batch: tokens.TokenBatch) -> Any:
    """The baseline learner forward: every row's prompt computed again."""
    return tokens._padded_logits(core_model(model), batch)


def length_sorted_batches(learner: SlowLearner, pieces: Sequence[Any]) -> list[list[int]]:
    """The baseline micro-batches: pieces ordered by total length alone."""
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i].prompt_ids) + len(pieces[i].completion_ids))
    size = learner.settings.micro_batch_size
    return [order[i:i + size] for i in range(0, len(order), size)]


@contextmanager
def baseline(on: bool) -> Iterator[None]:
    """Within the block, the learner and the fast backend use the padded baselines (when ``on``)."""
    saved = (tokens._completion_logits, SlowLearner._batches, static.repeated_prompts)
    if on:
        tokens._completion_logits = padded_logits
        SlowLearner._batches = length_sorted_batches  # type: ignore[method-assign]
        static.repeated_prompts = lambda prompt_ids: None  # the fast backend's name for it (the learner's stays)
    try:
        yield
    finally:
        tokens._completion_logits, SlowLearner._batches, static.repeated_prompts = saved  # type: ignore[method-assign]


def alternate(contenders: dict[str, Callable[[], dict[str, float]]], repeats: int) -> dict[str, list[dict[str, float]]]:
    """Run every contender ``repeats`` times, alternating (the order flips every round); their figures."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            results[name].append(contenders[name]())
    return results


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="embedded, tiny, a model dir or hub id")
    parser.add_argument("--problems", type=int, default=None, help="problems per batch (default: the cpu preset's)")
    parser.add_argument("--group-size", type=int, default=None, help="samples per problem (default: the preset's)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the cpu preset's")
    parser.add_argument("--repeats", type=int, default=4, help="timed runs per contender (medians reported)")
    args = parser.parse_args()
    for name in ("problems", "group_size", "max_new_tokens", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")

    preset = dict(PRESETS["cpu"]["agent"])
    problems = args.problems or preset["groups_per_step"]
    group_size = args.group_size or preset["group_size"]
    if group_size < 2:
        parser.error("--group-size must be >= 2 (advantages are normalised within a group)")
    preset.update(group_size=group_size, groups_per_step=problems, fast=False,
                  max_new_tokens=args.max_new_tokens or preset["max_new_tokens"])
    policy: Policy = tiny_policy(0) if args.model == "tiny" else load_policy(args.model)
    agent = FSTAgent(policy, DEFAULT_ENV, FSTConfig(**preset), env_kwargs=dict(DEFAULT_ENV_KWARGS))
    episodes = agent.collect(list(range(problems)))
    for index, episode in enumerate(episodes):  # one success per group: every group trains
        for turn in episode.turns:
            turn.reward = 1.0 if index % group_size == 0 else 0.0
    turns = [turn for episode in episodes for turn in episode.turns]
    prompts = [agent.backend.policy.tokenizer.decode(t.prompt_ids) for t in turns]
    print(f"batch: {problems} problems x G={group_size}, {len(turns)} pieces, prompts of "
          f"{sorted({len(t.prompt_ids) for t in turns})} tokens, completions of "
          f"{min(len(t.completion_ids) for t in turns)}-{max(len(t.completion_ids) for t in turns)} tokens")
    print(f"before: {uptime()}", flush=True)

    learner = agent.slow
    start_state = learner.state_dict()

    def step(use_baseline: bool) -> dict[str, float]:
        learner.load_state_dict(start_state)
        with baseline(use_baseline):
            metrics = learner.step(episodes)
        return {"forward": metrics["time_forward_s"], "backward": metrics["time_backward_s"],
                "total": metrics["time_total_s"], "loss": metrics["loss"]}

    backend = agent.backend
    params = SamplingParams(max_new_tokens=preset["max_new_tokens"], temperature=preset["temperature"],
                            row_seeds=tuple(range(len(prompts))))

    def generate(use_baseline: bool) -> dict[str, float]:
        # Decoding the prompt text again and re-encoding it gives back the same ids (checked below).
        with baseline(use_baseline):
            begin = time.perf_counter()
            generations = backend.generate(prompts, params)
            seconds = time.perf_counter() - begin
        return {"total": seconds, "tokens": float(sum(len(g.completion_ids) for g in generations))}

    assert [g.prompt_ids for g in backend.generate(prompts[:1], SamplingParams(max_new_tokens=1))] == \
        [turns[0].prompt_ids], "re-encoding the collect's prompt text changed its token ids"
    learner_runs = alternate({"padded": lambda: step(True), "shared": lambda: step(False)}, args.repeats)
    generation_runs = alternate({"per row": lambda: generate(True), "per prompt": lambda: generate(False)},
                                args.repeats)
    print(f"after: {uptime()}")

    print(f"learner step (SlowLearner.step, medians of {args.repeats}): forward (with the KL reference forward) / "
          "backward / total seconds")
    for name, rows in learner_runs.items():
        print(f"  {name:10} {median(rows, 'forward'):7.3f} {median(rows, 'backward'):7.3f} "
              f"{median(rows, 'total'):7.3f}   loss {median(rows, 'loss'):+.6f}")
    speedup = median(learner_runs["padded"], "total") / median(learner_runs["shared"], "total")
    print(f"  padded / shared: {speedup:.2f}x")
    print(f"generate ({backend.__class__.__name__}, {len(prompts)} prompts, medians of {args.repeats}): seconds")
    for name, rows in generation_runs.items():
        print(f"  {name:10} {median(rows, 'total'):7.3f}   ({median(rows, 'tokens'):.0f} tokens)")
    print(f"  prefill per row / per prompt: "
          f"{median(generation_runs['per row'], 'total') / median(generation_runs['per prompt'], 'total'):.2f}x")


if __name__ == "__main__":
    main()
