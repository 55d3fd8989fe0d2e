"""Regenerate the README's table of registered envs: ``python -m fst_env.readme_table [README.md]``."""

from __future__ import annotations

import sys
from pathlib import Path

from fst_env import markdown_table

START, END = "<!-- env-table:start -->", "<!-- env-table:end -->"


def update(readme: Path) -> bool:
    """Rewrite the table between the markers; return whether the file changed."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: markers {START} / {END} not found")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{markdown_table()}\n{END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print(f"{path}: {'updated' if update(path) else 'already current'}")
