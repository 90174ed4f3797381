"""The tables of docs/COMPARISON.md, from a finished `sentinel-bench run configs/comparison.yaml`.

    python benchmarks/comparison_report.py results/comparison > /tmp/tables.md

Per model: for each strategy and level, the pruned and recovered metric (mean over seeds) and the paired test
against random (verdict and p, from the analysis' summary.csv); then what each strategy cost in time (its
scoring, summed over the trials that computed it, and its fine-tuning), from trials.parquet.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

MARK = {"better": "+", "worse": "-", "no significant difference": "=", "insufficient data": "?"}


def cell(value: float, verdict: str | float, p: float) -> str:
    mark = MARK.get(verdict, "") if isinstance(verdict, str) else ""
    return f"{value:.4g}" + (f" {mark}" if mark else "") + (f" (p={p:.2g})" if mark in ("+", "-") else "")


def main(folder: str) -> None:
    root = Path(folder)
    summary = pd.read_csv(root / "analysis" / "summary.csv")
    trials = pd.read_parquet(root / "trials.parquet")
    for model, rows in summary.groupby("model"):
        metric = rows.metric_name.iloc[0]
        levels = sorted(rows.level.unique())
        for stage in ("pruned", "recovered"):
            print(f"\n**{model}**, {metric} {stage} (mean of {int(rows.n_seeds.max())} seeds; + / - : better / worse "
                  f"than random, paired test p < 0.05; = : no significant difference)\n")
            print("| strategy | " + " | ".join(f"{l:g}" for l in levels) + " |")
            print("|---|" + "---|" * len(levels))
            for label, by in rows.groupby("label"):
                by = by.set_index("level")
                values = [cell(by.at[l, f"{stage}_mean"], by.at[l, f"vs_random_{stage}_verdict"],
                               by.at[l, f"vs_random_{stage}_p"]) if l in by.index else "" for l in levels]
                print(f"| {label} | " + " | ".join(values) + " |")
        ran = trials[trials.model == model]
        print(f"\n**{model}**, time per strategy (s, summed over its {len(ran) // ran.strategy.nunique()} trials; "
              "scoring counted where it ran, not where it was reused)\n")
        print("| strategy | scoring | fine-tuning (dynamic: with its pruning) | all stages |")
        print("|---|---|---|---|")
        for strategy, by in ran.groupby("strategy"):
            print(f"| {strategy} | {by.time_score.sum():.1f} | {by.time_finetune.sum():.1f} | {by.time_total.sum():.1f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/comparison")
