"""Does the rankings-across-stages interval cover the truth? A simulation of orchestrator/analyze/ranking.py.

    python benchmarks/ranking_interval.py

Grids of S strategies x 5 seeds whose true means after pruning and after recovery are known, so the true Kendall's
tau between the two orders is known; seeds scatter around them with equal spreads, and with spreads that differ
tenfold between strategies (a criterion's layouts vary far less than another's). Reported: how often the 95%
bootstrap interval contains the true tau, and how often a flip is named where the true order does not flip (it
must not be). Writes benchmarks/results/ranking_interval.{json,md}.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.analyze.ranking import stage_ranking  # noqa: E402
from orchestrator.analyze.stats import pairwise  # noqa: E402

SIMULATIONS, RESAMPLES, SEEDS = 200, 500, 5


def grid(rng: np.random.Generator, pruned: np.ndarray, recovered: np.ndarray, spreads: np.ndarray) -> pd.DataFrame:
    rows = []
    for s, (p, r, sd) in enumerate(zip(pruned, recovered, spreads)):
        for seed in range(SEEDS):
            rows.append({"trial_id": f"s{s}-{seed}", "model": "m", "label": f"s{s}", "level": 0.3, "seed": seed,
                         "status": "ok", "dense": 1.0, "pruned": float(np.exp(p + rng.normal(0, sd))),
                         "recovered": float(np.exp(r + rng.normal(0, sd))), "recovery_steps": 3,
                         "metric_scale": "log", "metric_name": "perplexity", "higher_is_better": False,
                         "reference": False})
    return pd.DataFrame(rows)


def scenario(name: str, strategies: int, gap: float, spread: str) -> dict:
    rng = np.random.default_rng(0)
    covered, false_flips, widths = 0, 0, []
    for _ in range(SIMULATIONS):
        pruned = np.sort(rng.normal(0, gap, strategies))
        recovered = pruned * 0.7 + rng.normal(0, gap * 0.5, strategies)  # orders partly kept, some pairs swapped
        true = stats.kendalltau(pruned, recovered).statistic
        spreads = np.full(strategies, 0.5) if spread == "equal" else rng.choice([0.1, 1.0], strategies)
        trials = grid(rng, pruned, recovered, spreads)
        row = stage_ranking(trials, pairwise(trials), resamples=RESAMPLES).iloc[0]
        covered += row["tau_low"] <= true <= row["tau_high"]
        widths.append(row["tau_high"] - row["tau_low"])
        true_flips = {(f"s{a}", f"s{b}") for a in range(strategies) for b in range(strategies)
                      if pruned[a] < pruned[b] and recovered[a] > recovered[b]}
        for text in filter(None, row["flips"].split("; ")):
            first, second = text.split(" > ")[0], text.split(" > ")[1].split(" ")[0]
            false_flips += (first, second) not in true_flips  # first beat second after pruning, truly the reverse
    return {"scenario": name, "strategies": strategies, "spread": spread, "simulations": SIMULATIONS,
            "coverage": round(covered / SIMULATIONS, 3), "median_width": round(float(np.median(widths)), 3),
            "false_flips_per_grid": round(false_flips / SIMULATIONS, 3)}


def main() -> None:
    rows = [scenario("clear gaps, equal spreads", 6, 1.0, "equal"),
            scenario("clear gaps, tenfold unequal spreads", 6, 1.0, "unequal"),
            scenario("small gaps, equal spreads", 6, 0.3, "equal"),
            scenario("small gaps, tenfold unequal spreads", 6, 0.3, "unequal")]
    results = REPO / "benchmarks" / "results"
    (results / "ranking_interval.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# Rankings across stages: does the interval cover the true tau?", "",
             f"`python benchmarks/ranking_interval.py`: {SIMULATIONS} simulated grids per row, {SEEDS} seeds, "
             f"{RESAMPLES} bootstrap resamples; log-scale metric; true tau from the true means.", "",
             "| scenario | strategies | seed spread | coverage of the 95% interval | median width | false flips per grid |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['scenario']} | {r['strategies']} | {r['spread']} | {r['coverage']} | {r['median_width']} | "
              f"{r['false_flips_per_grid']} |" for r in rows]
    (results / "ranking_interval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
