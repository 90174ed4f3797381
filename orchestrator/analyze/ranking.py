"""Do rankings survive recovery? Kendall's tau between the strategies' order after pruning and after recovery.

Per (model, level): the strategies' means over seeds (on the metric's scale: log for perplexity) after pruning and
after recovery, ordered, and Kendall's tau-b between the two orders. Its 95% interval comes from the seeds: a
bootstrap that resamples each strategy's seeds (a seed's pruned and recovered values together, its pair) and
recomputes both orders, percentile bounds. A flip is a pair of strategies whose head-to-head verdict (pairwise.csv,
Holm-adjusted within its stage) says a beats b after pruning and b beats a after recovery: evidence on both sides,
not an order of means.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sstats

from orchestrator.analyze.stats import SCALES, metric_scale, ok_trials

RESAMPLES = 2000
MIN_STRATEGIES = 3  # two strategies have one pair: a tau of +-1 says no more than their head-to-head
COLUMNS = ["model", "level", "strategies", "kendall_tau", "tau_low", "tau_high", "flips"]


def _tau(pruned: np.ndarray, recovered: np.ndarray) -> float:
    if np.ptp(pruned) == 0 or np.ptp(recovered) == 0:
        return float("nan")
    return float(sstats.kendalltau(pruned, recovered).statistic)


def _flips(pairs: pd.DataFrame, model: str, level: float) -> list[str]:
    """"a > b -> b > a" for each pair whose adjusted verdicts disagree in direction between the stages."""
    if pairs.empty:
        return []
    rows = pairs[(pairs["model"] == model) & (pairs["level"] == level)]
    direction = {"better": 1, "deterministic: better": 1, "worse": -1, "deterministic: worse": -1}
    by_stage = {stage: {(a, b): direction.get(v, 0) for a, b, v in zip(g["a"], g["b"], g["verdict"])}
                for stage, g in rows.groupby("stage")}
    pruned, recovered = by_stage.get("pruned", {}), by_stage.get("recovered", {})
    out = []
    for (a, b), before in pruned.items():
        after = recovered.get((a, b), 0)
        if before and after and before != after:
            first, second = (a, b) if before > 0 else (b, a)
            out.append(f"{first} > {second} after pruning, {second} > {first} after recovery")
    return out


def stage_ranking(trials: pd.DataFrame, pairs: pd.DataFrame, seed: int = 0,
                  resamples: int = RESAMPLES) -> pd.DataFrame:
    """One row per (model, level) with at least MIN_STRATEGIES recovered strategies: Kendall's tau between the
    pruned and the recovered order of the strategies' means, its bootstrap interval over seeds, and the flips."""
    ok = ok_trials(trials)
    ok = ok[ok["recovery_steps"].fillna(0).gt(0)] if "recovery_steps" in ok else ok.iloc[0:0]
    rows = []
    for (model, level), cell in ok.groupby(["model", "level"], sort=True):
        forward = SCALES[metric_scale(cell)][0]
        seeds = {label: np.column_stack([forward(g["pruned"].to_numpy(float)), forward(g["recovered"].to_numpy(float))])
                 for label, g in cell.groupby("label", sort=True)}
        if len(seeds) < MIN_STRATEGIES:
            continue
        means = np.array([values.mean(axis=0) for values in seeds.values()])  # [strategies, (pruned, recovered)]
        tau = _tau(means[:, 0], means[:, 1])
        rng = np.random.default_rng([seed, len(rows)])
        drawn = []
        for _ in range(resamples):
            resampled = np.array([v[rng.integers(0, len(v), len(v))].mean(axis=0) for v in seeds.values()])
            drawn.append(_tau(resampled[:, 0], resampled[:, 1]))
        drawn = np.array(drawn)[~np.isnan(drawn)]
        low, high = (np.percentile(drawn, [2.5, 97.5]) if len(drawn) else (float("nan"), float("nan")))
        rows.append({"model": model, "level": level, "strategies": len(seeds), "kendall_tau": tau,
                     "tau_low": float(low), "tau_high": float(high),
                     "flips": "; ".join(_flips(pairs, model, level))})
    return pd.DataFrame(rows, columns=COLUMNS)
