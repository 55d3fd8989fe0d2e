"""Atomic writes, the one way files and directories are put in place: readers see the old or the new, never half.

Both helpers write a uniquely named sibling first (same directory, so the final ``os.replace`` is a rename on one
filesystem) and remove it when writing fails. Torch-free, so the checkpoint manifests and the CLI's early paths
can use it before any model loads.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def _sibling(target: Path, kind: str) -> Path:
    # pid + random suffix: two writers of the same target (threads, processes) never share a temp name.
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temp file and ``os.replace``; on error the temp file is removed
    and ``path`` keeps its old content."""
    target = Path(path)
    tmp = _sibling(target, "tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_directory(directory: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Create ``directory`` by calling ``write(tmp)`` on a fresh sibling temp dir, then renaming it into place.

    Readers never see a half-written directory: the final rename is atomic. An existing ``directory`` is moved
    aside first and removed after the swap (the two renames are not one atomic step, but at every instant
    either the old or the new complete directory exists under some name). On error the temp dir is removed.
    Returns the resolved directory.
    """
    target = Path(directory).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    tmp.mkdir()
    try:
        write(tmp)
        old = None
        if target.exists():
            old = _sibling(target, "old")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
