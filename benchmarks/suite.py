"""How long does the README's test command take? `python -m pytest -q` timed as CI runs it, beside the machine figure.

    python benchmarks/suite.py               # the README command (two workers: pyproject's addopts)
    python benchmarks/suite.py --workers 0   # the same suite in one process, for comparison

Target (issue #42): at most 240 s on 2 cores of a machine like benchmarks/results/machine.md's, so that it stays under
360 s on the slower kind. Writes benchmarks/results/suite.{json,md}; a run replaces the row of its own worker count.
Nothing else may compute meanwhile: the suite's own timings and the machine figure both assume the cores are free.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET_S = 240

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, figure  # noqa: E402


def run(workers: int | None) -> dict:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    argv += [] if workers is None else ["-n", str(workers)]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    wall = round(time.perf_counter() - started, 1)
    lines = done.stdout.strip().splitlines() or [""]
    last = lines[-1]
    failed = [line.split(" - ")[0].removeprefix("FAILED ").removeprefix("ERROR ") for line in lines
              if line.startswith(("FAILED ", "ERROR "))]
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|errors?|skipped)", last)}
    return {"command": "python -m pytest -q" + ("" if workers is None else f" -n {workers}"),
            "workers": 2 if workers is None else workers, "wall_s": wall, "exit": done.returncode, "summary": last,
            "failures": failed,
            **counts, "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="pytest-xdist workers (default: pyproject's)")
    args = parser.parse_args()
    machine = figure()  # before the suite: nothing else computes while either is timed
    row = {**run(args.workers), "machine": describe(machine)}
    print(json.dumps(row))
    path = RESULTS / "suite.json"
    rows = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["workers"] != row["workers"]]
    rows = sorted(rows + [row], key=lambda r: -r["workers"])
    path.write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# The README's test command", "",
             f"Measured with `python benchmarks/suite.py` (and `--workers 0` for one process). Target: at most "
             f"{TARGET_S} s on 2 cores of a machine like benchmarks/results/machine.md's (360 s on the slower "
             "kind).", "",
             "| command | workers | wall (s) | result | date | machine |", "|---|---:|---:|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['workers']} | {r['wall_s']} | {r['summary']} | {r['date']} | {r['machine']} |"
              for r in rows]
    (RESULTS / "suite.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
