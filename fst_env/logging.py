"""Run logging: TensorBoard event files, a JSONL and CSV copy of the scalars, and fast-round text.

Tags are stable: a metric ``slow/loss`` is logged under the tag ``slow/loss`` at the global update step. Text
tags: ``fast/best_context`` (the best context after each fast round, with what changed), ``fast/proposals``
(accepted and rejected proposals), ``fast/population`` (size and per-context scores).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fst_env.atomic import write_text_atomic
from fst_env.context import render_context


def _flat_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


class RunLogger:
    """Writes one run's metrics to TensorBoard (``run_dir/tb``), ``scalars.jsonl`` and ``scalars.csv``.

    ``scalars`` takes any metrics dict (non-numeric values are skipped for the scalar files);
    ``fast_round`` renders a fast round's outcome as text. ``resume=True`` appends to existing files.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl_path = self.run_dir / "scalars.jsonl"
        if not resume and self._jsonl_path.exists():
            self._jsonl_path.unlink()
        self._jsonl = self._jsonl_path.open("a")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def scalars(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        values = _flat_scalars(metrics)
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        return values

    def text(self, step: int, tag: str, text: str) -> None:
        if self._writer is not None:
            # TensorBoard renders text as markdown: keep line breaks and literal characters.
            self._writer.add_text(tag, "```\n" + text + "\n```", step)
        with (self.run_dir / "text.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, "tag": tag, "text": text}) + "\n")

    def fast_round(self, step: int, round_metrics: Mapping[str, Any], population: Any) -> None:
        """Best context (with what changed), population scores, and each proposal's verdict as text."""
        best = population.best()
        origin = "seed" if best.parent_id is None else (
            f"child of {best.parent_id} from round {best.round}, changed {', '.join(best.changed) or 'nothing'}")
        self.text(step, "fast/best_context",
                  f"context {best.id} (mean score {best.mean_score:.3f}; {origin})\n\n{render_context(best.context)}")
        scores = ", ".join(f"{cid}: {score:.3f}" for cid, score in population.mean_scores().items())
        self.text(step, "fast/population", f"size {len(population)}; mean scores {{{scores}}}")
        for proposal in round_metrics.get("proposals", []):
            verdict = "accepted" if proposal.get("accepted") else "rejected"
            self.text(step, "fast/proposals",
                      f"{verdict}: parent {proposal.get('parent_id')} -> child {proposal.get('child_id')} "
                      f"(minibatch {proposal.get('parent_sum')} -> {proposal.get('child_sum')}; "
                      f"{proposal.get('reason', '')})\n"
                      + "\n".join(f"[{name}]\n{diff}" for name, diff in dict(proposal.get("diff") or {}).items()))

    def flush(self) -> None:
        self._jsonl.flush()
        if self._writer is not None:
            self._writer.flush()
        self._write_csv()

    def close(self) -> None:
        self.flush()
        self._jsonl.close()
        if self._writer is not None:
            self._writer.close()

    def _write_csv(self) -> None:
        rows = read_scalars(self.run_dir)
        columns = ["step", *sorted({k for row in rows for k in row} - {"step"})]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.run_dir / "scalars.csv", buffer.getvalue())


def read_scalars(run_dir: str | Path) -> list[dict[str, float]]:
    """The scalar rows of a run (from ``scalars.jsonl``), in order."""
    path = Path(run_dir) / "scalars.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
