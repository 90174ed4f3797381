"""Power and false-positive rate of the test against the random reference, simulated from a run's own spreads.

A test is checked both ways (docs/ANALYZE.md): it must separate the effects we publish, and it must not separate a
"strategy" that is itself random layouts more often than its nominal level. For every (model, level) of a results
folder with a random reference, and each strategy named:

- power: 5 seeds drawn from N(strategy's mean, strategy's sd) and K reference layouts resampled from the run's own
  reference values, on the test's scale (log perplexity, Fisher's z), as the run measured them; the share of
  simulated runs in which the permutation test (orchestrator.analyze.reference.permutation_p) rejects at
  alpha / m, m the size of the run's Holm family (the worst case of Holm's first step); beside it, the old design's
  power (a paired t test of 5 seeds against 5 single random draws, resampled the same way, at the same alpha / m);
- false positives: 5 + K values resampled from the run's own reference values (no normal assumption: its skew is
  kept), the first 5 as the "strategy"; the share of runs rejected at the nominal 0.05, and at alpha / m.

    python benchmarks/reference_power.py docs/data/comparison --strategies gradient,entropy
        # writes docs/data/comparison/power.csv and benchmarks/results/reference_power.{md,json}
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sstats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.analyze.load import load  # noqa: E402
from orchestrator.analyze.reference import permutation_p, reference_values  # noqa: E402
from orchestrator.analyze.stats import ALPHA, SCALES, metric_scale  # noqa: E402

SEEDS = 5


def simulate(x_mean: float, x_sd: float, ref: np.ndarray, runs: int, alpha: float, rng: np.random.Generator) -> dict:
    """Power of the permutation test and of the old paired design for one strategy against one reference: the
    strategy's 5 seeds from a normal with its measured mean and sd (its spread is small and symmetric), the random
    layouts resampled from the run's own (their skew kept: a normal fit puts far too many random layouts in the
    good tail, and the power with it)."""
    new = old = 0
    for i in range(runs):
        x = rng.normal(x_mean, x_sd, SEEDS)
        new += permutation_p(x, rng.choice(ref, size=len(ref), replace=True), seed=i) < alpha
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old += sstats.ttest_rel(x, rng.choice(ref, size=SEEDS, replace=True)).pvalue < alpha
    return {"power": new / runs, "power_old_paired_design": old / runs}


def false_positives(ref: np.ndarray, runs: int, alpha: float, rng: np.random.Generator) -> dict:
    """Random layouts tested as a strategy: rejections at 0.05 and at `alpha`, resampling the observed reference."""
    nominal = adjusted = 0
    for i in range(runs):
        draws = rng.choice(ref, size=SEEDS + len(ref), replace=True)
        p = permutation_p(draws[:SEEDS], draws[SEEDS:], seed=i)
        nominal += p < 0.05
        adjusted += p < alpha
    return {"false_positive_rate_at_0.05": nominal / runs, "false_positive_rate_at_alpha_over_m": adjusted / runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a results folder (or docs/data/NAME) with trials.parquet and a random reference")
    parser.add_argument("--strategies", default="gradient,entropy")
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    results = load(args.results)
    if results.reference.empty:
        print(f"error: {args.results}: no random reference in these results", file=sys.stderr)
        return 2
    ok = results.trials[results.trials["status"].eq("ok")]
    rng = np.random.default_rng(0)
    rows = []
    for (model, level), cell in ok.groupby(["model", "level"], sort=True):
        scale = metric_scale(cell)
        forward, _ = SCALES[scale]
        ref = forward(reference_values(results.reference, model, level, "pruned").to_numpy(float))
        m = ok[ok["model"].eq(model)][["label", "level"]].drop_duplicates().shape[0]  # the Holm family, pruned
        for label in args.strategies.split(","):
            values = forward(cell[cell["label"].eq(label)]["pruned"].dropna().to_numpy(float))
            if len(values) < 2:
                continue
            row = {"model": model, "level": level, "strategy": label, "scale": scale, "seeds": SEEDS,
                   "reference_layouts": len(ref), "holm_family": m,
                   "strategy_mean": float(np.mean(values)), "strategy_sd": float(np.std(values, ddof=1)),
                   "reference_mean": float(np.mean(ref)), "reference_sd": float(np.std(ref, ddof=1)),
                   "runs": args.runs}
            row.update(simulate(row["strategy_mean"], row["strategy_sd"], ref, args.runs, ALPHA / m, rng))
            rows.append(row)
        fp = false_positives(ref, args.runs, ALPHA / m, rng)
        rows.append({"model": model, "level": level, "strategy": "random layouts (false positives)", "scale": scale,
                     "seeds": SEEDS, "reference_layouts": len(ref), "holm_family": m, "runs": args.runs, **fp})
    table = pd.DataFrame(rows)
    folder = Path(args.results)
    if (folder / "summary.csv").is_file():  # a published run (docs/data/NAME): its power table beside its summary
        table.to_csv(folder / "power.csv", index=False, float_format="%.4g")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reference_power.json").write_text(json.dumps(rows, indent=1, default=float))
    shown = table.fillna("")
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(f"{v:.3g}" if isinstance(v, float) and math.isfinite(v) else str(v) for v in r) + " |"
              for r in shown.itertuples(index=False)]
    (args.out / "reference_power.md").write_text(
        f"# The test against the random reference: power and false positives\n\n"
        f"`python benchmarks/reference_power.py {args.results} --strategies {args.strategies} --runs {args.runs}`\n\n"
        + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
