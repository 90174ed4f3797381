"""Summary statistics over seeds: mean and 95% t confidence interval per cell, paired tests against random.

A cell is model x strategy (label) x level. Seeds are the replicates. Every statistic is computed on the
metric's own scale (`metric_scale`, recorded by the metric in each row), then mapped back:
- `log` (perplexity): perplexity under pruning is heavy-tailed (five random 30% prunings of one model span
  186 to 1400), and what matters is a ratio. Means are geometric means, CIs are exp(mean log ± t·sem), and
  the paired test is on log(strategy) - log(random) = a log perplexity ratio (a difference of mean NLL).
- `atanh` (correlations such as STS-B Spearman): Fisher's z. The CI is tanh of the z interval, so it stays
  inside [-1, 1]; the paired test is on z differences.
- `identity`: anything else, as measured.
The CI is the t interval (scipy.stats.t, n - 1 degrees of freedom) and needs MIN_SEEDS_FOR_CI seeds: with
two, t = 12.7 and the interval says nothing; the table says "too few seeds for a CI" instead. The comparison
with `random` pairs the trials by seed (same model, level and seed) and runs scipy.stats.ttest_rel on the
transformed values.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05  # a strategy is "better than random" only with p < ALPHA and the mean difference in its favour
MIN_SEEDS_FOR_CI = 3
BASELINE = "random"
CELL = ["model", "label", "level"]
VALUES = ("dense", "pruned", "recovered")
RESOURCES = ("heads_pruned", "params_before", "params_after", "speed_before", "speed_after", "ideal_speedup")

_EDGE = 1 - 1e-9  # atanh(±1) is infinite: a perfect correlation is clipped just inside
SCALES: dict[str, tuple[Callable, Callable]] = {
    "identity": (lambda x: x, lambda x: x),
    "log": (np.log, np.exp),
    "atanh": (lambda x: np.arctanh(np.clip(x, -_EDGE, _EDGE)), np.tanh),
}
SCALE_BY_NAME = {"perplexity": "log", "stsb_spearman": "atanh", "embedding_fidelity": "atanh"}  # older tables


def metric_scale(rows: pd.DataFrame) -> str:
    """The scale the rows' metric is analysed on: the recorded `metric_scale`, else known by its name."""
    if "metric_scale" in rows and rows["metric_scale"].notna().any():
        scale = str(rows["metric_scale"].dropna().iloc[0])
        return scale if scale in SCALES else "identity"
    names = rows["metric_name"].dropna() if "metric_name" in rows else pd.Series(dtype=object)
    return SCALE_BY_NAME.get(str(names.iloc[0]), "identity") if len(names) else "identity"


def interval(values: pd.Series | np.ndarray, scale: str = "identity",
             confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of `values` on `scale`, mapped back: a geometric mean and its CI for `log`.

    Args:
        values: one number per seed; NaNs are ignored.
        scale: a key of SCALES.
        confidence: two-sided coverage of the t interval.
    Returns:
        The back-transformed mean, and the CI bounds (NaN below MIN_SEEDS_FOR_CI values).
    """
    forward, back = SCALES[scale]
    x = forward(pd.Series(values, dtype=float).dropna().to_numpy())
    if not len(x):
        return float("nan"), float("nan"), float("nan")
    mean = float(np.mean(x))
    if len(x) < MIN_SEEDS_FOR_CI:
        return float(back(mean)), float("nan"), float("nan")
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * stats.sem(x)) if np.ptp(x) > 0 else 0.0
    return float(back(mean)), float(back(mean - half)), float(back(mean + half))


def ok_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that finished with a metric (failed rows are reported, never averaged)."""
    return trials[trials["status"].eq("ok")]


def cell_stats(trials: pd.DataFrame) -> pd.DataFrame:
    """Mean, CI half-width and seed count per cell for dense/pruned/recovered, means of resources.

    Args:
        trials: the merged trials table (all statuses; only "ok" rows are used for numbers).
    Returns:
        One row per (model, label, level): n_seeds, n_failed, metric_name, higher_is_better, scale,
        `<value>_mean` (on the metric's scale: a geometric mean for perplexity) and `<value>_low`/`_high` (the
        95% CI, NaN below MIN_SEEDS_FOR_CI seeds) for dense, pruned, recovered, and each resource's mean.
    """
    ok = ok_trials(trials)
    columns = CELL + ["n_seeds", "metric_name", "higher_is_better", "scale"]
    columns += [f"{v}_{k}" for v in VALUES for k in ("mean", "low", "high")] + list(RESOURCES)
    rows = []
    for key, group in ok.groupby(CELL, sort=True):
        scale = metric_scale(group)
        row = [*key, group["seed"].nunique(), group["metric_name"].iloc[0], group["higher_is_better"].iloc[0], scale]
        for value in VALUES:
            row += interval(group[value], scale)
        row += [group[r].mean() if r in group else float("nan") for r in RESOURCES]
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    failed = trials[~trials["status"].eq("ok")].groupby(CELL).size().rename("n_failed").reset_index()
    table = table.merge(failed, on=CELL, how="outer").fillna({"n_failed": 0, "n_seeds": 0})
    table[["n_failed", "n_seeds"]] = table[["n_failed", "n_seeds"]].astype(int)
    table["speedup"] = table["speed_after"] / table["speed_before"]
    table["speedup_vs_ideal"] = table["speedup"] / table["ideal_speedup"]
    table["params_kept"] = table["params_after"] / table["params_before"]
    return table.sort_values(CELL, ignore_index=True)


def paired_vs_random(trials: pd.DataFrame, value: str) -> pd.DataFrame:
    """Each strategy against random at the same model, level and seed, with a paired t test across seeds.

    Args:
        trials: the merged trials table.
        value: "pruned" or "recovered".
    Returns:
        One row per (model, label, level) with a random counterpart: `diff` (mean of strategy - random, in
        metric units), `ratio` (for log-scale metrics: the geometric mean of strategy / random, e.g. 0.2 =
        a fifth of random's perplexity; NaN otherwise), `p` (ttest_rel on the metric's scale, two-sided; NaN
        below two pairs or when every difference is equal), `n_pairs`, and `verdict`: "better" / "worse"
        (p < ALPHA, by the direction of higher_is_better), "no significant difference", or "too few seeds".
    """
    ok = ok_trials(trials).dropna(subset=[value])
    base = ok[ok["label"].eq(BASELINE)][["model", "level", "seed", value]]
    pairs = ok[~ok["label"].eq(BASELINE)].merge(base, on=["model", "level", "seed"], suffixes=("", "_random"))
    rows = [_paired_row(key, group, value) for key, group in pairs.groupby(CELL, sort=True)]
    columns = CELL + ["diff", "ratio", "p", "n_pairs", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def _paired_row(key: tuple, group: pd.DataFrame, value: str) -> list:
    scale = metric_scale(group)
    forward, _ = SCALES[scale]
    a, b = group[value].to_numpy(float), group[f"{value}_random"].to_numpy(float)
    diff = float(np.mean(a - b))
    ratio = float(np.exp(np.mean(np.log(a) - np.log(b)))) if scale == "log" else float("nan")
    p = float("nan")
    if len(group) >= 2:
        with warnings.catch_warnings():  # identical differences: scipy warns and returns NaN, which we report
            warnings.simplefilter("ignore")
            p = float(stats.ttest_rel(forward(a), forward(b)).pvalue)
    higher = bool(group["higher_is_better"].iloc[0]) if pd.notna(group["higher_is_better"].iloc[0]) else False
    direction = float(np.mean(forward(a) - forward(b)))  # the tested mean, on the metric's scale
    return [*key, diff, ratio, p, len(group), _verdict(direction, p, len(group), higher)]


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
        paired = paired.rename(columns={c: f"vs_random_{value}_{c}" for c in ("diff", "ratio", "p", "n_pairs", "verdict")})
        table = table.merge(paired, on=CELL, how="left")
    table["note"] = [_note(row, trials) for row in table.itertuples(index=False)]
    return table


def _note(row, trials: pd.DataFrame) -> str:
    notes = []
    if row.n_seeds == 1:
        notes.append("single seed: no CI")
    elif 1 < row.n_seeds < MIN_SEEDS_FOR_CI:
        notes.append(f"{row.n_seeds} seeds: too few for a CI")
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
