"""Would a verdict hold on another evaluation sample of the same size? The test against the random reference treats
the evaluation sample as fixed (every cell is measured on the same 8 windows, the same 500 STS-B pairs): its p says
how the strategy's layouts differ from random layouts *on these units*. This check resamples the units.

Each trial records the units its metric is a function of (sentinel.resampling). One bootstrap draw picks n of the n
units with replacement, the same draw for every row compared (all were measured on the same units: paired), and
recomputes each row's metric; the strategy's mean over its distinct layouts minus the reference's mean, on the
test's scale, is the draw's difference. The check holds when fewer than (1 - CONFIDENCE) / 2 of the draws put the
difference on the other side of zero (equivalently: the percentile interval of the draws excludes zero). A verdict
needs both the test and this check (an intersection of two tests keeps the level of each); a cell whose test
rejects and whose check does not is "not robust to the evaluation sample". tests/unit/analyze/test_evaluation_sample.py
simulates a cell where the check holds and one where a single window carries the whole effect.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.analyze.stats import (CONFIDENCE, SCALES, higher_is_better, mc_interval, metric_scale,
                                       worst_for_nonfinite)
from sentinel.resampling import UNIT_METRICS, bootstrap_draws, resampled

# a cell's check where none ran (no units in its rows: tables from before they were recorded, or other tools)
NOT_RUN = {"eval_units": 0, "eval_draws": 0, "eval_opposite": float("nan"), "eval_low": float("nan"),
           "eval_high": float("nan"), "eval_holds": None, "eval_straddles": False}
DRAWS = 2_000  # bootstrap draws of the evaluation units; 10x more where the Monte-Carlo error reaches the threshold
MAX_DRAWS = 20_000


def units_matrix(rows: pd.DataFrame, column: str) -> np.ndarray | None:
    """The rows' units as one array [rows, n, 2], or None when a row has none or their counts differ (they were not
    measured on the same sample: nothing to pair)."""
    if column not in rows or rows.empty:
        return None
    units = [_as_units(u) for u in rows[column]]
    counts = {len(u) for u in units}
    if len(counts) != 1 or counts == {0} or counts == {1}:
        return None
    return np.stack(units)


def _as_units(value: object) -> np.ndarray:
    """A row's units as [n, 2] (Parquet gives an array of arrays; a row without units, None or NaN: [0, 2])."""
    try:
        units = np.array([list(pair) for pair in value], float)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return np.empty((0, 2))
    return units if units.ndim == 2 and units.shape[1] == 2 else np.empty((0, 2))


class ReferenceSample:
    """The random reference of one (model, level, stage) under bootstrap draws of the evaluation units: one set of
    draws for every strategy cell compared with it (all were measured on the same units), its mean computed once."""

    def __init__(self, rows: pd.DataFrame, stage: str, seed) -> None:
        self.units, self.stage, self.seed = units_matrix(rows, f"{stage}_units"), stage, seed
        self._means: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def means(self, metric: str, scale: str, higher: bool, n_draws: int) -> tuple[np.ndarray, np.ndarray]:
        """(draws [B, n], the reference's mean on the test's scale under each draw [B])."""
        key = (metric, scale, higher, n_draws)
        if key not in self._means:
            draws = bootstrap_draws(self.units.shape[1], n_draws, self.seed)
            forward, _ = SCALES[scale]
            with np.errstate(all="ignore"):
                y = forward(worst_for_nonfinite(resampled(metric, self.units, draws), higher))
            self._means[key] = draws, y.mean(axis=0)
        return self._means[key]

    def check(self, strategy_rows: pd.DataFrame, direction: float) -> dict:
        """The check of one cell (its finite rows, with a `layout` column) whose observed difference is `direction`.
        Returns {eval_units, eval_draws, eval_opposite (share of draws with the difference on the other side of zero,
        or not finite), eval_low, eval_high (percentile interval of the difference, test scale), eval_holds (bool, or
        None when the rows carry no common units), eval_straddles (the Monte-Carlo error still reaches the
        threshold at MAX_DRAWS)}."""
        metric = strategy_rows["metric_name"].iloc[0]
        x = units_matrix(strategy_rows, f"{self.stage}_units")
        if (x is None or self.units is None or x.shape[1] != self.units.shape[1] or metric not in UNIT_METRICS
                or not np.isfinite(direction)):
            return dict(NOT_RUN)
        scale, higher = metric_scale(strategy_rows), higher_is_better(strategy_rows)  # older tables: by metric name
        forward, _ = SCALES[scale]
        alpha = (1 - CONFIDENCE) / 2
        for n_draws in (DRAWS, MAX_DRAWS):
            draws, y_mean = self.means(metric, scale, higher, n_draws)
            with np.errstate(all="ignore"):
                x_draws = forward(resampled(metric, x, draws))
            per_layout = pd.DataFrame(x_draws).groupby(strategy_rows["layout"].to_numpy()).mean().to_numpy()
            d = per_layout.mean(axis=0) - y_mean
            opposite = float(np.mean(~(np.sign(d) == np.sign(direction))))  # a non-finite draw counts against
            low, high = mc_interval(round(opposite * n_draws), n_draws)
            straddles = bool(low < alpha <= high)
            if not straddles:
                break
        finite = d[np.isfinite(d)]
        lo, hi = np.quantile(finite, [alpha, 1 - alpha]) if len(finite) else (float("nan"), float("nan"))
        return {"eval_units": int(x.shape[1]), "eval_draws": n_draws, "eval_opposite": opposite,
                "eval_low": float(lo), "eval_high": float(hi), "eval_holds": opposite < alpha,
                "eval_straddles": straddles}
