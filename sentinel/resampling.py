"""How a metric is recomputed from its evaluation units, so that the analysis can resample the evaluation sample.

A trial's metric is a function of units it measured one at a time: a windowed perplexity of its windows' (summed
NLL, predicted tokens), an STS-B Spearman of its pairs' (cosine similarity, gold score). A trial records them beside
the value (`pruned_units`, `recovered_units`: one [a, b] pair per unit, in the evaluation's fixed order), and the
analysis draws the units with replacement, the same draw for every row it compares (the rows were measured on the
same units: paired), and recomputes each row's metric (orchestrator/analyze/reference.py). Numpy and scipy only: the
analysis reads this module without torch.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats as sstats

from sentinel.registry import Registry


def perplexity_of(units: np.ndarray) -> np.ndarray:
    """exp(total NLL / total predicted tokens) of units [..., n, 2] = (NLL summed over a window, its tokens)."""
    return np.exp(units[..., 0].sum(axis=-1) / units[..., 1].sum(axis=-1))


def spearman_of(units: np.ndarray) -> np.ndarray:
    """Spearman's rho of units [..., n, 2] = (cosine similarity, gold score): Pearson's r of their average ranks."""
    ranks = sstats.rankdata(units, axis=-2)
    centred = ranks - ranks.mean(axis=-2, keepdims=True)
    a, b = centred[..., 0], centred[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):  # a draw of one repeated pair has no spread: NaN
        return (a * b).sum(axis=-1) / np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))


# metric name (sentinel.eval.Metric.name) -> units [..., n, 2] -> the metric [...]
UNIT_METRICS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("resampled metric")
UNIT_METRICS.add("perplexity", perplexity_of)
UNIT_METRICS.add("stsb_spearman", spearman_of)


def bootstrap_draws(n_units: int, draws: int, seed: int) -> np.ndarray:
    """`draws` index sets [draws, n_units] of the units, with replacement, from a stream seeded with `seed`."""
    return np.random.default_rng(seed).integers(0, n_units, size=(draws, n_units))


def resampled(metric: str, units: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Each row's metric under each draw: units [rows, n, 2], draws [B, n] -> [rows, B] (a row at a time: a
    [rows, B, n, 2] gather of 500 STS-B pairs is hundreds of megabytes)."""
    of = UNIT_METRICS.get(metric)
    return np.stack([of(row[draws, :]) for row in units]) if len(units) else np.empty((0, len(draws)))
