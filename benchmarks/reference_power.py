"""The test against the random reference, simulated so that it can fail: false positives at unequal spreads, and power
at the effects a run observed.

A test is checked both ways (docs/ANALYZE.md): it must not separate a "strategy" whose layouts are centred on
random's, whatever their spread, and it must separate the effects we publish. For every (model, level) of a results
folder with a random reference:

- false positives: a null strategy of 1, 2, 3 or 5 distinct layouts whose values are random's own (resampled from the
  run's reference values on the test's scale, their skew kept) shrunk or stretched around random's centre by a spread
  ratio of 0.1, 0.5, 1, 2 or 10; the centre is random's mean (the null the test is about: equal means) and, in a second
  table, random's median. The reference is resampled too. The share of runs rejected at 0.05 (unadjusted), for the
  decision analyze makes (orchestrator.analyze.reference.vs_reference: the exact rank test for one layout; for five or
  more whose sd is at most random's, the permutation test of Welch's t; otherwise no verdict, never a false
  positive) and for the former test (permuted mean difference). One layout has no spread: its null is "a random
  layout", under which the rank test is exact.
- power: for each strategy with a verdict, its distinct layouts drawn from a normal with its observed mean and sd on the
  test's scale, the reference resampled; the share of runs rejected at alpha / m (m the size of the run's Holm family:
  the worst case of Holm's first step).

    python benchmarks/reference_power.py docs/data/comparison docs/data/comparison_seeds
        # writes docs/data/comparison/power.csv, false_positives.csv and benchmarks/results/reference_power.{md,json}
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.analyze.load import load  # noqa: E402
from orchestrator.analyze.permutation import TwoSampleTest, partitions, rank_p  # noqa: E402
from orchestrator.analyze.reference import (MAX_SPREAD_RATIO, MIN_DISTINCT_LAYOUTS, reference_values,  # noqa: E402
                                           spread_ratio, vs_reference)
from orchestrator.analyze.stats import ALPHA, SCALES, metric_scale  # noqa: E402

RATIOS = (0.1, 0.5, 1.0, 2.0, 10.0)
LAYOUTS = (1, 2, 3, 4, 5)
RESAMPLES = 1999  # per simulated test: p to 1/2000, ample for a rate at 0.05


class Tester:
    """p of x against y for the decision analyze makes, with each size's partitions drawn once and reused."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.cache = rng, {}

    def p(self, x: np.ndarray, y: np.ndarray, statistic: str = "studentized") -> float:
        """statistic: "studentized" (analyze's decision), "any-welch" (the permuted Welch's t at any size and
        spread: why the decision has its rules), "mean-difference" (the former test)."""
        if len(x) == 1:
            return rank_p(float(x[0]), y)
        if statistic == "studentized" and (len(x) < MIN_DISTINCT_LAYOUTS or spread_ratio(x, y) > MAX_SPREAD_RATIO):
            return float("nan")  # no verdict
        key = (len(x), len(y))
        if key not in self.cache:
            self.cache[key] = partitions(len(x), len(y), RESAMPLES, self.rng)
        return TwoSampleTest(x, y, "studentized" if statistic == "any-welch" else statistic,
                             index=self.cache[key]).p()


def false_positive_rates(ref: np.ndarray, runs: int, tester: Tester, rng: np.random.Generator) -> list[dict]:
    rows = []
    for centre_name, centre in (("mean", float(np.mean(ref))), ("median", float(np.median(ref)))):
        for n in LAYOUTS:
            for ratio in RATIOS if n > 1 else (1.0,):  # one layout has no spread: its null is "a random layout"
                new = old = welch = tested = 0
                for _ in range(runs):
                    x = centre + ratio * (rng.choice(ref, n, replace=True) - centre)
                    y = rng.choice(ref, len(ref), replace=True)
                    p = tester.p(x, y)
                    tested += not math.isnan(p)  # runs with a verdict (NaN: none, so never a false positive)
                    new += p < 0.05
                    old += tester.p(x, y, "mean-difference") < 0.05 if n > 1 else p < 0.05
                    welch += tester.p(x, y, "any-welch") < 0.05 if n > 1 else p < 0.05
                rows.append({"null_centre": centre_name, "layouts": n, "spread_ratio": ratio, "runs": runs,
                             "verdict": bool(tested),
                             "share_with_verdict": tested / runs,
                             "false_positive_rate": new / runs if tested else float("nan"),
                             "false_positive_rate_welch_without_rules": welch / runs,
                             "false_positive_rate_former_test": old / runs})
    return rows


def power(x_mean: float, x_sd: float, n: int, ref: np.ndarray, runs: int, alpha: float, tester: Tester,
          rng: np.random.Generator) -> float:
    hits = 0
    for _ in range(runs):
        x = rng.normal(x_mean, x_sd, n) if n > 1 else np.array([x_mean])
        hits += tester.p(x, rng.choice(ref, len(ref), replace=True)) < alpha
    return hits / runs


def _markdown(table: pd.DataFrame) -> list[str]:
    shown = table.fillna("")
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(f"{v:.3g}" if isinstance(v, float) and math.isfinite(v) else str(v) for v in r) + " |"
              for r in shown.itertuples(index=False)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results folders (or docs/data/NAME) with trials.parquet, one with a "
                        "random reference; several are analysed together (a run and the runs that extend it)")
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    results = load(args.results)
    if results.reference.empty:
        print(f"error: {' '.join(args.results)}: no random reference in these results", file=sys.stderr)
        return 2
    ok = results.trials[results.trials["status"].eq("ok")]
    rng = np.random.default_rng(0)
    tester = Tester(rng)
    verdicts = vs_reference(results.trials, results.reference, "pruned")
    null_rows, power_rows = [], []
    for (model, level), cell in ok.groupby(["model", "level"], sort=True):
        forward, _ = SCALES[metric_scale(cell)]
        ref = forward(reference_values(results.reference, model, level, "pruned").dropna().to_numpy(float))
        for row in false_positive_rates(ref, args.runs, tester, rng):
            null_rows.append({"model": model, "level": level, "reference_layouts": len(ref), **row})
        family = verdicts[verdicts["model"].eq(model) & verdicts["p"].notna()]
        for r in family[family["level"].eq(level)].itertuples():
            values = forward(cell[cell["label"].eq(r.label)]["pruned"].dropna().to_numpy(float))
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            power_rows.append({
                "model": model, "level": level, "strategy": r.label, "layouts": int(r.n_layouts),
                "reference_layouts": len(ref), "holm_family": len(family),
                "strategy_mean": float(np.mean(values)), "strategy_sd": sd, "reference_mean": float(np.mean(ref)),
                "reference_sd": float(np.std(ref, ddof=1)), "sd_ratio": sd / float(np.std(ref, ddof=1)),
                "runs": args.runs, "verdict": r.verdict,
                "power": power(float(np.mean(values)), sd, int(r.n_layouts), ref, args.runs, ALPHA / len(family),
                               tester, rng)})
    nulls, powers = pd.DataFrame(null_rows), pd.DataFrame(power_rows)
    worst = (nulls[nulls["verdict"] & nulls["null_centre"].eq("mean")]
             .groupby(["layouts", "spread_ratio"])["false_positive_rate"].max().unstack("spread_ratio"))
    worst_welch = (nulls[nulls["null_centre"].eq("mean")]
                   .groupby(["layouts", "spread_ratio"])["false_positive_rate_welch_without_rules"].max()
                   .unstack("spread_ratio"))
    worst_old = (nulls[nulls["null_centre"].eq("mean")]
                 .groupby(["layouts", "spread_ratio"])["false_positive_rate_former_test"].max().unstack("spread_ratio"))
    worst_median = (nulls[nulls["verdict"] & nulls["null_centre"].eq("median")]
                    .groupby(["layouts", "spread_ratio"])["false_positive_rate"].max().unstack("spread_ratio"))
    folder = Path(args.results[0])
    if (folder / "summary.csv").is_file():  # a published run (docs/data/NAME): its simulation beside its summary
        powers.to_csv(folder / "power.csv", index=False, float_format="%.4g")
        nulls.to_csv(folder / "false_positives.csv", index=False, float_format="%.4g")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reference_power.json").write_text(json.dumps({"false_positives": null_rows, "power": power_rows},
                                                              indent=1, default=float))
    as_table = lambda t: t.reset_index().rename(columns=lambda c: f"ratio {c:g}" if isinstance(c, float) else c)  # noqa: E731
    text = [
        "# The test against the random reference: false positives at unequal spreads, and power",
        "", f"`python benchmarks/reference_power.py {' '.join(args.results)} --runs {args.runs}`", "",
        "False-positive rate at a nominal 0.05 (unadjusted), the worst over the run's (model, level) cells, of the "
        "decision analyze makes (one layout: the exact rank test; five or more spread no more than random's: "
        "Welch's t permuted; otherwise no verdict), by the null strategy's distinct layouts (rows) and its spread "
        "relative to random's (columns); the null strategy has random's mean on the test's scale. A run without a "
        "verdict counts as no rejection; blank: no run got a verdict. One layout has no spread: its null is a "
        "random layout:", "", *_markdown(as_table(worst)), "",
        "The same nulls under the permuted Welch's t at every size and spread (no rules): why the decision has them:",
        "", *_markdown(as_table(worst_welch)), "",
        "The same nulls under the former test (the permuted difference in means; it gave a verdict at any size and "
        "spread):", "", *_markdown(as_table(worst_old)), "",
        "Nulls centred on random's median instead of its mean (a different null: the strategy's mean then differs "
        "from random's wherever random is skewed, so a test of means may rightly reject):", "",
        *_markdown(as_table(worst_median)), "",
        f"Power at the observed effects (runs of {args.runs}; alpha / m, m the model's Holm family):", "",
        *_markdown(powers[["model", "level", "strategy", "layouts", "sd_ratio", "verdict", "power"]]), ""]
    (args.out / "reference_power.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
