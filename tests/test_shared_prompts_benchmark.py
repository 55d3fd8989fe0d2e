"""benchmarks/shared_prompts.py runs end to end on the tiny model and prints both comparisons."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "shared_prompts.py"


@pytest.mark.slow
def test_shared_prompts_smoke_run_on_the_tiny_model():
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--repeats", "1", "--max-new-tokens", "8"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT / "benchmarks")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "4 problems x G=4, 16 pieces" in out, out
    losses = re.findall(r"^  (padded|shared) .* loss ([-+][0-9.]+)$", out, flags=re.M)
    assert [name for name, _ in losses] == ["padded", "shared"], out
    assert float(losses[0][1]) == pytest.approx(float(losses[1][1]), abs=1e-5)  # the same step either way
    assert re.search(r"padded / shared: [0-9.]+x", out) and re.search(r"per row / per prompt: [0-9.]+x", out), out


def test_shared_prompts_rejects_a_zero_group():
    done = subprocess.run([sys.executable, str(SCRIPT), "--group-size", "1"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT / "benchmarks")
    assert done.returncode == 2 and "--group-size" in done.stderr
