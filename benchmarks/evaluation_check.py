"""How often does the evaluation-sample check hold when, over the population of windows, there is nothing to find?

orchestrator/analyze/evaluation_sample.py draws the evaluation windows with replacement and calls a verdict robust
when the strategy-minus-random difference keeps its sign in 97.5% of the draws. Simulated here: 24 reference layouts
(sd 0.3 in log perplexity) and 5 strategy layouts whose mean equals the reference's over the window population, at a
tenth and at twice the reference's spread (the check holds the layouts fixed, so their spreads should not matter);
each window gives the strategy an advantage drawn with mean zero. A calibrated
two-sided 95% check would hold in 5% of the runs.

    python benchmarks/evaluation_check.py      # about a minute; writes benchmarks/results/evaluation_check.{json,md}
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))


def null_hold_rate(windows: int, strategy_sd: float, runs: int, seed: int = 0) -> float:
    """The share of `runs` simulated null cells in which the check holds."""
    import pandas as pd

    from orchestrator.analyze.evaluation_sample import ReferenceSample
    from orchestrator.analyze.layouts import layout_keys

    def table(nll: np.ndarray, label: str) -> pd.DataFrame:
        units = [[[float(v * 127), 127.0] for v in row] for row in nll]
        return pd.DataFrame({"model": "m", "label": label, "level": 0.3, "metric_name": "perplexity",
                             "metric_scale": "log", "higher_is_better": False,
                             "pruned": np.exp(nll.mean(axis=1)), "pruned_units": units,
                             "pruned_heads": [[[i, 0], [i, 1]] for i in range(len(nll))]})

    rng, held = np.random.default_rng(seed), 0
    for run in range(runs):
        offsets = rng.normal(0, 0.5, windows)  # how hard each window is, for every layout alike
        reference_layouts = rng.normal(6.5, 0.3, 24)
        deviations = rng.normal(0, strategy_sd, 5)
        strategy_layouts = reference_layouts.mean() + deviations - deviations.mean()
        advantage = rng.normal(0, 0.3, windows)  # the strategy's edge by window: mean zero over the population
        reference = table(reference_layouts[:, None] + offsets + rng.normal(0, 0.05, (24, windows)), "random")
        strategy = table(strategy_layouts[:, None] + offsets + advantage + rng.normal(0, 0.05, (5, windows)), "s")
        strategy = strategy.assign(layout=layout_keys(strategy).to_numpy())
        reference = reference.assign(layout=layout_keys(reference).to_numpy())
        direction = float(np.log(strategy.pruned).mean() - np.log(reference.pruned).mean())
        check = ReferenceSample(reference, "pruned", np.random.SeedSequence([seed, run])).check(strategy, direction)
        held += bool(check["eval_holds"])
    return held / runs


def main() -> None:
    runs = 400
    rows = [{"windows": w, "strategy_sd_over_reference": sd / 0.3, "runs": runs, "holds": null_hold_rate(w, sd, runs)}
            for w in (8, 32) for sd in (0.03, 0.6)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "evaluation_check.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# The evaluation-sample check under a null on the windows", "",
             f"Measured with `python benchmarks/evaluation_check.py` on {time.strftime('%Y-%m-%d')}: the share of "
             "simulated cells, with no difference over the population of windows, in which the check holds "
             "(a calibrated check: 0.05).", "",
             "| windows | strategy sd / reference sd | runs | check holds |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['windows']} | {r['strategy_sd_over_reference']:g} | {r['runs']} | {r['holds']:.3f} |"
              for r in rows]
    (RESULTS / "evaluation_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
