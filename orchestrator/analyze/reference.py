"""Every strategy against the random reference: K random layouts per (model, level), evaluated after pruning (and
some after recovery), drawn under the grid's own selection rules (docs/ANALYZE.md, "Against the random reference").

Random is a distribution, not one draw per seed: a strategy's seeds are tested against the reference's layouts,
unpaired, with a permutation test of the difference in means on the metric's scale (log perplexity, Fisher's z).
Why a permutation test: under the null hypothesis that matters ("this criterion picks layouts like random does")
the strategy's layouts and the reference's are exchangeable, so its false-positive rate is the nominal one
exactly, whatever the shape of random's distribution (pruned log perplexities are skewed), and with one distinct
layout (a criterion that reads neither seed nor data, such as magnitude) it is the rank test of that layout within
the reference. The unit is the distinct layout: seeds that prune the same heads are one layout (their values
averaged on the test's scale), never counted as independent evidence.

Beside the test: the effect (ratio of geometric means for log-scale metrics, a difference otherwise) with Welch's
95% interval on the test's scale, mapped back; and the percentile within random, the share of reference layouts a
seed's layout beats (ties count half). Holm's adjustment runs over every strategy and level of one (model, stage);
it holds under any dependence, including the positive dependence that one shared reference creates.
"""
from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pandas as pd
from scipy import stats as sstats

from orchestrator.analyze.stats import (ALPHA, CELL, CONFIDENCE, SCALES, back_difference, higher_is_better, holm,
                                       metric_scale, ok_trials)

MIN_LAYOUTS = 20  # pruned reference layouts a test needs (one distinct strategy layout then reaches p = 2/21)
MIN_RECOVERED = 5  # recovered reference layouts a recovered-stage test needs (0: no recovered verdicts)
PERMUTATIONS = 9999  # resamples: the smallest two-sided p is 2/10,000, enough for Holm over hundreds of tests
STABILITY_PAIRS = 50  # reference layouts whose pairwise overlap gives random's expected Jaccard


def head_pairs(heads: object) -> tuple[tuple[int, int], ...]:
    """A row's `pruned_heads` as sorted (layer, head) pairs (load() has checked their shape)."""
    return () if heads is None else tuple(sorted((int(layer), int(head)) for layer, head in heads))


def layout_key(heads: object) -> str:
    """A pruned layout as a hashable key: its sorted (layer, head) pairs."""
    return json.dumps(head_pairs(heads))


def layout_keys(rows: pd.DataFrame) -> pd.Series:
    """Each row's layout key; rows of tables without `pruned_heads` (other tools) are each their own layout."""
    if "pruned_heads" not in rows:
        return pd.Series([f"row {i}" for i in rows.index], index=rows.index)
    return rows["pruned_heads"].map(layout_key)


def reference_values(reference: pd.DataFrame, model: str, level: float, stage: str) -> pd.Series:
    """One value per distinct reference layout at (model, level) for `stage` ("pruned"; "recovered": only layouts
    that were fine-tuned), indexed by layout key; a layout drawn twice counts once."""
    rows = ok_trials(reference)
    rows = rows[rows["model"].eq(model) & rows["level"].eq(level) & rows[stage].notna()]
    if stage == "recovered":
        rows = rows[pd.to_numeric(rows["recovery_steps"], errors="coerce").fillna(0).gt(0)]
    keys = layout_keys(rows)
    return pd.Series(rows[stage].to_numpy(float), index=keys.to_numpy()).groupby(level=0).first()


def percentile(value: float, reference: np.ndarray, higher_is_better: bool) -> float:
    """The share of reference values that `value` beats (ties count half), in [0, 1]."""
    if not len(reference) or pd.isna(value):
        return float("nan")
    better = (value > reference) if higher_is_better else (value < reference)
    return float((better.sum() + 0.5 * (value == reference).sum()) / len(reference))


def permutation_p(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """Two-sided p of a permutation test of mean(x) - mean(y) (independent samples; exact when the partitions
    number at most PERMUTATIONS, else PERMUTATIONS random ones from a fixed seed: the same table every run). With
    one value in x it is the exact rank test of that value among all of them (the mean difference moves with it)."""
    if len(x) == 1:
        pooled = np.concatenate([x, y])
        at_most, at_least = (pooled <= x[0]).sum(), (pooled >= x[0]).sum()
        return float(min(1.0, 2 * min(at_most, at_least) / len(pooled)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sstats.permutation_test(
            (x, y), lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis), vectorized=True,
            permutation_type="independent", alternative="two-sided", n_resamples=PERMUTATIONS,
            rng=np.random.default_rng(seed))
    return float(result.pvalue)


def effect_interval(x: np.ndarray, y: np.ndarray, scale: str) -> tuple[float, float, float]:
    """(effect, low, high) of x against y on the test's scale mapped back: exp of the mean log difference (a ratio
    of geometric means), tanh(mean z_y + d) - tanh(mean z_y) for Fisher's z, else the difference. The interval is
    Welch's (scipy.stats.ttest_ind, unequal variances); NaN with fewer than 2 values on either side."""
    d = float(np.mean(x) - np.mean(y))
    low = high = float("nan")
    if len(x) >= 2 and len(y) >= 2 and (np.ptp(x) > 0 or np.ptp(y) > 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ci = sstats.ttest_ind(x, y, equal_var=False).confidence_interval(CONFIDENCE)
        low, high = float(ci.low), float(ci.high)
    return back_difference(d, low, high, float(np.mean(y)), scale)


def vs_reference(trials: pd.DataFrame, reference: pd.DataFrame, stage: str) -> pd.DataFrame:
    """Each strategy cell against the random reference at its model and level, for `stage` (pruned or recovered).

    Returns:
        One row per (model, label, level) with a reference: `effect`, `effect_low`, `effect_high`, `ratio` (log
        scale), `diff` (mean strategy - mean reference in metric units), `p` (permutation), `p_adj` (Holm over the
        model and stage), `n_layouts` (the strategy's distinct layouts), `n_reference`, `percentile` (mean over
        seeds), `percentile_min`, `percentile_max`, `direction`, `verdict`, `test`.
    """
    columns = CELL + ["diff", "ratio", "effect", "effect_low", "effect_high", "p", "p_adj", "n_layouts",
                      "n_reference", "percentile", "percentile_min", "percentile_max", "direction", "verdict", "test"]
    ok = ok_trials(trials)
    rows = []
    for (model, label, level), group in ok.groupby(CELL, sort=True):
        base = reference_values(reference, model, level, stage)
        group = group[group[stage].notna()]
        if base.empty or group.empty:
            continue
        scale, higher = metric_scale(group), higher_is_better(group)
        forward, _ = SCALES[scale]
        y = forward(base.to_numpy(float))
        x = (pd.Series(forward(group[stage].to_numpy(float)), index=layout_keys(group).to_numpy())
             .groupby(level=0).mean().to_numpy())  # one value per distinct layout
        needed = MIN_LAYOUTS if stage == "pruned" else MIN_RECOVERED
        shares = [percentile(v, base.to_numpy(float), higher) for v in group[stage].to_numpy(float)]
        effect, low, high = effect_interval(x, y, scale)
        p = permutation_p(x, y) if len(y) >= needed else float("nan")
        rows.append({
            "model": model, "label": label, "level": level, "effect": effect, "effect_low": low, "effect_high": high,
            "ratio": effect if scale == "log" else float("nan"),
            "diff": float(group[stage].mean() - base.mean()), "p": p, "n_layouts": len(x), "n_reference": len(y),
            "percentile": float(np.mean(shares)), "percentile_min": float(np.min(shares)),
            "percentile_max": float(np.max(shares)), "direction": float(np.mean(x) - np.mean(y)),
            "higher": higher, "needed": needed,
            "test": f"permutation, {len(x)} layout(s) vs {len(y)} random",
        })
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)
    table["p_adj"] = pd.concat([holm(g["p"]) for _, g in table.groupby("model")]).reindex(table.index)
    table["verdict"] = [_verdict(r) for r in table.itertuples()]
    return table[columns]


def _verdict(r) -> str:
    if r.n_reference < r.needed:
        return "too few reference layouts"
    if not r.p_adj < ALPHA:
        return "no significant difference"
    return "better" if (r.direction > 0) == bool(r.higher) else "worse"


def seed_percentiles(trials: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per strategy trial and stage: its value and the share of reference layouts it beats (percentiles.csv)."""
    rows = []
    for r in ok_trials(trials).itertuples(index=False):
        higher = bool(r.higher_is_better) if pd.notna(r.higher_is_better) else False
        for stage in ("pruned", "recovered"):
            base = reference_values(reference, r.model, r.level, stage)
            if base.empty:
                continue
            value = getattr(r, stage)
            rows.append({"model": r.model, "label": r.label, "level": r.level, "seed": r.seed, "stage": stage,
                         "value": value, "percentile": percentile(value, base.to_numpy(float), higher),
                         "n_reference": len(base)})
    return pd.DataFrame(rows, columns=["model", "label", "level", "seed", "stage", "value", "percentile",
                                       "n_reference"])


def reference_notes(reference: pd.DataFrame) -> list[str]:
    """What the reference is per (model, level): draws, distinct layouts (duplicates said, never silently kept),
    recovered layouts, failures."""
    notes = []
    for (model, level), rows in reference.groupby(["model", "level"], sort=True):
        ok = ok_trials(rows)
        distinct = layout_keys(ok).nunique()
        recovered = len(reference_values(reference, model, level, "recovered"))
        fine_tuned = int(pd.to_numeric(ok["recovery_steps"], errors="coerce").fillna(0).gt(0).sum())
        text = (f"random reference for {model} at level {level:g}: {len(rows)} draws, {distinct} distinct layouts "
                f"after pruning; {fine_tuned} draws also recovered ({recovered} distinct layouts)")
        if distinct < len(ok):
            text += (f" ({len(ok) - distinct} draws repeated a layout and count once: this model has few layouts at "
                     "this level)")
        if len(ok) < len(rows):
            text += f"; {len(rows) - len(ok)} draws failed"
        notes.append(text)
    return notes


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def mean_jaccard(layouts: list[set]) -> float:
    """The mean pairwise Jaccard overlap of head sets (NaN below two)."""
    pairs = list(itertools.combinations(layouts, 2))
    return float(np.mean([_jaccard(a, b) for a, b in pairs])) if pairs else float("nan")


def stability_table(trials: pd.DataFrame, heads: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Which heads, how stable: per (model, label, level), the mean pairwise Jaccard overlap of the pruned head sets
    across seeds (calibration draws), the mean pairwise Spearman correlation of the head scores across seeds, and
    random's expected overlap (the reference layouts' mean pairwise Jaccard) beside them."""
    ok = ok_trials(trials)
    rows = []
    for (model, label, level), group in ok.groupby(CELL, sort=True):
        sets = [set(head_pairs(h)) for h in (group["pruned_heads"] if "pruned_heads" in group else [])]
        random_sets = []
        if not reference.empty:
            ref = ok_trials(reference)
            ref = ref[ref["model"].eq(model) & ref["level"].eq(level)].head(STABILITY_PAIRS)
            random_sets = [set(head_pairs(h)) for h in ref["pruned_heads"]]
        rows.append({"model": model, "label": label, "level": level, "n_seeds": len(sets),
                     "distinct_layouts": len({layout_key(sorted(s)) for s in sets}),
                     "jaccard": mean_jaccard(sets), "random_jaccard": mean_jaccard(random_sets),
                     "score_spearman": _score_spearman(heads, group["trial_id"])})
    return pd.DataFrame(rows, columns=["model", "label", "level", "n_seeds", "distinct_layouts", "jaccard",
                                       "random_jaccard", "score_spearman"])


def _score_spearman(heads: pd.DataFrame, trial_ids: pd.Series) -> float:
    """Mean pairwise Spearman correlation of the trials' head scores (NaN when the scores are missing or constant)."""
    if heads.empty or "score" not in heads:
        return float("nan")
    rows = heads[heads["trial_id"].isin(set(trial_ids))]
    if rows.empty:
        return float("nan")
    grid = rows.pivot_table(index=["layer", "head"], columns="trial_id", values="score").dropna()
    vectors = [grid[c].to_numpy(float) for c in grid.columns if np.ptp(grid[c].to_numpy(float)) > 0]
    if len(vectors) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = [sstats.spearmanr(a, b).statistic for a, b in itertools.combinations(vectors, 2)]
    return float(np.nanmean(values))
