"""benchmarks/gpu_check.py, the prepared GPU script, runs end to end on the CPU (its --quick smoke mode)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_run_on_cpu(tmp_path):
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick", "--models", "tiny",
         "--sections", "generation", "updates", "trl", "--json", str(report_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all checks passed" in done.stdout
    report = json.loads(report_path.read_text())
    assert report["failed"] == []
    assert report["tiny"]["generation"]["cpu/float32"]["tokens_per_s"] > 0
    updates = report["tiny"]["updates"]
    assert set(updates["update_seconds"]) == {"rl", "fst"}
    assert all(all(checks.values()) for checks in updates["checks"].values())
    assert updates["update_seconds"]["fst"]["fast_round"] > 0  # a fast round ran within the timed updates
    assert report["trl"]["ok"] and len(report["trl"]["losses"]) == 2


def test_gpu_check_refuses_cuda_without_a_device():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "no CUDA device" in done.stderr
