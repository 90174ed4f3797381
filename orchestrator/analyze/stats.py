"""Summary statistics over seeds: mean and 95% t confidence interval per cell, paired tests against random.

A cell is model x strategy (label) x level. Seeds are the replicates: the CI is the t interval of the mean
(scipy.stats.t, n - 1 degrees of freedom), and the comparison with `random` pairs the two strategies' trials
by seed (same model, level and seed: same data and same dense model) and runs scipy.stats.ttest_rel.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05  # a strategy is "better than random" only with p < ALPHA and the mean difference in its favour
BASELINE = "random"
CELL = ["model", "label", "level"]
VALUES = ("dense", "pruned", "recovered")
RESOURCES = ("heads_pruned", "params_before", "params_after", "speed_before", "speed_after")


def ci_half_width(values: pd.Series, confidence: float = CONFIDENCE) -> float:
    """Half-width of the t confidence interval of the mean of `values` (NaN below two values).

    Args:
        values: one number per seed; NaNs are ignored.
        confidence: two-sided coverage, 0.95 by default.
    Returns:
        t_{(1+c)/2, n-1} * s / sqrt(n), or NaN when n < 2 (a single seed has no spread to estimate).
    """
    values = values.dropna()
    if len(values) < 2:
        return float("nan")
    return float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * stats.sem(values))


def ok_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that finished with a metric (failed rows are reported, never averaged)."""
    return trials[trials["status"].eq("ok")]


def cell_stats(trials: pd.DataFrame) -> pd.DataFrame:
    """Mean, CI half-width and seed count per cell for dense/pruned/recovered, means of resources.

    Args:
        trials: the merged trials table (all statuses; only "ok" rows are used for numbers).
    Returns:
        One row per (model, label, level): n_seeds, n_failed, metric_name, higher_is_better,
        `<value>_mean`/`<value>_ci` for dense, pruned, recovered, and the mean of each resource column.
    """
    ok = ok_trials(trials)
    aggregations = {"n_seeds": ("seed", "nunique"), "metric_name": ("metric_name", "first"),
                    "higher_is_better": ("higher_is_better", "first")}
    for value in VALUES:
        aggregations[f"{value}_mean"] = (value, "mean")
        aggregations[f"{value}_ci"] = (value, ci_half_width)
    for value in RESOURCES:
        aggregations[value] = (value, "mean")
    table = ok.groupby(CELL, sort=True).agg(**aggregations).reset_index() if not ok.empty else pd.DataFrame(
        columns=CELL + list(aggregations))
    failed = trials[~trials["status"].eq("ok")].groupby(CELL).size().rename("n_failed").reset_index()
    table = table.merge(failed, on=CELL, how="outer").fillna({"n_failed": 0, "n_seeds": 0})
    table[["n_failed", "n_seeds"]] = table[["n_failed", "n_seeds"]].astype(int)
    table["speedup"] = table["speed_after"] / table["speed_before"]
    table["params_kept"] = table["params_after"] / table["params_before"]
    return table.sort_values(CELL, ignore_index=True)


def paired_vs_random(trials: pd.DataFrame, value: str) -> pd.DataFrame:
    """Each strategy minus random at the same model, level and seed, with a paired t test across seeds.

    Args:
        trials: the merged trials table.
        value: "pruned" or "recovered".
    Returns:
        One row per (model, label, level) with a random counterpart: `diff` (mean of strategy - random, in
        metric units), `p` (ttest_rel two-sided; NaN below two pairs or when every difference is equal),
        `n_pairs`, and `verdict`: "better" / "worse" (p < ALPHA, by the direction of higher_is_better),
        "no significant difference", or "too few seeds".
    """
    ok = ok_trials(trials).dropna(subset=[value])
    base = ok[ok["label"].eq(BASELINE)][["model", "level", "seed", value]]
    pairs = ok[~ok["label"].eq(BASELINE)].merge(base, on=["model", "level", "seed"], suffixes=("", "_random"))
    rows = [_paired_row(key, group, value) for key, group in pairs.groupby(CELL, sort=True)]
    columns = CELL + ["diff", "p", "n_pairs", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def _paired_row(key: tuple, group: pd.DataFrame, value: str) -> list:
    a, b = group[value].to_numpy(float), group[f"{value}_random"].to_numpy(float)
    diff = float(np.mean(a - b))
    p = float("nan")
    if len(group) >= 2:
        with warnings.catch_warnings():  # identical differences: scipy warns and returns NaN, which we report
            warnings.simplefilter("ignore")
            p = float(stats.ttest_rel(a, b).pvalue)
    higher = bool(group["higher_is_better"].iloc[0]) if pd.notna(group["higher_is_better"].iloc[0]) else False
    return [*key, diff, p, len(group), _verdict(diff, p, len(group), higher)]


def _verdict(diff: float, p: float, n: int, higher_is_better: bool) -> str:
    if n < 2:
        return "too few seeds"
    if not p < ALPHA:  # also NaN: identical differences give no evidence either way
        return "no significant difference"
    better = diff > 0 if higher_is_better else diff < 0
    return "better" if better else "worse"


def summary_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The comparison table: cell statistics joined with the paired comparison to random, pruned and recovered.

    Args:
        trials: the merged trials table.
    Returns:
        cell_stats columns plus `vs_random_<value>_{diff,p,n_pairs,verdict}` for pruned and recovered, and a
        `note` ("single seed", "k failed", "no random baseline at this level").
    """
    table = cell_stats(trials)
    for value in ("pruned", "recovered"):
        paired = paired_vs_random(trials, value)
        paired = paired.rename(columns={c: f"vs_random_{value}_{c}" for c in ("diff", "p", "n_pairs", "verdict")})
        table = table.merge(paired, on=CELL, how="left")
    table["note"] = [_note(row, trials) for row in table.itertuples(index=False)]
    return table


def _note(row, trials: pd.DataFrame) -> str:
    notes = []
    if row.n_seeds == 1:
        notes.append("single seed: no CI")
    elif row.n_seeds == 0:
        notes.append("no successful trial")
    if row.n_failed:
        notes.append(f"{row.n_failed} failed")
    has_random = ((trials["label"] == BASELINE) & (trials["model"] == row.model) & (trials["level"] == row.level)
                  & trials["status"].eq("ok")).any()
    if row.label != BASELINE and not has_random:
        notes.append("no random baseline at this level")
    return "; ".join(notes)


def pareto_front(x: pd.Series, y: pd.Series, higher_is_better: bool) -> pd.Series:
    """Which points are Pareto-optimal when maximising x and improving y (up or down by direction).

    Args:
        x: the resource gain (speedup or compression), higher is better.
        y: the quality metric.
        higher_is_better: direction of y.
    Returns:
        Boolean Series aligned with x: True where no other point is at least as good on both and better on one.
    """
    quality = y if higher_is_better else -y
    points = pd.DataFrame({"x": x, "q": quality}).dropna()
    front = pd.Series(False, index=x.index)
    for index, p in points.iterrows():
        dominated = ((points["x"] >= p["x"]) & (points["q"] >= p["q"])
                     & ((points["x"] > p["x"]) | (points["q"] > p["q"]))).any()
        front[index] = not dominated
    return front
