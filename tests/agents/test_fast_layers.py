"""The fast learners' modules: agents/fast.py re-exports them, and they import each other one way only."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import fst_env.agents.fast as fast

AGENTS = Path(__file__).resolve().parents[2] / "agents"
# Each module may import only the fast modules before it in this order.
ORDER = ("fast_bridge", "fast_acceptance", "fast_proposers", "fast_round")


def _fast_imports(name: str) -> set[str]:
    tree = ast.parse((AGENTS / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found |= {m.rsplit(".", 1)[-1] for m in modules if m.startswith("fst_env.agents.fast")}
    return found


def test_fast_re_exports_each_name_from_its_home_module():
    homes = [importlib.import_module(f"fst_env.agents.{m}") for m in ORDER]
    for name in fast.__all__:
        obj = getattr(fast, name)
        assert any(getattr(m, name, None) is obj for m in homes), f"fast.{name} has no home module"
    assert fast._clean is fast.clean_text and fast._RolloutAdapter is fast.RolloutAdapter  # the old private names


def test_fast_modules_import_one_way():
    for i, name in enumerate(ORDER):
        imported = _fast_imports(name)
        assert "fast" not in imported, f"{name} imports the re-export module agents/fast.py"
        later = imported & set(ORDER[i:])
        assert not later, f"{name} imports {sorted(later)}, which come after it (or itself)"
