"""Checkpoint manifests: what a complete checkpoint directory holds, and finding the newest one that validates.

A checkpoint ``checkpoints/step-N`` is written as one temp directory renamed into place; its last file is
``manifest.json``: every other file's relative path, size and sha256. A directory is used only when every listed
file is there with that size and digest and ``run.json`` is a well-formed schedule position for step N. The
``checkpoints/latest`` pointer is advisory: resume picks the newest step directory that validates, and says (one
line each) which newer checkpoint or pointer it had to pass over and why. No torch here: ``fst eval`` and the
CLI's error paths use it before any model loads.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fst_env.atomic import atomic_directory, write_text_atomic

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "fst-checkpoint-manifest/1"
POINTER = "latest"
STEP_DIR = re.compile(r"step-(\d{8,})")
#: Keys of the schedule position a checkpoint's ``run.json`` holds (see ``fst_env.loop.train``).
POSITION_KEYS = ("stage", "stage_step", "step", "evals", "stage_ends", "baseline")
#: Files every checkpoint has, whatever the agent's channels (the slow learner adds its own under agent/slow).
REQUIRED = ("run.json", "agent/agent.json", "agent/torch_rng.pt")


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be used (or a new one failed to validate); the message is one line."""


def report_to_stderr(message: str) -> None:
    """The default reporter: one line on stderr."""
    print(f"fst: checkpoint: {message}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> Path:
    """Write ``directory/manifest.json`` listing every other file (path, size, sha256); call it last."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(directory).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    target = directory / MANIFEST
    write_text_atomic(target, json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1))
    return target


def step_of(directory: Path) -> int | None:
    """The step number of a ``step-N`` directory name, or None for any other name."""
    match = STEP_DIR.fullmatch(directory.name)
    return int(match.group(1)) if match else None


def checkpoint_problem(directory: Path) -> str | None:
    """What is wrong with a checkpoint directory, as one short phrase naming the file; None when it validates."""
    directory = Path(directory)
    step = step_of(directory)
    if step is None:
        return f"{directory.name} is not a step-N checkpoint directory"
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{MANIFEST} is missing (an incomplete checkpoint, or one written before manifests)"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"{MANIFEST} cannot be read ({_one_line(exc)})"
    files = manifest.get("files") if isinstance(manifest, Mapping) else None
    if not isinstance(manifest, Mapping) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(files,
                                                                                                         Mapping):
        return f"{MANIFEST} is not a {MANIFEST_FORMAT} manifest"
    for name in REQUIRED:
        if name not in files:
            return f"{MANIFEST} does not list {name}"
    for name, entry in files.items():
        # The manifest is data read from disk: only plain relative paths inside this directory are accepted.
        relative = Path(str(name))
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            return f"{MANIFEST} lists a path outside the checkpoint: {name!r}"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("size"), int) \
                or not isinstance(entry.get("sha256"), str):
            return f"{MANIFEST} entry for {name} is malformed"
        path = directory / relative
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{name} is {size} bytes, the manifest says {entry['size']} (truncated or overwritten)"
        if _sha256(path) != entry["sha256"]:
            return f"{name} does not match its sha256 in the manifest (corrupted)"
    try:
        position = json.loads((directory / "run.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"run.json cannot be read ({_one_line(exc)})"
    if not isinstance(position, Mapping) or any(key not in position for key in POSITION_KEYS):
        return f"run.json is not a schedule position (needs {', '.join(POSITION_KEYS)})"
    if position["step"] != step:
        return f"run.json says step {position['step']!r} but the directory is step {step}"
    return None


def _read_pointer(root: Path) -> tuple[str | None, str | None]:
    """(the step directory name ``latest`` names, or None; what is wrong with the pointer, or None)."""
    pointer = root / POINTER
    if not pointer.exists():
        return None, f"{pointer} is missing"
    try:
        text = pointer.read_bytes().decode("utf-8", errors="replace").strip()
    except OSError as exc:
        return None, f"{pointer} cannot be read ({_one_line(exc)})"
    if not text:
        return None, f"{pointer} is empty"
    if STEP_DIR.fullmatch(text) is None:  # also keeps a hostile pointer ("../..") from naming any other path
        return None, f"{pointer} holds {text[:60]!r}, not a step-N directory name"
    return text, None


def find_checkpoint(run_dir: str | Path, *, report: Callable[[str], None] | None = report_to_stderr) -> Path | None:
    """The newest checkpoint of ``run_dir`` that validates; None when the run has no checkpoint at all.

    Each newer checkpoint passed over (and a missing, empty, garbage or stale ``latest`` pointer) is reported as
    one line through ``report``. When checkpoints exist but none validates, raises :class:`CheckpointError` with
    one line naming every checkpoint and what failed: a run asked to resume never silently starts again.
    """
    root = Path(run_dir) / "checkpoints"
    steps = sorted((p for p in root.glob("step-*") if p.is_dir() and step_of(p) is not None), key=step_of,
                   reverse=True) if root.is_dir() else []
    pointer_exists = (root / POINTER).exists() or (root / POINTER).is_symlink()
    if not steps and not pointer_exists:
        return None
    named, pointer_problem = _read_pointer(root)
    problems: list[str] = []
    for directory in steps:
        problem = checkpoint_problem(directory)
        if problem is None:
            if named is not None and named != directory.name and not (root / named).is_dir():
                pointer_problem = f"{root / POINTER} names {named}, which does not exist"
            if report is not None:
                for line in problems:
                    report(f"skipping {line}; using {directory}")
                if pointer_problem is not None:
                    report(f"{pointer_problem}; using {directory}, the newest checkpoint that validates")
            return directory
        problems.append(f"{directory}: {problem}")
    if pointer_problem is not None:
        problems.append(pointer_problem)
    elif named is not None and not (root / named).is_dir():
        problems.append(f"{root / POINTER} names {named}, which does not exist")
    raise CheckpointError(f"no checkpoint in {root} can be resumed: " + "; ".join(problems))


def save_checkpoint(root: Path, step: int, write: Callable[[Path], None], *, keep: int = 2,
                    report: Callable[[str], None] | None = report_to_stderr) -> Path:
    """Write ``root/step-N`` with ``write(tmp)`` plus a manifest (last), validate it, point ``latest`` at it.

    Only after the new checkpoint validates are older ones beyond ``keep`` removed, and so are step directories
    numbered above N (left by a run this one replaced, or corrupt leftovers resume passed over). A new
    checkpoint that does not validate raises :class:`CheckpointError` and leaves every older one in place.
    """
    if keep < 1:
        raise ValueError(f"save_checkpoint: keep must be >= 1, got {keep!r}")

    def write_all(tmp: Path) -> None:
        write(tmp)
        write_manifest(tmp)

    target = atomic_directory(root / f"step-{step:08d}", write_all)
    problem = checkpoint_problem(target)
    if problem is not None:
        raise CheckpointError(f"the checkpoint just written does not validate: {target}: {problem}")
    write_text_atomic(root / POINTER, target.name)
    older = sorted((p for p in root.glob("step-*") if p.is_dir() and step_of(p) is not None), key=step_of)
    stale = [p for p in older if step_of(p) > step]
    kept = [p for p in older if step_of(p) <= step]
    for old in stale + kept[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_position(directory: Path) -> dict[str, Any]:
    """The schedule position stored in a validated checkpoint's ``run.json``."""
    return dict(json.loads((Path(directory) / "run.json").read_text(encoding="utf-8")))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
