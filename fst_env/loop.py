"""The FST training loop, top to bottom: stages of tasks, evaluation, logging, checkpoints and resume.

One agent is handed from stage to stage (fast and slow state carried over; optionally the population is reset
to the seed context at a stage start, as in the paper's continual runs). Every ``eval_every`` updates, and at
the end of each stage, the agent is evaluated on the held-out split of *every* task of the schedule (past and
future), which builds the stage x task accuracy matrix.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from fst_env.agents.fst_agent import FSTAgent, _info_at
from fst_env.checkpoints import (
    CheckpointError,
    find_checkpoint,
    read_position,
    report_to_stderr,
    save_checkpoint,
)
from fst_env.logging import RunLogger, write_text_atomic
from fst_env.schedule import ConfigError, Schedule, Stage

#: Training stops when more than this fraction of the last ERROR_WINDOW rollouts had verdict ``error``.
ERROR_STOP_FRACTION = 0.5
ERROR_WINDOW = 32


class BrokenTaskError(RuntimeError):
    """Training stopped: the task could not score most rollouts (a broken reward function or judge).

    The message is one line naming the task, the error rate and the last error.
    """


class ErrorWatch:
    """The verdicts of a task's last ``window`` rollouts; raises :class:`BrokenTaskError` when too many are errors.

    Only ``error`` counts: ``timeout`` can be the model's fault (code that never ends), ``error`` is the task's.
    """

    def __init__(self, task: str, window: int = ERROR_WINDOW, fraction: float = ERROR_STOP_FRACTION) -> None:
        self.task = task
        self.fraction = fraction
        self.errors: deque[bool] = deque(maxlen=window)
        self.last_error = ""

    def add(self, infos: Any, n: int) -> None:
        for i in range(n):
            info = _info_at(infos, i)
            failed = str(info.get("verdict", "")) == "error"
            self.errors.append(failed)
            if failed:
                self.last_error = str(info.get("error") or info.get("feedback") or "no detail")

    def check(self) -> None:
        window = self.errors.maxlen or 0
        if len(self.errors) < window or sum(self.errors) <= self.fraction * window:
            return
        last = " ".join(self.last_error.split())  # one line, whatever the exception text held
        raise BrokenTaskError(f"training stopped: {self.task}: {sum(self.errors)} of the last {window} rollouts "
                              f"could not be scored (verdict 'error'); last error: {last[:300]}")


def run_update(agent: FSTAgent, envs: gym.vector.VectorEnv, problem_ids: Sequence[int],
               watch: ErrorWatch | None = None) -> dict[str, Any]:
    """Act on groups (the vector env's G copies of one problem, cycling through ``problem_ids``) until the agent
    takes an update; returns its metrics. With ``watch``, stops (:class:`BrokenTaskError`) on a broken task."""
    if len(set(map(int, problem_ids))) < agent.config.groups_per_step:
        raise ConfigError(f"an update needs {agent.config.groups_per_step} distinct problems (groups_per_step) but "
                          f"got {len(set(map(int, problem_ids)))}: the task has too few problems for this setting")
    metrics: dict[str, Any] = {}
    batch = 0
    while not metrics:
        obs, infos = envs.reset(options={"problem_id": int(problem_ids[batch % len(problem_ids)])})
        actions = agent.act(obs, infos)
        _, rewards, _, _, infos = envs.step(actions)
        agent.observe(rewards, infos)
        if watch is not None:
            watch.add(infos, len(actions))
            watch.check()
        metrics = agent.update()
        batch += 1
    return metrics


def train(agent: FSTAgent, schedule: Schedule | str, steps: int | None = None, *, run_dir: str | Path | None = None,
          seed: int = 0, resume: bool = False, quiet: bool = False, tensorboard: bool = True,
          on_update: Callable[[int, dict], None] | None = None, **env_kwargs: Any) -> dict[str, Any]:
    """Train ``agent`` on a schedule (or on one env id for ``steps`` updates) and return the run's summary.

    With ``run_dir``: TensorBoard events (``tb/``), ``scalars.jsonl`` / ``scalars.csv``, ``text.jsonl``,
    ``summary.json`` (evaluations, accuracy matrix, counters, best context) and checkpoints
    (``checkpoints/step-N``, ``checkpoints/latest``); ``resume=True`` continues from the latest checkpoint.
    """
    if isinstance(schedule, str):
        if steps is None:
            raise ConfigError("train: steps is required when training on a single env id")
        schedule = Schedule([Stage(schedule, steps, dict(env_kwargs))])
    schedule.validate()
    run_dir = Path(run_dir) if run_dir is not None else None
    logger = RunLogger(run_dir, tensorboard=tensorboard, resume=resume) if run_dir is not None else None
    position = {"stage": 0, "stage_step": 0, "step": 0, "evals": [], "stage_ends": [], "baseline": None}
    checkpoints = run_dir / "checkpoints" if run_dir is not None else None
    if resume and run_dir is not None:
        position = _resume(agent, run_dir, position)
    start_time = time.perf_counter()
    progress = _progress(schedule.total_steps, position["step"], quiet)

    if position["baseline"] is None:  # the initial model on every task: forward-transfer reference, at step 0
        _phase(progress, f"baseline evaluation ({_eval_size(schedule)})")
        row, scalars = evaluation_row(agent, schedule, 0, -1)
        position.update(baseline=row["accuracy"], baseline_row=row)
        if logger is not None:
            logger.scalars(0, scalars)
    for stage_index in range(position["stage"], len(schedule.stages)):
        stage = schedule.stages[stage_index]
        agent.set_task(stage.env_id, **stage.env_kwargs)
        if position["stage_step"] == 0 and stage.reset_population:
            agent.population.reset_to(dict(agent.config.seed_context))
        envs = gym.make_vec(stage.env_id, num_envs=agent.config.group_size, **stage.env_kwargs)
        num_problems = envs.call("num_problems")[0]
        watch = ErrorWatch(stage.task)

        while position["stage_step"] < stage.steps:
            # Distinct problems for this update, depending only on (seed, step): a resumed run draws the same.
            problem_ids = np.random.default_rng([seed, position["step"]]).choice(
                num_problems, size=min(num_problems, 4 * agent.config.groups_per_step), replace=False)
            fast_due = agent.fast is not None and (agent.counters["update"] + 1) % agent.config.fast_every == 0
            _phase(progress, f"update {position['step'] + 1}/{schedule.total_steps}: rollouts + slow step"
                             + (" + fast round" if fast_due else ""))
            try:
                metrics = run_update(agent, envs, problem_ids, watch)
            except BrokenTaskError:
                envs.close()
                progress.close()
                if logger is not None:
                    logger.close()
                raise
            position["stage_step"] += 1
            position["step"] += 1
            step = position["step"]
            metrics.update({"schedule/stage": stage_index, "budget/elapsed_s": time.perf_counter() - start_time})
            if schedule.eval_every and step % schedule.eval_every == 0:
                _phase(progress, f"evaluation after update {step} ({_eval_size(schedule)})")
                metrics.update(_record_eval(agent, schedule, position, step, stage_index))
            if logger is not None:
                logger.scalars(step, metrics)
                if "fast/round" in metrics:
                    fast = {k.removeprefix("fast/"): v for k, v in metrics.items() if k.startswith("fast/")}
                    logger.fast_round(step, fast, agent.population)
            if on_update is not None:
                on_update(step, metrics)
            progress.update(1)
            progress.set_postfix(stage=stage_index, reward=f"{metrics.get('rollout/reward_mean', float('nan')):.2f}",
                                 err=f"{metrics.get('rollout/error_rate', 0.0):.0%}",
                                 timeout=f"{metrics.get('rollout/timeout_rate', 0.0):.0%}")
            if checkpoints is not None and schedule.checkpoint_every and step % schedule.checkpoint_every == 0 \
                    and position["stage_step"] < stage.steps:
                _save_checkpoint(agent, position, checkpoints)
                logger.flush()
        # End of the stage: its row of the accuracy matrix, then a checkpoint at the next stage's start.
        if not position["stage_ends"] or position["stage_ends"][-1]["stage"] != stage_index:
            _phase(progress, f"end-of-stage {stage_index} evaluation ({_eval_size(schedule)})")
            row = _record_eval(agent, schedule, position, position["step"], stage_index)
            position["stage_ends"].append(position["evals"][-1])
            if logger is not None:
                logger.scalars(position["step"], row)
        position.update(stage=stage_index + 1, stage_step=0)
        if checkpoints is not None:
            _phase(progress, "saving checkpoint")
            _save_checkpoint(agent, position, checkpoints)
            logger.flush()
        envs.close()
    _phase(progress, "done")
    progress.close()

    matrix = [row["accuracy"] for row in position["stage_ends"]]
    summary = {"steps": position["step"], "baseline": position["baseline"],
               "baseline_row": position.get("baseline_row"), "evals": position["evals"],
               "accuracy_matrix": matrix, "continual": _continual(schedule, matrix, position["baseline"]),
               "tasks": [t.task for t in schedule.tasks], "stages": [asdict(s) for s in schedule.stages],
               "counters": dict(agent.counters), "best_context": agent.population.best().context,
               "wall_time_s": time.perf_counter() - start_time}  # this process (a resumed run: since the resume)
    if run_dir is not None:
        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
        logger.close()
    return summary


def _continual(schedule: Schedule, matrix: list[dict[str, float]], baseline: dict[str, float]) -> dict[str, float]:
    """Forgetting and transfer over the stage x task matrix (tasks ordered as first trained)."""
    from fst_env.metrics import continual_metrics

    order = [stage.task for stage in schedule.stages]  # row i trained on task order[i]
    tasks = list(dict.fromkeys(order))
    if len(matrix) < 2 or len(tasks) != len(order):  # one stage, or a task repeated: no standard definition
        return {}
    values = [[row[t] for t in tasks] for row in matrix]
    return continual_metrics(values, baseline=[baseline[t] for t in tasks]).as_dict()


def _record_eval(agent: FSTAgent, schedule: Schedule, position: dict, step: int, stage: int) -> dict[str, float]:
    """Evaluate every task, append the row to the run's evaluations and return its scalars."""
    row, scalars = evaluation_row(agent, schedule, step, stage)
    position["evals"].append(row)
    return scalars


def evaluation_row(agent: FSTAgent, schedule: Schedule, step: int, stage: int) -> tuple[dict, dict[str, float]]:
    """Every task evaluated (sampled mean@k and greedy, each with a 95% Wilson interval over ``n`` problems, and
    per-problem results for paired comparisons between runs): the summary row and its TensorBoard scalars."""
    results = {task.task: agent.evaluate(task.env_id, split=schedule.eval_split, problems=schedule.eval_problems,
                                         k=schedule.eval_k, **task.env_kwargs) for task in schedule.tasks}
    greedy = {task.task: agent.evaluate(task.env_id, split=schedule.eval_split, problems=schedule.eval_problems,
                                        greedy=True, **task.env_kwargs) for task in schedule.tasks}
    row: dict[str, Any] = {"step": step, "stage": stage, "rl_samples": agent.counters["rl_samples"],
                           "fast_rollouts": agent.counters["fast_rollouts"], "k": schedule.eval_k}
    scalars: dict[str, float] = {}
    for suffix, found in (("", results), ("_greedy", greedy)):
        row[f"accuracy{suffix}"] = {task: result["accuracy"] for task, result in found.items()}
        row[f"ci{suffix}"] = {task: [result["ci_low"], result["ci_high"]] for task, result in found.items()}
        row[f"per_problem{suffix}"] = {task: result["per_problem"] for task, result in found.items()}
        for task, result in found.items():
            scalars[f"eval/accuracy{suffix}/{task}"] = result["accuracy"]
            scalars[f"eval/accuracy{suffix}_ci_low/{task}"] = result["ci_low"]
            scalars[f"eval/accuracy{suffix}_ci_high/{task}"] = result["ci_high"]
    row["n"] = {task: result["n"] for task, result in results.items()}
    scalars.update({f"eval/n/{task}": result["n"] for task, result in results.items()})
    if schedule.kl_prompts:
        drift = held_out_drift(agent, schedule)
        row.update(kl=drift["kl"], entropy=drift["entropy"])
        scalars.update({"eval/kl": drift["kl"], "eval/kl_k3": drift["kl_k3"], "eval/entropy": drift["entropy"]})
    return row, scalars


def held_out_drift(agent: FSTAgent, schedule: Schedule) -> dict[str, float]:
    """KL(policy || base) and entropy per token on held-out prompts of the current stage's task, no context."""
    from fst_env.metrics import policy_kl_and_entropy

    env = gym.make(agent.env_id, split=schedule.eval_split, **agent.env_kwargs)
    prompts = [env.reset(options={"problem_id": i})[0]
               for i in range(min(schedule.kl_prompts, env.unwrapped.num_problems()))]
    return policy_kl_and_entropy(agent, prompts, max_new_tokens=agent.config.max_new_tokens, context={})


def _save_checkpoint(agent: FSTAgent, position: Mapping[str, Any], root: Path, keep: int = 2) -> None:
    """Write ``root/step-N`` (agent + schedule position + manifest) as one new directory, then point
    ``root/latest`` at it.

    The directory appears by one rename of a complete temp dir and its manifest (every file's size and sha256)
    is written last, so a crash or a full disk leaves either no new directory or one resume can verify. Older
    checkpoints beyond ``keep`` are removed only after the new one validates (see
    :func:`fst_env.checkpoints.save_checkpoint`).
    """

    def write(tmp: Path) -> None:
        agent.save(tmp / "agent")
        (tmp / "run.json").write_text(json.dumps(position))

    save_checkpoint(root, int(position["step"]), write, keep=keep)


def latest_checkpoint(run_dir: str | Path, *, report: Callable[[str], None] | None = report_to_stderr,
                      ) -> Path | None:
    """The newest checkpoint of a run directory that validates against its manifest, or None when it has none.

    Passed-over checkpoints and a bad ``latest`` pointer are reported one line each; raises
    :class:`~fst_env.checkpoints.CheckpointError` (one line) when checkpoints exist but none validates.
    """
    return find_checkpoint(run_dir, report=report)


def _resume(agent: FSTAgent, run_dir: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """Load the newest valid checkpoint of ``run_dir`` into ``agent`` and return its schedule position.

    A run dir without any checkpoint starts at ``fresh`` (said on stderr); one whose checkpoints all fail to
    validate, or whose newest valid checkpoint does not load into this agent, raises CheckpointError.
    """
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        report_to_stderr(f"resume: {run_dir / 'checkpoints'} has no checkpoint yet; starting at step 0")
        return fresh
    try:
        agent.load(checkpoint / "agent")
    except Exception as exc:  # whatever failed inside load becomes one line naming the checkpoint
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{checkpoint} validates but does not load into this agent "
                              f"({type(exc).__name__}: {detail}); was it written with a different config?") from None
    return read_position(checkpoint)


def _eval_size(schedule: Schedule) -> str:
    """How big an evaluation is, for the progress label."""
    tasks = len(schedule.tasks)
    return (f"{tasks} task{'s' * (tasks != 1)} x {schedule.eval_problems} held-out problems"
            + (f" x {schedule.eval_k} samples" if schedule.eval_k > 1 else ""))


def _phase(progress: Any, label: str) -> None:
    """Name what the run is doing now on the progress bar, so a long phase does not look like a hang."""
    progress.set_description_str(f"fst train: {label}", refresh=True)


def _progress(total: int, initial: int, quiet: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="fst train", unit="update", disable=quiet, dynamic_ncols=True)
