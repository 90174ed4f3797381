"""Is `run --dry-run`'s estimate within 30% of the measured run? Compared with the default run's wall time measured
on the same machine (benchmarks/results/default_run.json, `python benchmarks/default_run.py`).

    python benchmarks/dry_run_estimate.py

Writes benchmarks/results/dry_run_estimate.{json,md}.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    started = time.perf_counter()
    out = subprocess.run(["sentinel-bench", "run", "configs/default.yaml", "--dry-run"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    took = time.perf_counter() - started
    estimate = float(re.search(r"estimated: about \d+ min \((\d+) s\)", out).group(1))
    measured = json.loads((RESULTS / "default_run.json").read_text())
    result = {"estimate_s": estimate, "dry_run_s": round(took, 1), "measured_s": measured["wall_s"],
              "error": round(estimate / measured["wall_s"] - 1, 3), "machine": measured.get("machine_figure"),
              "date": time.strftime("%Y-%m-%d"), "plan": out.strip().splitlines()}
    (RESULTS / "dry_run_estimate.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# `run --dry-run`'s estimate against the measured default run", "",
             f"`python benchmarks/dry_run_estimate.py` on {result['date']}; the measured run is "
             "benchmarks/results/default_run.md's, on the same machine.", "",
             f"- estimate: **{estimate:.0f} s** (the dry run itself took {took:.0f} s)",
             f"- measured: **{measured['wall_s']} s**",
             f"- error: **{result['error']:+.0%}** (target: within 30%)", "", "```", *result["plan"], "```"]
    (RESULTS / "dry_run_estimate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if abs(result["error"]) <= 0.3 else 1)


if __name__ == "__main__":
    main()
