"""PNG plots of runs: accuracy vs samples, KL vs accuracy, the stage x task accuracy matrix, training reward."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fst_env.logging import read_scalars


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt

    return plt


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no summary.json: is it a finished `fst train` run directory?")
    return json.loads(path.read_text())


def _samples(row: Mapping[str, Any]) -> float:
    return float(row.get("rl_samples", 0)) + float(row.get("fast_rollouts", 0))


def accuracy_vs_samples(runs: Mapping[str, str | Path], out: Path) -> Path:
    """One line per run and task: held-out accuracy against generated samples (RL + fast-round rollouts)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, run_dir in runs.items():
        summary = load_summary(run_dir)
        for task in summary["tasks"]:
            xs = [0.0] + [_samples(e) for e in summary["evals"]]
            ys = [summary["baseline"][task]] + [e["accuracy"][task] for e in summary["evals"]]
            ax.plot(xs, ys, marker="o", label=f"{label}: {task}" if len(summary["tasks"]) > 1 or len(runs) > 1
                    else task)
    ax.set_xlabel("samples generated (RL rollouts + fast-round rollouts)")
    ax.set_ylabel("held-out accuracy (mean@k)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def kl_vs_accuracy(runs: Mapping[str, str | Path], out: Path) -> Path | None:
    """Accuracy against KL(policy || base) at each evaluation (None when no run recorded KL)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    plotted = False
    for label, run_dir in runs.items():
        summary = load_summary(run_dir)
        points = [(e["kl"], sum(e["accuracy"].values()) / len(e["accuracy"])) for e in summary["evals"]
                  if e.get("kl") is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
            plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set_xlabel("KL(policy || base) per token, held-out prompts")
    ax.set_ylabel("mean held-out accuracy over tasks")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def accuracy_matrix(run_dir: str | Path, out: Path, title: str = "") -> Path:
    """Heatmap of accuracy on each task (columns) at the end of each stage (rows)."""
    plt = _pyplot()
    summary = load_summary(run_dir)
    tasks, rows = summary["tasks"], summary["accuracy_matrix"]
    stages = [s["env_id"] for s in summary["stages"]][: len(rows)]
    values = [[row.get(t, float("nan")) for t in tasks] for row in rows]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(tasks), 1.2 + 0.7 * len(rows)))
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    ax.set_xticks(range(len(tasks)), [t.split("/")[-1] for t in tasks], rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"after stage {i}: {s.split('/')[-1]}" for i, s in enumerate(stages)],
                  fontsize=8)
    ax.set_title(title or "accuracy after each stage")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def training_reward(run_dir: str | Path, out: Path) -> Path:
    """Mean rollout reward per update (the RL signal) with the fast rounds marked."""
    plt = _pyplot()
    rows = read_scalars(run_dir)
    steps = [r["step"] for r in rows if "rollout/reward_mean" in r]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, [r["rollout/reward_mean"] for r in rows if "rollout/reward_mean" in r], marker=".")
    for r in rows:
        if "fast/round" in r:
            ax.axvline(r["step"], color="orange", alpha=0.4)
    ax.set_xlabel("update")
    ax.set_ylabel("mean rollout reward (orange: fast rounds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    """Every plot for one run directory, written next to it; returns the files."""
    run_dir = Path(run_dir)
    files = [accuracy_vs_samples({run_dir.name: run_dir}, run_dir / "accuracy_vs_samples.png"),
             accuracy_matrix(run_dir, run_dir / "accuracy_matrix.png"),
             training_reward(run_dir, run_dir / "training_reward.png")]
    kl = kl_vs_accuracy({run_dir.name: run_dir}, run_dir / "kl_vs_accuracy.png")
    return files + ([kl] if kl else [])
