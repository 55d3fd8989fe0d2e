"""Wall time of `fst --help`, `fst train --help` and `fst envs` in a fresh process (median of repeats).

Target (issue: a newcomer's first hour): each < 2 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def time_command(argv: list[str], repeats: int) -> list[float]:
    """Seconds per run of ``argv``, ``repeats`` times, each in a fresh process."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    fst = shutil.which("fst") or f"{sys.executable} -m fst_env.cli"
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min)")
    for sub in (["--help"], ["train", "--help"], ["envs"]):
        argv = fst.split() + sub
        runs = time_command(argv, args.repeats)
        print(f"fst {' '.join(sub):14s} median {statistics.median(runs):.2f} s  "
              f"(min {min(runs):.2f}, max {max(runs):.2f}, n={len(runs)})  target < 2 s")


if __name__ == "__main__":
    main()
