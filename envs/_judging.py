"""Judging helpers shared by the envs that grade a response by running code in :mod:`fst_env.sandbox`."""

from __future__ import annotations

import json
from typing import Any


def marked_json(output: str, marker: str) -> list[Any]:
    """The JSON values a sandboxed program printed behind ``marker``, one per line of ``output`` starting with it.

    Values come in line order. A marked line whose rest is not JSON gives None rather than being dropped, so a
    caller that reads only the last value sees a garbled last line as garbled instead of an older, stale one.
    """
    values: list[Any] = []
    for line in output.splitlines():
        if line.startswith(marker):
            try:
                values.append(json.loads(line[len(marker):]))
            except ValueError:
                values.append(None)
    return values
