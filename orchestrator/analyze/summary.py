"""The summary table: every cell's statistics beside its comparison with random, pruned and recovered (summary.csv).

It sits above both tests it joins: orchestrator.analyze.stats (cells, paired tests, Holm) and
orchestrator.analyze.reference (the random reference), so neither imports the other back.
"""
from __future__ import annotations

import pandas as pd

from orchestrator.analyze.reference import TestSettings, vs_reference
from orchestrator.analyze.stats import BASELINE, CELL, MIN_SEEDS_FOR_CI, cell_stats, ok_trials, paired_vs_random


def summary_table(trials: pd.DataFrame, reference: pd.DataFrame | None = None,
                  settings: TestSettings | None = None) -> pd.DataFrame:
    """The comparison table: cell statistics joined with the comparison to random, pruned and recovered.

    Args:
        trials: the merged trials table (strategy cells).
        reference: the random reference's rows (Results.reference); when it holds layouts, every strategy is tested
            against them (orchestrator.analyze.reference.vs_reference); without one (older runs), each strategy is
            paired by seed with the `random` trials (paired_vs_random).
        settings: the test against the reference (reference.TestSettings; default: studentized, 9,999 resamples).
    Returns:
        cell_stats columns plus `vs_random_<value>_{diff,ratio,effect,effect_low,effect_high,p,p_adj,n_pairs,
        verdict,test}` for pruned and recovered (`n_pairs`: the strategy's distinct layouts against a reference),
        `<value>_percentile` (mean share of reference layouts beaten; NaN without a reference), and a `note`.
    """
    settings = settings if settings is not None else TestSettings()
    table = cell_stats(trials)
    with_reference = reference is not None and not ok_trials(reference).empty
    for value in ("pruned", "recovered"):
        if with_reference:
            versus = vs_reference(trials, reference, value, settings).rename(columns={"n_layouts": "n_pairs"})
            table = table.merge(versus[CELL + ["percentile", "percentile_min", "percentile_max", "n_reference"]]
                                .rename(columns=lambda c: c if c in CELL else f"{value}_{c}"), on=CELL, how="left")
            versus = versus.drop(columns=["percentile", "percentile_min", "percentile_max", "n_reference", "direction"])
        else:
            versus = paired_vs_random(trials, value).drop(columns=["spread"])
            versus["test"] = "paired t by seed vs random"
            table[f"{value}_percentile"] = float("nan")
        versus = versus.rename(columns={c: f"vs_random_{value}_{c}" for c in versus.columns if c not in CELL})
        table = table.merge(versus, on=CELL, how="left")
    table["note"] = [_note(row, trials, with_reference) for row in table.itertuples(index=False)]
    return table


def _note(row, trials: pd.DataFrame, with_reference: bool = False) -> str:
    notes = []
    if row.n_seeds == 1:
        notes.append("single seed: no CI")
    elif 1 < row.n_seeds < MIN_SEEDS_FOR_CI:  # against a random reference the test's unit is the layout, not the seed
        notes.append(f"{row.n_seeds} seeds: too few for a CI" + ("" if with_reference else " or a verdict"))
    elif row.n_seeds == 0:
        notes.append("no successful trial")
    if row.n_failed:
        notes.append(f"{row.n_failed} failed")
    flat = [v for v in ("pruned", "recovered") if row.n_seeds >= 2 and getattr(row, f"{v}_spread") == 0]
    if flat:
        notes.append(f"{' and '.join(flat)}: no spread (identical in every seed)")
    has_random = ((trials["label"] == BASELINE) & (trials["model"] == row.model) & (trials["level"] == row.level)
                  & trials["status"].eq("ok")).any()
    if row.label != BASELINE and not has_random and not with_reference:
        notes.append("no random baseline at this level")
    return "; ".join(notes)
