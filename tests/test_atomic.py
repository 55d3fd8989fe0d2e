"""fst_env.atomic: atomic file and directory writes leave no temp files and never a half-written target."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fst_env.atomic import atomic_directory, write_text_atomic


def test_write_text_atomic_replaces_the_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    write_text_atomic(target, "one")
    write_text_atomic(str(target), "twö")  # a str path works too; text is UTF-8
    assert target.read_text(encoding="utf-8") == "twö"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_write_text_atomic_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "latest"
    write_text_atomic(target, "step-00000001")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(target, "bad \ud800 surrogate")
    assert target.read_text() == "step-00000001"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_concurrent_writers_never_collide_on_a_temp_name(tmp_path: Path) -> None:
    target = tmp_path / "scalars.csv"
    texts = [f"writer {i}\n" * 200 for i in range(8)]
    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            for _ in range(20):
                write_text_atomic(target, text)
        except BaseException as err:  # collected: a thread's exception would otherwise vanish
            errors.append(err)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and target.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["scalars.csv"]


def test_atomic_directory_swaps_whole_directories(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    assert atomic_directory(target, lambda d: (d / "a.txt").write_text("one")) == target.resolve()
    atomic_directory(target, lambda d: (d / "b.txt").write_text("two"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_the_old_import_paths_are_the_same_functions() -> None:
    from fst_env import checkpoints, logging, models

    assert logging.write_text_atomic is write_text_atomic and checkpoints.write_text_atomic is write_text_atomic
    assert models.atomic_directory is atomic_directory


def test_importing_it_loads_no_torch() -> None:
    code = "import sys, fst_env.atomic, fst_env.checkpoints; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
