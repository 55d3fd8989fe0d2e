"""The package's layers import one way: no module imports a module of a higher layer (docs/architecture.md).

Every import counts, top-level or inside a function, except those under ``if TYPE_CHECKING:`` (annotations
only). The package face ``fst_env/__init__.py`` is left out: it registers the envs and re-exports the API.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Layer of each top-level name under ``fst_env`` (the folders agents/, envs/, wrappers/ install there too).
LAYERS: dict[str, int] = {
    # 0 foundation: the env contract, registry, splits, contexts, answer checks, sandboxed judging, files, statistics
    **dict.fromkeys(("core", "cards", "splits", "context", "answers", "presets", "schedule", "atomic",
                     "peft_utils", "multiagent", "custom", "sandbox", "judging", "logging", "stats"), 0),
    # 1 tasks: task families and gymnasium wrappers
    "envs": 1, "wrappers": 1,
    # 2 models and generation backends
    "models": 2, "backends": 2,
    # 3 agents: the policy with its slow and fast learners
    "agents": 3,
    # 4 the training driver: loop, checkpoints, run config, measurements, harness, plots, trainer integrations
    **dict.fromkeys(("loop", "checkpoints", "config", "metrics", "harness", "plots", "integrations"), 4),
    # 5 entry points
    **dict.fromkeys(("cli", "reproduce", "reproduce_analysis", "reproduce_report", "readme_table"), 5),
}

#: Imports that run upward today, each with the reason it is still there; the test fails on any other.
#: Empty: the last one (fst_agent -> metrics.accuracy_with_interval) went when the statistics moved to stats.py.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in ("agents", "envs", "wrappers"):
        parts.insert(0, "fst_env")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS[parts[1]] if parts[0] == "fst_env" and len(parts) > 1 and parts[1] in LAYERS else None


def _imports(tree: ast.Module) -> list[tuple[str, int]]:
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in
                 ast.unparse(node.test) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"fst_env.{a.name}" for a in node.names] if node.module == "fst_env" else [node.module]
            found += [(name, node.lineno) for name in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
    return found


def _sources() -> list[Path]:
    return [p for folder in ("fst_env", "agents", "envs", "wrappers") for p in sorted((ROOT / folder).rglob("*.py"))]


def test_every_module_has_a_layer():
    unknown = sorted({_module(p) for p in _sources() if _module(p) != "fst_env" and _layer(_module(p)) is None})
    assert not unknown, f"modules without a layer in tests/test_layers.py and docs/architecture.md: {unknown}"


def test_no_module_imports_a_higher_layer():
    upward, seen = [], set()
    for path in _sources():
        module = _module(path)
        own = _layer(module)
        if own is None:
            continue
        for target, line in _imports(ast.parse(path.read_text())):
            layer = _layer(target)
            if layer is None or layer <= own:
                continue
            key = (module, ".".join(target.split(".")[:2]))
            seen.add(key)
            if key not in KNOWN_UPWARD:
                upward.append(f"{path.relative_to(ROOT)}:{line} (layer {own}) imports {target} (layer {layer})")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)
    assert seen >= KNOWN_UPWARD, f"listed as known but gone (remove from KNOWN_UPWARD): {KNOWN_UPWARD - seen}"


def test_wrappers_do_not_import_envs():
    # Both are layer 1, but a wrapper serves every task family, so it may not depend on one.
    for path in sorted((ROOT / "wrappers").rglob("*.py")):
        bad = [t for t, _ in _imports(ast.parse(path.read_text())) if t.startswith("fst_env.envs")]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
