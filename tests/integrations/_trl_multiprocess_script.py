"""FSTGRPOTrainer under ``accelerate launch``: the worker script of tests/integrations/test_trl_multiprocess.py.

Each process trains the tiny model saved in ``--model`` on :data:`ENV_ID` and writes ``<report-dir>/rank<r>.json``:

- ``batches``: per generation batch, this process's rows (problem key, context id, completion, reward, step) in
  TRL's row order, recorded before they are gathered to the main process;
- ``learner_calls``: per fast-round call of the fast learner (main process only): the problem keys it was given
  and every rollout it saw (key, context id, completion, step);
- ``rounds``: the population, learner state and counters on this process right after each fast round;
- ``losses``: TRL's logged ``loss`` per step; plus the process count, the torch.distributed backend, the final
  step, counters and population.

The env's reward depends on the completion (letters and digits are good, at most 0.9 so a rollout never counts
as solved), its verdict and feedback depend on the problem only: runs whose sampled texts differ still hand the
fast learner identical feedback, which is what lets the test compare a 1-process and a 2-process run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import string
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import torch
import torch.distributed as dist
from gymnasium import spaces
from peft import LoraConfig

from fst_env.agents.fast import NotesFastLearner, ReflectiveFastLearner, ScoreAcceptance
from fst_env.agents.population import ContextPopulation
from fst_env.integrations.trl import FSTGRPOTrainer, env_dataset, fst_grpo_config
from fst_env.models import load_policy

ENV_ID = "fsttest/MultiprocCharset-v0"
NUM_PROBLEMS = 48
G = 4
SEED_CONTEXT = {"instructions": "Answer in one word."}
SECOND_CONTEXT = {"instructions": "Reply with letters only."}


class CharsetEnv(gym.Env):
    """A single-turn text env: reward = 0.9 x the fraction of ASCII letters/digits; feedback names the problem only."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, split: str = "train") -> None:
        self.split = split
        self.observation_space = spaces.Text(max_length=256, min_length=0, charset=string.printable)
        self.action_space = spaces.Text(max_length=4096, charset=string.printable)
        self._problem = 0

    def num_problems(self) -> int:
        """Problems in the split (train: :data:`NUM_PROBLEMS`, others: 8)."""
        return NUM_PROBLEMS if self.split == "train" else 8

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._problem = int((options or {}).get("problem_id", 0))
        return f"Name item {self._problem}.", {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        text = action.strip()
        good = sum(ch.isascii() and ch.isalnum() for ch in text) / len(text) if text else 0.0
        feedback = f"Item {self._problem} wants one word of plain letters and digits, with no punctuation at all."
        return "", 0.9 * good, True, False, {"feedback": feedback, "verdict": "incorrect"}


gym.register(ENV_ID, entry_point=CharsetEnv)


class ScriptedReflector:
    """A deterministic, stateless reflection LM: appends a sentence naming the first problem of GEPA's minibatch.

    The sentence depends on the minibatch, so rounds on other problems propose other children (not duplicates).
    """

    def __call__(self, prompt: str) -> str:
        current = prompt.split("```")[1].strip()  # GEPA's template quotes the current instruction first
        item = re.search(r"Name item (\d+)\.", prompt)
        return f"A better instruction:\n```\n{current} Mind item {item.group(1) if item else 'x'}.\n```"


def scripted_generate(messages_list: list[list[dict[str, str]]]) -> list[str]:
    """A deterministic stand-in for fast-round sampling: the text depends on the prompt only."""
    texts = []
    for messages in messages_list:
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        texts.append("word" + "!" * (len(system) % 3) + str(len(messages[-1]["content"]) % 10))
    return texts


class RecordingTrainer(FSTGRPOTrainer):
    """FSTGRPOTrainer that records what each process generated and what each fast round left behind."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.report: dict[str, Any] = {"batches": [], "learner_calls": [], "rounds": []}
        super().__init__(*args, **kwargs)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        training = self.model.training
        mark = self.feedback_buffer.total_added
        output = super()._generate_and_score_completions(inputs)
        if training:
            # On the main process the gathered rows of the other processes follow its own: keep its own only.
            local = self.feedback_buffer.recent(self.feedback_buffer.total_added - mark)[:len(inputs)]
            self.report["batches"].append({
                "generation_round": self.fst_counters["generation_rounds"], "step": self.state.global_step,
                "input_keys": [row["problem_key"] for row in inputs],
                "rows": [[r.group, r.context_id, r.completion, r.reward, r.info["step"]] for r in local]})
        return output

    def fast_round(self) -> dict[str, float]:
        scalars = super().fast_round()
        self.report["rounds"].append({"step": self.state.global_step, "population": self.population.state_dict(),
                                      "fast": self.fast_learner.state_dict(), "counters": dict(self.fst_counters)})
        return scalars


#: The error a ``--fail-in-fast-round`` learner raises on the main process.
SCRIPTED_FAILURE = "scripted failure in the fast learner"


def record_learner_calls(learner: Any, report: dict[str, Any], *, fail: bool = False) -> None:
    """Wrap ``learner.round`` so each call's problem keys and rollouts go into ``report['learner_calls']``
    (and, with ``fail``, the call then raises RuntimeError(:data:`SCRIPTED_FAILURE`))."""
    real_round = learner.round

    def round_(population, evaluate, recent_rollouts=(), problem_keys=(), *, evidence=None):
        report["learner_calls"].append({
            "problem_keys": list(problem_keys),
            "rollouts": [[r.group, r.context_id, r.completion, r.info.get("step")] for r in recent_rollouts]})
        if fail:
            raise RuntimeError(SCRIPTED_FAILURE)
        return real_round(population, evaluate, recent_rollouts, problem_keys, evidence=evidence)

    learner.round = round_


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="a saved tiny model directory")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--report-dir", required=True)
    p.add_argument("--learner", choices=["reflective", "notes"], required=True)
    p.add_argument("--rows", type=int, default=6, help="per_device_train_batch_size")
    p.add_argument("--num-problems", type=int, default=NUM_PROBLEMS, help="training problems (the dataset's size)")
    p.add_argument("--max-steps", type=int, default=2)
    p.add_argument("--fast-every", type=int, default=1)
    p.add_argument("--save-steps", type=int, default=0, help="0: no checkpoints")
    p.add_argument("--resume", default=None, help="a checkpoint directory to resume from")
    p.add_argument("--scripted-generation", action="store_true",
                   help="fast rounds generate with scripted_generate instead of the model")
    p.add_argument("--fail-in-fast-round", action="store_true", help="the fast learner raises on the main process")
    a = p.parse_args(argv)

    policy = load_policy(a.model, device="cpu", dtype=torch.float32)
    config = fst_grpo_config(
        a.output_dir, max_steps=a.max_steps, per_device_train_batch_size=a.rows, num_generations=G,
        max_completion_length=8, report_to=[], bf16=False, gradient_checkpointing=False, logging_steps=1,
        use_cpu=True, save_strategy="steps" if a.save_steps else "no", save_steps=a.save_steps or 500,
        learning_rate=1e-3, seed=0, ddp_timeout=600, dataloader_num_workers=0)
    accept_all = ScoreAcceptance(lambda before, after: True, "accept-all")
    if a.learner == "reflective":
        learner: Any = ReflectiveFastLearner(ScriptedReflector(), minibatch_size=2, proposals_per_round=1, seed=0,
                                             acceptance=accept_all)
    else:
        learner = NotesFastLearner(minibatch_size=2, proposals_per_round=1, seed=0, acceptance=accept_all)
    population = ContextPopulation(dict(SEED_CONTEXT), max_size=4)
    population.add(dict(SECOND_CONTEXT), parent_id=0, scores={})
    trainer = RecordingTrainer(
        policy.model, ENV_ID, config, processing_class=policy.tokenizer,
        train_dataset=env_dataset(ENV_ID, "train", a.num_problems), population=population, fast_learner=learner,
        fast_every=a.fast_every, fast_problems=3,
        fast_generate=scripted_generate if a.scripted_generation else None,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    record_learner_calls(learner, trainer.report, fail=a.fail_in_fast_round)
    trainer.train(resume_from_checkpoint=a.resume)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    report = {**trainer.report, "rank": trainer.accelerator.process_index,
              "num_processes": trainer.accelerator.num_processes, "global_step": trainer.state.global_step,
              "backend": dist.get_backend() if dist.is_initialized() else None,
              "losses": losses, "losses_finite": all(math.isfinite(x) for x in losses),
              "counters": dict(trainer.fst_counters), "population": trainer.population.state_dict()}
    Path(a.report_dir).mkdir(parents=True, exist_ok=True)
    path = Path(a.report_dir) / f"rank{report['rank']}.json"
    path.write_text(json.dumps(report, indent=1))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
