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
two, t = 12.7 and the interval says nothing; the table says "too few seeds" instead, and gives no verdict. A value
identical in every seed has no interval: it is labelled "no spread", never printed as [x, x].

Comparisons pair the trials by seed (same model, level and seed) and run scipy.stats.ttest_rel on the transformed
values; each comes with its effect and a 95% interval (a ratio of geometric means for log-scale metrics, a
difference in metric units otherwise). p-values are Holm-adjusted within a family, and verdicts use the adjusted
value: the "better than random" tests of one (model, stage) form one family (every strategy and level), the
head-to-head tests of every pair of strategies (random included) of one (model, stage) another. A strategy is
named best at a (model, level, stage) only where it beats every other one there after adjustment.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

from orchestrator.analyze.layouts import layout_keys

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
        row += [float(np.ptp(group[v].dropna().to_numpy(float))) if group[v].notna().any() else float("nan")
                for v in ("pruned", "recovered")]
        rows.append(row)
    columns += ["pruned_spread", "recovered_spread"]  # max - min over seeds: 0 = identical in every seed
    table = pd.DataFrame(rows, columns=columns)
    failed = trials[~trials["status"].eq("ok")].groupby(CELL).size().rename("n_failed").reset_index()
    table = table.merge(failed, on=CELL, how="outer").fillna({"n_failed": 0, "n_seeds": 0})
    table[["n_failed", "n_seeds"]] = table[["n_failed", "n_seeds"]].astype(int)
    table["speedup"] = table["speed_after"] / table["speed_before"]
    speed = _speed_spread(ok, "speedup_rounds", "ideal_speedup", "speed_after", "speed_before")
    table = table.drop(columns=["speedup"]).merge(speed, on=CELL, how="left") if not speed.empty else table.assign(
        **{f"speedup{c}": float("nan") for c in SPREAD_COLUMNS[1:]})
    table["params_kept"] = table["params_after"] / table["params_before"]
    return table.sort_values(CELL, ignore_index=True)


SPREAD_COLUMNS = ("", "_min", "_max", "_share", "_share_min", "_share_max")  # suffixes of a speedup's columns


def _speed_spread(ok: pd.DataFrame, rounds: str, ideal: str, after: str, before: str, name: str = "speedup",
                  ) -> pd.DataFrame:
    """Per cell: the speedup (median of every round of its distinct layouts; after / before in tables without rounds)
    and its min-max, and the realised share of the ideal gain with its median and min-max (`name` + SPREAD_COLUMNS).
    """

    rows = []
    for key, group in ok.groupby(CELL, sort=True):
        layouts = group.assign(_layout=layout_keys(group)).drop_duplicates("_layout")
        timed = layouts[rounds] if rounds in layouts else pd.Series([None] * len(layouts), index=layouts.index)
        if not any(isinstance(v, (list, np.ndarray)) and len(v) for v in timed):  # older tables: one ratio per trial
            ratio = (pd.to_numeric(layouts[after]) / pd.to_numeric(layouts[before]) if {after, before} <= set(layouts)
                     else pd.Series(float("nan"), index=layouts.index))
            timed = ratio.map(lambda v: [v] if pd.notna(v) else [])
        best = pd.to_numeric(layouts[ideal]) if ideal in layouts else pd.Series(float("nan"), index=layouts.index)
        values = rounds_spread(timed, best)
        rows.append([*key, *values])
    return pd.DataFrame(rows, columns=CELL + [name + suffix for suffix in SPREAD_COLUMNS])


GENERATION = {  # ratio name -> (after column, before column, ideal column or None): pruned / dense
    "kv_cache": ("kv_bytes_per_token_after", "kv_bytes_per_token_before", None),
    "prefill": ("prefill_tps_after", "prefill_tps_before", "ideal_prefill_speedup"),
    "decode": ("decode_tps_after", "decode_tps_before", "ideal_decode_speedup"),
    "decode_batch": ("decode_batch_tps_after", "decode_batch_tps_before", "ideal_decode_batch_speedup"),
}


MIN_IDEAL_FOR_SHARE = 1.2  # below this the share divides timing noise by a small gain (0.996-1.07 / 0.07 read 94-168%)


def realised_share(measured: float | np.ndarray, ideal: float) -> float | np.ndarray:
    """The realised share of the ideal gain, (measured - 1) / (ideal - 1): 1 = every FLOP or byte removed became
    time saved, 0 = no gain at all, negative = slower. NaN where the ideal is within 20% of 1: a share of so small a
    gain is timing noise stretched (measured/ideal of 0.996-1.07 became "94-168%" of a 1.07-1.17 ideal)."""
    if not ideal >= MIN_IDEAL_FOR_SHARE:  # also NaN
        return np.full_like(np.asarray(measured, float), np.nan) if np.ndim(measured) else float("nan")
    return (np.asarray(measured, float) - 1) / (ideal - 1) if np.ndim(measured) else (float(measured) - 1) / (ideal - 1)


def ceiling_spread(ratios: list[float], attention_shares: list[float], removed: float) -> dict[str, float]:
    """A measured ceiling (Amdahl) and where a layout's measured speedup falls under it.

    Args:
        ratios: the layout's pruned / dense speedup in each timed round.
        attention_shares: attention's share a of the dense model's time in each round of a dense vs
            no-attention timing (1 - dense tokens/s / no-attention tokens/s).
        removed: the fraction f of the heads the layout removes.
    Returns:
        `ceiling` 1 / (1 - a f) (median over the rounds of a, with `_min` / `_max`): what removing f of the attention
        time at most gains; `of_ceiling` median measured / median ceiling, with the interval `_min` (min measured /
        max ceiling) and `_max` (max measured / min ceiling).
    """
    ceilings = [1 / (1 - a * removed) for a in attention_shares]
    middle = float(np.median(ratios) / np.median(ceilings))
    return {"ceiling": float(np.median(ceilings)), "ceiling_min": min(ceilings), "ceiling_max": max(ceilings),
            "of_ceiling": middle, "of_ceiling_min": min(ratios) / max(ceilings),
            "of_ceiling_max": max(ratios) / min(ceilings)}


def rounds_spread(rounds: pd.Series, ideal: pd.Series) -> tuple[float, float, float, float, float, float]:
    """(median, min, max) of the per-round speedups of every layout in `rounds` (lists), and the same of their realised
    shares of the layouts' ideal gains; NaNs where nothing was timed."""
    ratios, shares = [], []
    for values, best in zip(rounds, ideal):
        values = [float(v) for v in (values if values is not None else []) if v is not None]
        ratios += values
        shares += [float(realised_share(v, float(best))) for v in values] if pd.notna(best) else []
    shares = [v for v in shares if np.isfinite(v)]
    describe = lambda v: (float(np.median(v)), float(np.min(v)), float(np.max(v))) if v else (float("nan"),) * 3  # noqa: E731
    return (*describe(ratios), *describe(shares))  # type: ignore[return-value]


def generation_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per cell with generation measured: KV-cache bytes per token (means over seeds) and, for prefill, decode and
    batched decode, the measured speedup (median of every alternating round of the cell's distinct layouts, with
    min-max), its ideal ratio, and the realised share of the ideal gain with its median and min-max. Empty when no
    trial measured generation."""
    ok = ok_trials(trials)
    if "decode_tps_after" not in ok or not ok["decode_tps_after"].notna().any():
        return pd.DataFrame()
    ok = ok[ok["decode_tps_after"].notna()].copy()
    if "generation_engine" not in ok:  # tables written before llama.cpp timing: transformers was the only engine
        ok["generation_engine"] = "transformers"
    ok["generation_engine"] = ok["generation_engine"].fillna("transformers").replace("", "transformers")
    table = ok.groupby(CELL, sort=True).agg(
        n_seeds=("seed", "nunique"), batch_size=("generation_batch_size", "first"),
        engine=("generation_engine", "first"),
        kv_bytes_per_token_before=("kv_bytes_per_token_before", "mean"),
        kv_bytes_per_token_after=("kv_bytes_per_token_after", "mean"),
        **{f"{name}_ideal": (ideal, "mean") for name, (_, _, ideal) in GENERATION.items() if ideal},
    ).reset_index()
    table["kv_cache"] = table["kv_bytes_per_token_after"] / table["kv_bytes_per_token_before"]
    for name, (after, before, ideal) in GENERATION.items():
        if ideal is not None:
            spread = _speed_spread(ok, f"{name}_speedup_rounds", ideal, after, before, name)
            table = table.merge(spread, on=CELL, how="left")
    return table


def extra_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The extra evaluations per cell, task, metric and stage: mean over seeds with its interval (on the log scale for
    metrics where lower is better, i.e. perplexities; identity for accuracies), the seeds, and the dense value.
    Empty when no trial ran extra tasks. Verdicts never read these: they stay on each model's primary metric."""
    if metrics.empty or "status" not in metrics:
        return pd.DataFrame()
    ok = metrics[metrics["status"].eq("ok") & metrics["value"].notna()]
    rows = []
    for (model, task, metric), group in ok.groupby(["model", "task", "metric"], sort=True):
        direction = group["higher_is_better"].dropna()
        lower_better = not bool(direction.iloc[0]) if len(direction) else False  # unknown: no log scale
        scale = "log" if lower_better and (group["value"] > 0).all() else "identity"
        dense = group[group["stage"].eq("dense")]["value"]
        for (label, level), cell in group[~group["stage"].eq("dense")].groupby(["label", "level"], sort=True):
            row = {"model": model, "task": task, "metric": metric, "label": label, "level": level,
                   "higher_is_better": not lower_better, "scale": scale, "n_seeds": cell["seed"].nunique(),
                   "dense": interval(dense, scale)[0]}
            for stage in ("pruned", "recovered"):
                row[f"{stage}_mean"], row[f"{stage}_low"], row[f"{stage}_high"] = interval(
                    cell[cell["stage"].eq(stage)]["value"], scale)
            rows.append(row)
    return pd.DataFrame(rows)


def compare(a: pd.DataFrame, b: pd.DataFrame, value: str) -> dict:
    """Strategy `a` against `b` on trials paired by seed (same model and level), on the metric's scale.

    Returns:
        `n_pairs`; `effect` with its 95% t interval `effect_low`/`effect_high`, both on the tested scale and mapped
        back (back_difference): for log-scale metrics the ratio of geometric means a / b, for Fisher's z the
        difference of correlations at b's mean, otherwise the mean paired difference a - b in metric units; `diff` (mean a - b in metric units); `p` (ttest_rel on the metric's
        scale, two-sided; NaN below MIN_SEEDS_FOR_CI pairs or when every difference is equal); `direction` (the
        tested mean on the metric's scale: > 0 means a's metric is higher); `spread` False when every paired
        difference is the same (no interval is given then).
    """
    pairs = a[["model", "level", "seed", value]].merge(b[["model", "level", "seed", value]], on=["model", "level", "seed"],
                                                       suffixes=("_a", "_b")).dropna()
    scale = metric_scale(a)
    forward, _ = SCALES[scale]
    x, y = pairs[f"{value}_a"].to_numpy(float), pairs[f"{value}_b"].to_numpy(float)
    n = len(pairs)
    out = {"n_pairs": n, "diff": float(np.mean(x - y)) if n else float("nan"), "effect": float("nan"),
           "effect_low": float("nan"), "effect_high": float("nan"), "p": float("nan"), "direction": float("nan"),
           "spread": True}
    if not n:
        return out
    z = forward(x) - forward(y)  # what is tested, and what the effect and its interval are built from
    base = float(np.mean(forward(y)))
    out["direction"] = float(np.mean(z))
    out["effect"] = back_difference(float(np.mean(z)), float("nan"), float("nan"), base, scale)[0]
    out["spread"] = bool(np.ptp(z) > 0)
    if n >= MIN_SEEDS_FOR_CI and out["spread"]:
        half = float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * stats.sem(z))
        _, out["effect_low"], out["effect_high"] = back_difference(
            float(np.mean(z)), float(np.mean(z)) - half, float(np.mean(z)) + half, base, scale)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["p"] = float(stats.ttest_rel(forward(x), forward(y)).pvalue)
    return out


def back_difference(d: float, low: float, high: float, base: float, scale: str) -> tuple[float, float, float]:
    """A difference (and its interval) on a metric's test scale, mapped back to what a reader compares: a ratio of
    geometric means (log), a difference of correlations at `base`, the other side's mean z (atanh), or the
    difference itself (identity). One scale for the test and its interval: they cannot disagree."""
    if scale == "log":
        return float(np.exp(d)), float(np.exp(low)), float(np.exp(high))
    if scale == "atanh":
        return tuple(float(np.tanh(base + v) - np.tanh(base)) for v in (d, low, high))  # type: ignore[return-value]
    return d, low, high


def mc_interval(hits: int, n: int) -> tuple[float, float]:
    """The 99.9% Clopper-Pearson interval of a Monte-Carlo share hits / n: where a resampled p or share may truly be."""
    low = float(stats.beta.ppf(0.0005, hits, n - hits + 1)) if hits > 0 else 0.0
    high = float(stats.beta.ppf(0.9995, hits + 1, n - hits)) if hits < n else 1.0
    return low, high


def worst_for_nonfinite(values: np.ndarray, higher: bool) -> np.ndarray:
    """Reference values with every non-finite one (a layout whose metric overflowed) set to the worst finite value of
    its column (the whole array if 1-D; each bootstrap draw if 2-D): ranked last, tied, rather than dropped (dropping
    flatters random). A column with no finite value stays as it is."""
    finite = np.isfinite(values)
    if finite.all() or not finite.any():
        return values
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-non-finite column: its NaN is not used below
        masked = np.where(finite, values, np.nan)
        worst = np.nanmin(masked, axis=0) if higher else np.nanmax(masked, axis=0)
    return np.where(finite | ~finite.any(axis=0), values, worst)


def holm(p: pd.Series) -> pd.Series:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN and is not counted in the family)."""
    values = p.dropna().sort_values()
    m = len(values)
    adjusted = np.minimum(1.0, np.maximum.accumulate([(m - k) * v for k, v in enumerate(values.to_numpy())]))
    return pd.Series(adjusted, index=values.index).reindex(p.index)


def verdict(direction: float, p_adj: float, n: int, higher_is_better: bool, spread: bool = True) -> str:
    """"better" / "worse" when the Holm-adjusted p is below ALPHA (in the metric's direction), otherwise "no
    significant difference"; "too few seeds" below MIN_SEEDS_FOR_CI pairs. A pair whose every seed gives the same
    difference has no test (no spread to test against): "deterministic: better" / "deterministic: worse" (or
    "identical"), never "no difference"."""
    if not spread and n >= 1:
        if direction == 0:
            return "identical"
        return "deterministic: " + ("better" if (direction > 0) == higher_is_better else "worse")
    if n < MIN_SEEDS_FOR_CI:
        return "too few seeds"
    if not p_adj < ALPHA:  # also NaN: identical differences give no evidence either way
        return "no significant difference"
    better = direction > 0 if higher_is_better else direction < 0
    return "better" if better else "worse"


def higher_is_better(rows: pd.DataFrame) -> bool:
    """The rows' metric direction (False when no row records it)."""
    values = rows["higher_is_better"].dropna()
    return bool(values.iloc[0]) if len(values) else False


def paired_vs_random(trials: pd.DataFrame, value: str) -> pd.DataFrame:
    """Each strategy against random at the same model, level and seed (paired t test across seeds), with
    Holm's adjustment over every strategy and level of one model (the family of "better than random" tests of
    that model and stage).

    Args:
        trials: the merged trials table.
        value: "pruned" or "recovered".
    Returns:
        One row per (model, label, level) with a random counterpart: `diff`, `ratio` (= effect for log-scale
        metrics, NaN otherwise), `effect`, `effect_low`, `effect_high`, `p`, `p_adj`, `n_pairs`, `verdict`.
    """
    ok = ok_trials(trials)
    rows = []
    for (model, label, level), group in ok[~ok["label"].eq(BASELINE)].groupby(CELL, sort=True):
        base = ok[ok["label"].eq(BASELINE) & ok["model"].eq(model) & ok["level"].eq(level)]
        if base.empty:
            continue
        result = compare(group, base, value)
        rows.append({"model": model, "label": label, "level": level, **result, "higher": higher_is_better(group),
                     "scale": metric_scale(group)})
    columns = CELL + ["diff", "ratio", "effect", "effect_low", "effect_high", "p", "p_adj", "n_pairs", "verdict", "spread"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)
    table["ratio"] = table["effect"].where(table["scale"].eq("log"))
    table["p_adj"] = pd.concat([holm(g["p"]) for _, g in table.groupby("model")]).reindex(table.index)
    table["verdict"] = [verdict(r.direction, r.p_adj, r.n_pairs, r.higher) for r in table.itertuples()]
    return table[columns]


MAX_HEAD_TO_HEAD = 60  # strategies per (model, level) compared pair by pair (1,770 pairs); more: none, and a note


def pairwise(trials: pd.DataFrame, notes: list[str] | None = None) -> pd.DataFrame:
    """Head-to-head: every pair of strategies at each (model, level, stage), paired by seed. `random` is not in it:
    its verdicts come from one computation (against the random reference, or paired against the random trials in
    older runs), so a comparison never appears with two verdicts.

    Holm's adjustment runs over every pair and level of one (model, stage): the family of "which is best" tests. A
    (model, level) with more than MAX_HEAD_TO_HEAD strategies gets no pairs (their number grows with its square: 3,000
    strategies are 4.5 million tests), and a line in `notes` says so.
    Returns:
        model, stage, level, a, b, n_pairs, effect (a / b geometric-mean ratio for log-scale metrics, a - b
        otherwise), effect_low, effect_high, diff, p, p_adj, verdict (of a against b: better / worse / no
        significant difference / too few seeds), spread.
    """
    ok = ok_trials(trials)
    ok = ok[~ok["label"].eq(BASELINE)]
    rows = []
    for stage in ("pruned", "recovered"):
        for (model, level), cell in ok.groupby(["model", "level"], sort=True):
            labels = sorted(cell["label"].unique())
            if len(labels) > MAX_HEAD_TO_HEAD:
                if notes is not None and stage == "pruned":
                    notes.append(f"no head-to-head table for {model} at level {level:g}: {len(labels):,} strategies, "
                                 f"at most {MAX_HEAD_TO_HEAD} are compared pair by pair (analyse fewer at once)")
                continue
            for i, a in enumerate(labels):
                for b in labels[i + 1:]:
                    result = compare(cell[cell["label"].eq(a)], cell[cell["label"].eq(b)], stage)
                    rows.append({"model": model, "stage": stage, "level": level, "a": a, "b": b, **result,
                                 "higher": higher_is_better(cell)})
    columns = ["model", "stage", "level", "a", "b", "n_pairs", "effect", "effect_low", "effect_high", "diff", "p",
               "p_adj", "verdict", "spread"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)
    table["p_adj"] = pd.concat([holm(g["p"]) for _, g in table.groupby(["model", "stage"])]).reindex(table.index)
    table["verdict"] = [verdict(r.direction, r.p_adj, r.n_pairs, r.higher, r.spread) for r in table.itertuples()]
    table["unit"], table["family"] = "seeds (paired)", "exploratory"
    return table[columns + ["unit", "family"]]


def best(pairs: pd.DataFrame, model: str, level: float, stage: str) -> str | None:
    """The strategy that beats every other one at (model, level, stage) after adjustment, or None."""
    cell = pairs[pairs["model"].eq(model) & pairs["level"].eq(level) & pairs["stage"].eq(stage)]
    labels = sorted(set(cell["a"]) | set(cell["b"]))
    for label in labels:
        if len(labels) > 1 and not not_separated(pairs, model, level, stage, label):
            return label
    return None


def not_separated(pairs: pd.DataFrame, model: str, level: float, stage: str, label: str) -> list[str]:
    """Strategies that `label` does not beat after adjustment at (model, level, stage)."""
    cell = pairs[pairs["model"].eq(model) & pairs["level"].eq(level) & pairs["stage"].eq(stage)]
    out = []
    for r in cell.itertuples():
        if r.a == label and r.verdict != "better":
            out.append(r.b)
        elif r.b == label and r.verdict != "worse":
            out.append(r.a)
    return sorted(out)


def pareto_front(x: pd.Series, y: pd.Series, higher_is_better: bool, x_low: pd.Series | None = None,
                 x_high: pd.Series | None = None) -> pd.Series:
    """Which points are Pareto-optimal when maximising x and improving y (up or down by direction).

    Args:
        x: the resource gain (speedup or compression), higher is better.
        y: the quality metric.
        higher_is_better: direction of y.
        x_low, x_high: the spread of each x (a speedup's timed rounds); two gains whose spreads overlap are not told
            apart, so speed noise alone never puts a point on the front. None: x is exact (compression).
    Returns:
        Boolean Series aligned with x: True where no other point is at least as good on both and better on one.
    """
    quality = y if higher_is_better else -y
    points = pd.DataFrame({"x": x, "q": quality, "low": x if x_low is None else x_low.fillna(x),
                           "high": x if x_high is None else x_high.fillna(x)}).dropna()
    front = pd.Series(False, index=x.index)
    for index, p in points.iterrows():
        faster = points["low"] > p["high"]  # separated: every round of theirs beats every round of this one
        not_slower = ~(points["high"] < p["low"])
        dominated = (not_slower & (points["q"] >= p["q"]) & (faster | (points["q"] > p["q"]))).any()
        front[index] = not dominated
    return front
