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


def _rows(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The baseline (at 0 samples) and every evaluation, in order; old summaries without a baseline row get one
    built from their baseline accuracies."""
    baseline = summary.get("baseline_row") or {"accuracy": summary["baseline"], "rl_samples": 0, "fast_rollouts": 0}
    return [baseline, *summary["evals"]]


def accuracy_vs_samples(runs: Mapping[str, str | Path], out: Path) -> Path:
    """Held-out accuracy against generated samples (RL + fast-round rollouts), one line per run and task, with
    95% intervals as error bars and the baseline at 0; several runs (``fst compare``) share the axes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    n_text = set()
    for label, run_dir in runs.items():
        summary = load_summary(run_dir)
        rows = _rows(summary)
        for task in summary["tasks"]:
            xs = [_samples(row) for row in rows]
            ys = [row["accuracy"][task] for row in rows]
            name = f"{label}: {task}" if len(summary["tasks"]) > 1 or len(runs) > 1 else task
            intervals = [row.get("ci", {}).get(task) for row in rows]
            if all(intervals):
                below = [y - lo for y, (lo, _) in zip(ys, intervals, strict=True)]
                above = [hi - y for y, (_, hi) in zip(ys, intervals, strict=True)]
                ax.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=4, label=name)
            else:
                ax.plot(xs, ys, marker="o", label=name)
            n = rows[-1].get("n", {}).get(task)
            if n:
                n_text.add(f"n={n} problems x k={rows[-1].get('k', 1)}")
    ax.set_xlabel("samples generated (RL rollouts + fast-round rollouts); 0 = before training")
    ax.set_ylabel("held-out accuracy (mean@k)")
    ax.set_title("Held-out accuracy with 95% Wilson intervals" + (f" ({', '.join(sorted(n_text))})" if n_text else ""))
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


#: Fewer KL points than this make no curve: the plot says so instead of drawing one auto-zoomed point.
MIN_KL_POINTS = 2


def kl_vs_accuracy(runs: Mapping[str, str | Path], out: Path) -> Path | None:
    """Accuracy against KL(policy || base) at each evaluation, on axes starting at 0 (None when no run
    recorded KL); with too few points the figure says so rather than drawing an auto-zoomed dot."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    points_by_run = {}
    for label, run_dir in runs.items():
        summary = load_summary(run_dir)
        points = [(e["kl"], sum(e["accuracy"].values()) / len(e["accuracy"])) for e in summary["evals"]
                  if e.get("kl") is not None]
        if points:
            points_by_run[label] = points
    if not points_by_run:
        plt.close(fig)
        return None
    for label, points in points_by_run.items():
        ax.plot(*zip(*points, strict=True), marker="o", label=label)
    most = max(len(p) for p in points_by_run.values())
    if most < MIN_KL_POINTS:
        ax.text(0.5, 0.5, f"only {most} evaluation with KL: too little data for a curve\n"
                          "(evaluate more often: --eval-every N)", ha="center", va="center",
                transform=ax.transAxes, fontsize=11, color="dimgray")
    largest = max(kl for points in points_by_run.values() for kl, _ in points)
    ax.set_xlim(0, max(largest * 1.1, 1e-3))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("KL(policy || base) per token, held-out prompts")
    ax.set_ylabel("mean held-out accuracy over tasks")
    ax.set_title("Accuracy against drift from the base model")
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
    fig, ax = plt.subplots(figsize=(max(8.0, 2.5 + 2.0 * len(tasks)), max(3.5, 1.8 + 0.8 * len(rows))))
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=11,
                    color="white" if value < 0.6 else "black")
    ax.set_xticks(range(len(tasks)), [t.split("/")[-1] for t in tasks], rotation=20, ha="right", fontsize=9)
    ax.set_yticks(range(len(rows)), [f"after stage {i}: {s.split('/')[-1]}" for i, s in enumerate(stages)],
                  fontsize=9)
    ax.set_title(title or "Held-out accuracy after each stage (rows) on each task (columns)", fontsize=11)
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
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(steps, [r["rollout/reward_mean"] for r in rows if "rollout/reward_mean" in r], marker=".")
    for r in rows:
        if "fast/round" in r:
            ax.axvline(r["step"], color="orange", alpha=0.4)
    ax.set_xlabel("update")
    ax.set_ylabel("mean rollout reward")
    ax.set_title("Training reward per update (orange lines: fast rounds)")
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


# ------------------------------------------------------------------------------------------ fst reproduce
def reproduction_curves(series: Mapping[str, Mapping[str, Any]], out: Path, *, title: str,
                        hline: float | None = None, hline_label: str = "") -> Path:
    """Mean held-out accuracy against RL samples, one line per arm with its 95% band (``series[arm]``: ``x``,
    ``y``, ``low``, ``high``); ``hline`` marks a reference level (RL-only's peak)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, s in series.items():
        (line,) = ax.plot(s["x"], s["y"], marker="o", label=label)
        ax.fill_between(s["x"], s["low"], s["high"], color=line.get_color(), alpha=0.2)
    if hline is not None:
        ax.axhline(hline, color="gray", linestyle="--", linewidth=1, label=hline_label or None)
    ax.set_xlabel("RL samples (rollouts generated for updates; fast-round rollouts not counted); 0 = before training")
    ax.set_ylabel("held-out accuracy (mean@k), mean over seeds")
    ax.set_title(title + "\nbands: 95% bootstrap over seeds and problems", fontsize=11)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def reproduction_kl(series: Mapping[str, Mapping[str, Any]], out: Path, *, title: str,
                    target: float | None = None) -> Path:
    """Mean accuracy against mean KL(policy || base) at each evaluation, per arm, with 95% intervals on both axes
    (``series[arm]``: ``kl``, ``kl_low``, ``kl_high``, ``acc``, ``acc_low``, ``acc_high``; NaN bounds: no bar);
    ``target`` draws the matched accuracy."""
    import math

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    largest = 0.0
    for label, s in series.items():
        kl, acc = list(s["kl"]), list(s["acc"])

        def bars(mid: list[float], low: list[float], high: list[float]) -> list[list[float]]:
            return [[m - lo if math.isfinite(lo) else 0.0 for m, lo in zip(mid, low, strict=True)],
                    [hi - m if math.isfinite(hi) else 0.0 for m, hi in zip(mid, high, strict=True)]]

        ax.errorbar(kl, acc, xerr=bars(kl, s["kl_low"], s["kl_high"]), yerr=bars(acc, s["acc_low"], s["acc_high"]),
                    marker="o", capsize=3, label=label)
        largest = max([largest, *[v for v in s["kl_high"] if math.isfinite(v)], *kl])
    if target is not None:
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"matched accuracy {target:.3f}")
    right = max(largest * 1.1, 1e-6)
    ax.set_xlim(-0.02 * right, right)  # a margin: the base-weight arm sits at exactly 0
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("KL(policy || base) per token on held-out prompts (nats), mean over seeds")
    ax.set_ylabel("held-out accuracy (mean@k), mean over seeds")
    ax.set_title(title + "\nbars: 95% intervals (KL: t over seeds; accuracy: bootstrap)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def reproduction_intervals(rows: list[tuple[str, float, float, float]], out: Path, *, title: str,
                           xlabel: str) -> Path:
    """Point estimates with 95% intervals, one row each (``(label, mean, low, high)``; NaN bounds: a point only),
    against a zero line: differences a reader can check for "excludes 0" at a glance."""
    import math

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, max(3.0, 1.2 + 0.55 * len(rows))))
    for i, (_, mean, low, high) in enumerate(rows):
        if math.isfinite(low) and math.isfinite(high):
            ax.plot([low, high], [i, i], color="tab:blue", linewidth=2)
        ax.plot([mean], [i], marker="o", color="tab:blue")
    ax.axvline(0, color="gray", linewidth=1)
    ax.set_yticks(range(len(rows)), [label for label, *_ in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
