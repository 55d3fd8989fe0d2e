"""The FST training loop, top to bottom: stages of tasks, evaluation, logging, checkpoints and resume.

Each update (:func:`update`) is the algorithm in plain sight: ``agent.collect`` G whole episodes of each of
``groups_per_step`` problems -> ``agent.slow_step`` (CISPO on every turn's tokens, one advantage per episode)
-> every ``fast_every`` updates ``agent.fast_round`` (re-score the population, propose children from the
episodes); then :func:`train` evaluates every ``eval_every`` updates, logs, and checkpoints.

One agent goes from stage to stage (optionally with its population reset to the seed context, as in the paper's
continual runs); evaluations cover the held-out split of *every* task, building the stage x task accuracy
matrix. :class:`RunState` is the run's one position (one step counter), stored in each checkpoint's run.json.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from fst_env.agents.episodes import Episode
from fst_env.agents.fst_agent import FSTAgent
from fst_env.atomic import write_text_atomic
from fst_env.checkpoints import CheckpointError, find_checkpoint, read_position, report_to_stderr, save_checkpoint
from fst_env.logging import RunLogger
from fst_env.schedule import ConfigError, Schedule, Stage

#: Training stops when more than this fraction of the last ERROR_WINDOW env steps had verdict ``error``.
ERROR_STOP_FRACTION = 0.5
ERROR_WINDOW = 32


class BrokenTaskError(RuntimeError):
    """Training stopped: the task could not score most rollouts (broken reward or judge); a one-line message."""


class ErrorWatch:
    """The verdicts of a task's last ``window`` turns; raises :class:`BrokenTaskError` when too many are ``error``
    (``timeout`` does not count: it can be the model's fault, code that never ends; ``error`` is the task's)."""

    def __init__(self, task: str, window: int = ERROR_WINDOW, fraction: float = ERROR_STOP_FRACTION) -> None:
        self.task = task
        self.fraction = fraction
        self.errors: deque[bool] = deque(maxlen=window)
        self.last_error = ""

    def add(self, episodes: Sequence[Episode]) -> None:
        """Record every turn's verdict, then raise if the window is mostly errors."""
        for turn in (t for e in episodes for t in e.turns):
            failed = turn.verdict == "error"
            self.errors.append(failed)
            if failed:
                self.last_error = str(turn.info.get("error") or turn.feedback or "no detail")
        window = self.errors.maxlen or 0
        if len(self.errors) < window or sum(self.errors) <= self.fraction * window:
            return
        last = " ".join(self.last_error.split())  # one line, whatever the exception text held
        raise BrokenTaskError(f"training stopped: {self.task}: {sum(self.errors)} of the last {window} rollouts "
                              f"could not be scored (verdict 'error'); last error: {last[:300]}")


@dataclass
class RunState:
    """Where a run is: the stage, the update within it, the update overall (the one step counter), and the
    evaluations so far. ``asdict`` of it is a checkpoint's ``run.json``."""

    stage: int = 0
    stage_step: int = 0
    step: int = 0
    evals: list[dict] = field(default_factory=list)
    stage_ends: list[dict] = field(default_factory=list)
    baseline: dict[str, float] | None = None
    baseline_row: dict | None = None


def update_problems(agent: FSTAgent, seed: int, step: int, num_problems: int) -> list[int]:
    """The distinct problems of the update after ``step``, from (seed, step) only: a resumed run draws the same."""
    wanted = _enough_problems(agent, num_problems)
    return [int(p) for p in np.random.default_rng([seed, step]).choice(num_problems, size=wanted, replace=False)]


def _enough_problems(agent: FSTAgent, available: int) -> int:
    """``groups_per_step``, after a ConfigError if fewer distinct problems are available."""
    wanted = agent.config.groups_per_step
    if available < wanted:
        raise ConfigError(f"an update needs {wanted} distinct problems (groups_per_step) but got {available}: "
                          "the task has too few problems for this setting")
    return wanted


def update(agent: FSTAgent, problem_ids: Sequence[int], step: int, watch: ErrorWatch | None = None) -> tuple[dict, Any]:
    """Update number ``step`` (1-based), the algorithm itself: collect G episodes of each problem, take the slow
    step on them, and every ``fast_every`` updates a fast round. Returns the update's metrics (fast-round keys
    as ``fast/*``) and the fast round's own metrics (None when none ran). ``watch`` stops a broken task."""
    episodes = agent.collect(problem_ids)
    if watch is not None:
        watch.add(episodes)
    metrics = agent.slow_step(episodes)
    round_metrics = agent.fast_round() if agent.fast_due(step) else None
    if round_metrics is not None:
        metrics.update({f"fast/{k}": v for k, v in round_metrics.items()} | agent.budget())
    return metrics, round_metrics


def run_update(agent: FSTAgent, envs: Any, problem_ids: Sequence[int], watch: ErrorWatch | None = None) -> dict:
    """:func:`update` outside :func:`train` (the harness's probes) on the first ``groups_per_step`` distinct
    ``problem_ids``, numbered by the agent's own update count. ``envs`` is unused (episodes are played on the
    agent's plain envs): it is accepted for callers written for the vector-env loop."""
    distinct = list(dict.fromkeys(int(p) for p in problem_ids))
    return update(agent, distinct[: _enough_problems(agent, len(distinct))], agent.counters["update"] + 1, watch)[0]


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
    checkpoints = run_dir / "checkpoints" if run_dir is not None else None
    state = _resume(agent, run_dir) if resume and run_dir is not None else RunState()
    start_time = time.perf_counter()
    from tqdm.auto import tqdm

    progress = tqdm(total=schedule.total_steps, initial=state.step, desc="fst train", unit="update", disable=quiet,
                    dynamic_ncols=True)
    try:
        if state.baseline is None:  # the initial model on every task: forward-transfer reference, at step 0
            _phase(progress, f"baseline evaluation ({_eval_size(schedule)})")
            row, scalars = evaluation_row(agent, schedule, 0, -1)
            state.baseline, state.baseline_row = row["accuracy"], row
            if logger is not None:
                logger.scalars(0, scalars)
        for stage_index in range(state.stage, len(schedule.stages)):
            stage = schedule.stages[stage_index]
            agent.set_task(stage.env_id, **stage.env_kwargs)
            if state.stage_step == 0 and stage.reset_population:
                agent.population.reset_to(dict(agent.config.seed_context))
            num_problems = agent.envs.take(stage.env_id, 1, **stage.env_kwargs)[0].unwrapped.num_problems()
            watch = ErrorWatch(stage.task)
            while state.stage_step < stage.steps:
                step = state.step + 1
                _phase(progress, f"update {step}/{schedule.total_steps}: rollouts + slow step"
                                 + (" + fast round" if agent.fast_due(step) else ""))
                metrics, round_metrics = update(agent, update_problems(agent, seed, state.step, num_problems), step,
                                                watch)
                if logger is not None and round_metrics is not None:
                    logger.fast_round(step, round_metrics, agent.population)
                state.step, state.stage_step = step, state.stage_step + 1
                metrics.update({"schedule/stage": stage_index, "budget/elapsed_s": time.perf_counter() - start_time})
                if schedule.eval_every and step % schedule.eval_every == 0:
                    _phase(progress, f"evaluation after update {step} ({_eval_size(schedule)})")
                    metrics.update(_record_eval(agent, schedule, state, step, stage_index))
                if logger is not None:
                    logger.scalars(step, metrics)
                if on_update is not None:
                    on_update(step, metrics)
                progress.update(1)
                rates = (metrics["rollout/reward_mean"], metrics["rollout/error_rate"], metrics["rollout/timeout_rate"])
                progress.set_postfix(stage=stage_index, reward=f"{rates[0]:.2f}", err=f"{rates[1]:.0%}",
                                     timeout=f"{rates[2]:.0%}")
                if checkpoints is not None and schedule.checkpoint_every and step % schedule.checkpoint_every == 0 \
                        and state.stage_step < stage.steps:
                    _save_checkpoint(agent, state, checkpoints, logger)
            # End of the stage: its row of the accuracy matrix, then a checkpoint at the next stage's start.
            if not state.stage_ends or state.stage_ends[-1]["stage"] != stage_index:
                _phase(progress, f"end-of-stage {stage_index} evaluation ({_eval_size(schedule)})")
                row = _record_eval(agent, schedule, state, state.step, stage_index)
                state.stage_ends.append(state.evals[-1])
                if logger is not None:
                    logger.scalars(state.step, row)
            state.stage, state.stage_step = stage_index + 1, 0
            if checkpoints is not None:
                _phase(progress, "saving checkpoint")
                _save_checkpoint(agent, state, checkpoints, logger)
        _phase(progress, "done")
    finally:
        progress.close()
        agent.close()
        if logger is not None:
            logger.close()

    matrix = [row["accuracy"] for row in state.stage_ends]
    summary = {"steps": state.step, "baseline": state.baseline, "baseline_row": state.baseline_row,
               "evals": state.evals, "accuracy_matrix": matrix,
               "continual": _continual(schedule, matrix, state.baseline),
               "tasks": [t.task for t in schedule.tasks], "stages": [asdict(s) for s in schedule.stages],
               "counters": dict(agent.counters), "best_context": agent.population.best().context,
               "wall_time_s": time.perf_counter() - start_time}  # this process (a resumed run: since the resume)
    if run_dir is not None:
        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
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


def _record_eval(agent: FSTAgent, schedule: Schedule, state: RunState, step: int, stage: int) -> dict[str, float]:
    """Evaluate every task, append the row to the run's evaluations and return its scalars."""
    row, scalars = evaluation_row(agent, schedule, step, stage)
    state.evals.append(row)
    return scalars


def evaluation_row(agent: FSTAgent, schedule: Schedule, step: int, stage: int) -> tuple[dict, dict[str, float]]:
    """Every task evaluated (sampled mean@k and, unless ``schedule.eval_greedy`` is off, greedy, each with a 95%
    Wilson interval over ``n`` problems, and per-problem results for paired comparisons between runs): the summary
    row and its TensorBoard scalars."""
    results = {task.task: agent.evaluate(task.env_id, split=schedule.eval_split, problems=schedule.eval_problems,
                                         k=schedule.eval_k, **task.env_kwargs) for task in schedule.tasks}
    greedy = {task.task: agent.evaluate(task.env_id, split=schedule.eval_split, problems=schedule.eval_problems,
                                        greedy=True, **task.env_kwargs) for task in schedule.tasks
              } if schedule.eval_greedy else None
    row: dict[str, Any] = {"step": step, "stage": stage, "rl_samples": agent.counters["rl_samples"],
                           "fast_rollouts": agent.counters["fast_rollouts"], "k": schedule.eval_k}
    scalars: dict[str, float] = {}
    for suffix, found in (("", results), ("_greedy", greedy)):
        if found is None:  # schedule.eval_greedy off: the row has no greedy keys
            continue
        row[f"accuracy{suffix}"] = {task: r["accuracy"] for task, r in found.items()}
        row[f"ci{suffix}"] = {task: [r["ci_low"], r["ci_high"]] for task, r in found.items()}
        row[f"per_problem{suffix}"] = {task: r["per_problem"] for task, r in found.items()}
        for task, r in found.items():
            scalars.update({f"eval/accuracy{suffix}/{task}": r["accuracy"], f"eval/accuracy{suffix}_ci_low/{task}":
                            r["ci_low"], f"eval/accuracy{suffix}_ci_high/{task}": r["ci_high"]})
    row["n"] = {task: result["n"] for task, result in results.items()}
    scalars.update({f"eval/n/{task}": result["n"] for task, result in results.items()})
    if schedule.kl_prompts:  # KL(policy || base) and entropy per token on this stage's held-out prompts, no context
        env = gym.make(agent.env_id, split=schedule.eval_split, **agent.env_kwargs)
        prompts = [env.reset(options={"problem_id": i})[0]
                   for i in range(min(schedule.kl_prompts, env.unwrapped.num_problems()))]
        drift = agent.kl_drift(prompts, max_new_tokens=agent.config.max_new_tokens, context={})
        row.update(kl=drift["kl"], entropy=drift["entropy"])
        scalars.update({"eval/kl": drift["kl"], "eval/kl_k3": drift["kl_k3"], "eval/entropy": drift["entropy"]})
    return row, scalars


def _save_checkpoint(agent: FSTAgent, state: RunState, root: Path, logger: RunLogger | None, keep: int = 2) -> None:
    """Write ``root/step-N`` (agent + run state), point ``root/latest`` at it atomically
    (:func:`fst_env.checkpoints.save_checkpoint`: a crash leaves nothing or a verifiable checkpoint), flush logs."""

    def write(tmp: Path) -> None:
        agent.save(tmp / "agent")
        (tmp / "run.json").write_text(json.dumps(asdict(state)))

    save_checkpoint(root, state.step, write, keep=keep)
    if logger is not None:
        logger.flush()


#: The newest checkpoint of a run dir that validates (None when it has none; CheckpointError when none validates).
latest_checkpoint = find_checkpoint


def _resume(agent: FSTAgent, run_dir: Path) -> RunState:
    """Load the newest valid checkpoint of ``run_dir`` into ``agent`` and return its run state (a fresh one, said
    on stderr, when there is none); CheckpointError when none validates or the newest does not load."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        report_to_stderr(f"resume: {run_dir / 'checkpoints'} has no checkpoint yet; starting at step 0")
        return RunState()
    try:
        agent.load(checkpoint / "agent")
    except Exception as exc:  # whatever failed inside load becomes one line naming the checkpoint
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{checkpoint} validates but does not load into this agent "
                              f"({type(exc).__name__}: {detail}); was it written with a different config?") from None
    position = read_position(checkpoint)
    return RunState(**{f.name: position[f.name] for f in fields(RunState) if f.name in position})


def _eval_size(schedule: Schedule) -> str:
    """How big an evaluation is, for the progress label."""
    tasks = len(schedule.tasks)
    return (f"{tasks} task{'s' * (tasks != 1)} x {schedule.eval_problems} held-out problems"
            + (f" x {schedule.eval_k} samples" if schedule.eval_k > 1 else ""))


def _phase(progress: Any, label: str) -> None:
    """Name what the run is doing now on the progress bar, so a long phase does not look like a hang."""
    progress.set_description_str(f"fst train: {label}", refresh=True)
