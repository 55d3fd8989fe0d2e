"""benchmarks/decode_profile.py runs end to end on the tiny model and prints every figure it promises."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_decode_profile_smoke_run_on_the_tiny_model():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "decode_profile.py"), "--model", "tiny", "--batch", "3",
         "--steps", "3", "--repeats", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    step = re.search(r"step \(decode only.*?\): ([0-9.]+) ms -> ([0-9]+) tok/s", out)
    matmuls = re.search(r"matmuls alone: ([0-9.]+) ms per step", out)
    assert step and matmuls, out
    assert float(step.group(1)) > 0 and float(matmuls.group(1)) > 0
    assert "sampler:" in out and "3 rows x" in out
    for kind in ("matmuls", "attention", "other ops"):
        assert re.search(rf"^  {kind} +[0-9.]+ ms$", out, flags=re.M), out


def test_decode_profile_rejects_a_zero_batch():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_profile.py"), "--batch", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--batch" in done.stderr
