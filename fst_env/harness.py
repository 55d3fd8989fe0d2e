"""Experiment harnesses on the agent API: the slow x fast quadrant table and the plasticity probe.

``quadrant_eval`` answers "where does the gain come from" (paper §4.6): the 2 x 2 table {base, trained
weights} x {seed, evolved context}. ``plasticity_probe`` answers "can it still learn" (paper §4.5): a fresh
RL pass on a new task from a trained checkpoint and from the base model, with the same seeds and budget.

Both use :meth:`FSTAgent.evaluate` with the agent's RNG saved and restored around every evaluation, so the
evaluations draw the same sampling seeds (differences between cells or arms come from weights and contexts,
not from sampling noise) and a harness leaves the agent's training RNG as it found it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from fst_env.agents.fst_agent import FSTAgent, FSTConfig, PromptAgent, RLAgent
from fst_env.context import Context
from fst_env.metrics import base_weights, base_weights_in_place
from fst_env.models import Policy
from fst_env.peft_utils import is_peft

__all__ = ["ArmCurve", "PlasticityResult", "QuadrantTable", "load_trained_policy", "plasticity_probe",
           "quadrant_eval"]

WEIGHTS = ("base", "trained")
CONTEXTS = ("seed", "evolved")


@contextlib.contextmanager
def _same_rng(agent: FSTAgent) -> Iterator[None]:
    """Run a block, then put the agent's sampling RNG back where it was (evaluations do not shift training)."""
    state = agent.rng.getstate()
    try:
        yield
    finally:
        agent.rng.setstate(state)


# ------------------------------------------------------------------------------------------ quadrants
@dataclass
class QuadrantTable:
    """The slow x fast 2 x 2 table: ``cells[(weights, context)]`` -> evaluate() metrics (accuracy, reward_mean).

    ``weights`` is ``"base"`` or ``"trained"``, ``context`` ``"seed"`` or ``"evolved"``; ``contexts`` holds the
    two contexts used. ``flat()`` gives ``{"quadrant/<weights>_weights+<context>_context/<metric>": value}`` for
    a metrics logger; ``markdown()`` the table as the paper prints it (accuracy %, mean reward).
    """

    env_id: str
    split: str
    problems: int
    k: int
    cells: dict[tuple[str, str], dict[str, float]]
    contexts: dict[str, Context]

    def flat(self) -> dict[str, float]:
        """One scalar per cell and metric, for logging."""
        return {f"quadrant/{w}_weights+{c}_context/{name}": float(value)
                for (w, c), metrics in self.cells.items() for name, value in metrics.items()
                if name in ("accuracy", "reward_mean", "ci_low", "ci_high")}

    def paired(self, a: tuple[str, str], b: tuple[str, str], **kwargs: Any) -> dict[str, Any]:
        """Cell ``a`` minus cell ``b`` over the same problems (:func:`fst_env.metrics.paired_difference` on their
        per-problem accuracies; evaluation uses common random numbers, so the pairing is sample by sample too)."""
        from fst_env.metrics import paired_difference

        return paired_difference(self.cells[a]["per_problem"], self.cells[b]["per_problem"], **kwargs).as_dict()

    def markdown(self) -> str:
        """A markdown table: rows are weights, columns contexts; each cell ``accuracy% [95% Wilson interval over the
        problems] (reward r)``."""
        lines = [f"{self.env_id} ({self.split}, {self.problems} problems, mean@{self.k})", "",
                 "| weights \\ context | seed context | evolved context |", "|---|---|---|"]
        for w in WEIGHTS:
            row = [f"{100 * cell['accuracy']:.1f}% [{100 * cell['ci_low']:.0f}-{100 * cell['ci_high']:.0f}] "
                   f"(reward {cell['reward_mean']:.3f})" for cell in (self.cells[(w, c)] for c in CONTEXTS)]
            lines.append(f"| {w} weights | " + " | ".join(row) + " |")
        return "\n".join(lines)


def quadrant_eval(trained_agent: FSTAgent, base_policy_factory: Callable[[], Policy] | None = None,
                  env_id: str | None = None, seed_context: Context | None = None, problems: int = 16, k: int = 1,
                  *, split: str = "validation", greedy: bool = False, **env_kwargs: Any) -> QuadrantTable:
    """Evaluate {base, trained weights} x {seed, evolved context} on ``problems`` problems of ``split``, mean@k.

    Trained weights are the agent's current ones; the evolved context is its population's best
    (``population.best()``); the seed context defaults to ``config.seed_context``. Base weights are taken in
    place when possible: a LoRA agent's adapter is switched off through ``backend.set_adapter(None)``
    (:func:`fst_env.metrics.base_weights`, no second copy), and an agent that trains no weights serves its base
    weights already. Only a full fine-tuning agent needs ``base_policy_factory`` (called once, evaluated with
    the same config). All four cells use the same sampling seed. ``env_id`` defaults to the agent's task.
    """
    agent = trained_agent
    env_id = env_id or agent.env_id
    contexts = {"seed": dict(seed_context if seed_context is not None else agent.config.seed_context),
                "evolved": dict(agent.population.best().context)}

    def evaluate(evaluator: FSTAgent, context: Context) -> dict[str, float]:
        with _same_rng(agent):
            # A separate evaluator starts from the trained agent's RNG state, so it draws the same seeds too.
            evaluator.rng.setstate(agent.rng.getstate())
            return evaluator.evaluate(env_id, split=split, problems=problems, k=k, context=context, greedy=greedy,
                                      **env_kwargs)

    cells: dict[tuple[str, str], dict[str, float]] = {}
    for c in CONTEXTS:
        cells[("trained", c)] = evaluate(agent, contexts[c])
    if base_weights_in_place(agent):
        with base_weights(agent):
            for c in CONTEXTS:
                cells[("base", c)] = evaluate(agent, contexts[c])
    else:
        if base_policy_factory is None:
            raise ValueError("quadrant_eval: the agent fine-tunes all weights, so its base weights are not "
                             "available in place; pass base_policy_factory (a callable returning the base Policy)")
        # A fast-only agent on the base weights: the notes learner needs no reflection model to be built.
        evaluator = PromptAgent(base_policy_factory(), agent.env_id, replace(agent.config, fast_learner="notes"),
                                env_kwargs=agent.env_kwargs)
        for c in CONTEXTS:
            cells[("base", c)] = evaluate(evaluator, contexts[c])
    return QuadrantTable(env_id=env_id, split=split, problems=problems, k=k,
                         cells={(w, c): cells[(w, c)] for w in WEIGHTS for c in CONTEXTS}, contexts=contexts)


# ------------------------------------------------------------------------------------------ plasticity
def load_trained_policy(checkpoint_dir: str | os.PathLike[str], base_policy_factory: Callable[[], Policy]) -> Policy:
    """The base policy with a checkpoint's trained weights folded in: a plain model, no adapter, no optimizer.

    ``checkpoint_dir`` is what :meth:`FSTAgent.save` wrote (its ``slow/`` folder) or what
    :meth:`SlowLearner.save` wrote. A LoRA adapter is loaded onto ``base_policy_factory()`` and merged
    (``merge_and_unload``); full fine-tuned weights are loaded over it. A checkpoint of an agent whose slow
    channel was off has no trained weights and raises ValueError (its weights are the base weights).
    """
    directory = Path(checkpoint_dir)
    learner = directory / "slow" if (directory / "slow" / "learner.json").is_file() else directory
    if not (learner / "learner.json").is_file():
        if (directory / "agent.json").is_file():
            raise ValueError(f"load_trained_policy: {directory} is a checkpoint of an agent with the slow channel "
                             "off; it holds no trained weights (its weights are the base model's)")
        raise ValueError(f"load_trained_policy: {directory} is not an FSTAgent or SlowLearner checkpoint "
                         "(no learner.json)")
    settings = json.loads((learner / "learner.json").read_text())["settings"]
    policy = base_policy_factory()
    if settings.get("lora") is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(policy.model, str(learner / "adapter"))
        policy.model = model.merge_and_unload()
    else:
        from safetensors.torch import load_model

        load_model(policy.model, str(learner / "weights.safetensors"))
    policy.model.eval()
    policy.name = f"{policy.name}+{learner}"
    return policy


@dataclass
class ArmCurve:
    """One arm of the plasticity probe: validation accuracy along a fresh RL run on the new task.

    ``steps[i]`` slow steps and ``samples[i]`` RL samples had been taken when ``accuracy[i]`` / ``reward_mean[i]``
    were measured (the first point is before any training). ``train`` holds each update's metrics.
    """

    steps: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    reward_mean: list[float] = field(default_factory=list)
    train: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        """Accuracy at the last evaluation (NaN before any)."""
        return self.accuracy[-1] if self.accuracy else math.nan


@dataclass
class PlasticityResult:
    """Both arms of a plasticity probe: ``arms["checkpoint"]`` (trained on task A) and ``arms["base"]``."""

    env_id: str
    steps: int
    arms: dict[str, ArmCurve]

    def final_accuracy(self) -> dict[str, float]:
        """``{"checkpoint": ..., "base": ...}``: the number the paper reports (§4.5)."""
        return {name: arm.final_accuracy for name, arm in self.arms.items()}

    def markdown(self) -> str:
        """A small table of start and final accuracy per arm."""
        lines = [f"plasticity on {self.env_id} after {self.steps} RL steps", "",
                 "| init | start accuracy | final accuracy |", "|---|---|---|"]
        for name, arm in self.arms.items():
            lines.append(f"| {name} | {100 * arm.accuracy[0]:.1f}% | {100 * arm.final_accuracy:.1f}% |")
        return "\n".join(lines)


def plasticity_probe(source: str | os.PathLike[str] | Callable[[], Policy], base_policy_factory: Callable[[], Policy],
                     new_env_id: str, steps: int, *, config: FSTConfig | None = None, eval_problems: int = 16,
                     eval_every: int | None = None, k: int = 1, split: str = "validation", seed: int = 0,
                     env_kwargs: Mapping[str, Any] | None = None) -> PlasticityResult:
    """Fresh RL on ``new_env_id`` from task-A weights and from the base model; same seeds, same budget.

    ``source`` is a checkpoint directory (see :func:`load_trained_policy`) or a callable returning a fresh
    Policy with the task-A weights (a PEFT-wrapped model is merged; the probe owns what it returns). Each arm
    builds an ``RLAgent`` with ``config`` (fast channel off) on its starting weights: a new LoRA adapter (the
    task-A adapter, if any, is merged first, so both arms train adapters of the same shape from the same
    initialisation) and a new optimizer, then runs ``steps`` slow steps on problems drawn by ``seed``.
    Accuracy on ``eval_problems`` problems of ``split`` (mean@k, seed context) is measured before training,
    every ``eval_every`` steps and at the end. The arms run one after the other, so only one model is in
    memory at a time.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"plasticity_probe: steps must be an int >= 1, got {steps!r}")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"plasticity_probe: eval_every must be >= 1 or None, got {eval_every!r}")
    config = config or FSTConfig()

    def task_a_policy() -> Policy:
        if callable(source):
            policy = source()
            if is_peft(policy.model):
                policy.model = policy.model.merge_and_unload()
            return policy
        return load_trained_policy(source, base_policy_factory)

    arms: dict[str, ArmCurve] = {}
    for name, factory in (("checkpoint", task_a_policy), ("base", base_policy_factory)):
        agent = RLAgent(factory(), new_env_id, config, env_kwargs=env_kwargs)
        arms[name] = _rl_curve(agent, steps, eval_problems=eval_problems, eval_every=eval_every or steps, k=k,
                               split=split, seed=seed)
        del agent
        gc.collect()  # drop this arm's model before the next one is built
    return PlasticityResult(env_id=new_env_id, steps=steps, arms=arms)


def _rl_curve(agent: FSTAgent, steps: int, *, eval_problems: int, eval_every: int, k: int, split: str,
              seed: int) -> ArmCurve:
    """Train ``agent`` for ``steps`` slow steps on its task, evaluating before, every ``eval_every`` and at the end."""
    curve = ArmCurve()

    def measure() -> None:
        with _same_rng(agent):
            result = agent.evaluate(split=split, problems=eval_problems, k=k)
        curve.steps.append(agent.counters["slow_steps"])
        curve.samples.append(agent.counters["rl_samples"])
        curve.accuracy.append(result["accuracy"])
        curve.reward_mean.append(result["reward_mean"])

    measure()
    done = 0
    while done < steps:
        chunk = min(eval_every, steps - done)
        curve.train.extend(_run_slow_steps(agent, chunk, seed=seed + done))
        done += chunk
        measure()
    return curve


def _run_slow_steps(agent: FSTAgent, steps: int, *, seed: int) -> list[dict[str, Any]]:
    """``steps`` updates of the training loop's inner step; problems drawn from the train split by ``seed``."""
    from fst_env.loop import run_update

    envs = gym.make_vec(agent.env_id, num_envs=agent.config.group_size, vectorization_mode="sync", **agent.env_kwargs)
    try:
        n_problems = envs.envs[0].unwrapped.num_problems()
        rng = np.random.default_rng(seed)
        return [run_update(agent, envs, rng.choice(n_problems, size=agent.config.groups_per_step, replace=False))
                for _ in range(steps)]
    finally:
        envs.close()
