"""Rankings across stages: Kendall's tau between the pruned and the recovered order of strategies, an interval from
the seeds, and flips only where the adjusted head-to-head verdicts disagree on both sides."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestrator.analyze.ranking import stage_ranking
from orchestrator.analyze.stats import pairwise


def cell(label: str, pruned: list[float], recovered: list[float], level: float = 0.3) -> pd.DataFrame:
    n = len(pruned)
    return pd.DataFrame({
        "trial_id": [f"{label}-{level}-{i}" for i in range(n)], "model": "m", "label": label, "strategy": label,
        "level": level, "seed": range(n), "status": "ok", "dense": 10.0, "pruned": pruned, "recovered": recovered,
        "recovery_steps": 3, "metric_scale": "log", "metric_name": "perplexity", "higher_is_better": False,
        "reference": False, "pruned_heads": [[[i, 0]] for i in range(n)],
    })


def grid(pruned_means: dict[str, float], recovered_means: dict[str, float], noise: float = 0.01,
         level: float = 0.3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.concat([cell(label, list(np.exp(pruned_means[label] + rng.normal(0, noise, 5))),
                           list(np.exp(recovered_means[label] + rng.normal(0, noise, 5))), level)
                      for label in pruned_means], ignore_index=True)


def test_an_order_that_survives_recovery_has_tau_one_and_a_reversed_one_minus_one():
    kept = grid({"a": 3.0, "b": 4.0, "c": 5.0, "d": 6.0}, {"a": 2.9, "b": 3.5, "c": 4.0, "d": 4.5})
    reversed_ = grid({"a": 3.0, "b": 4.0, "c": 5.0, "d": 6.0}, {"a": 4.5, "b": 4.0, "c": 3.5, "d": 2.9}, level=0.5)
    trials = pd.concat([kept, reversed_], ignore_index=True)
    table = stage_ranking(trials, pairwise(trials)).set_index("level")
    assert table.loc[0.3, "kendall_tau"] == 1.0 and table.loc[0.5, "kendall_tau"] == -1.0
    assert table.loc[0.3, "tau_low"] == 1.0 and table.loc[0.5, "tau_high"] == -1.0  # separated far beyond the noise
    assert table.loc[0.3, "flips"] == ""
    flips = table.loc[0.5, "flips"].split("; ")
    assert "a > d after pruning, d > a after recovery" in flips and len(flips) == 6  # every pair, with evidence


def test_noise_gives_a_wide_interval_and_no_flip():
    """Strategies that differ by less than their seeds' spread: tau is a coin toss, its interval says so, and no
    pair is called a flip because no head-to-head verdict separates them."""
    trials = grid({"a": 3.0, "b": 3.01, "c": 3.02}, {"a": 3.0, "b": 3.01, "c": 3.02}, noise=0.3)
    row = stage_ranking(trials, pairwise(trials)).iloc[0]
    assert row["tau_low"] <= -0.3 and row["tau_high"] == 1.0 and row["flips"] == ""


def test_fewer_than_three_strategies_or_no_recovery_give_no_row():
    two = grid({"a": 3.0, "b": 4.0}, {"a": 3.0, "b": 4.0})
    assert stage_ranking(two, pairwise(two)).empty
    unrecovered = grid({"a": 3.0, "b": 4.0, "c": 5.0}, {"a": 3.0, "b": 4.0, "c": 5.0}).assign(recovery_steps=0)
    assert stage_ranking(unrecovered, pairwise(unrecovered)).empty
    assert list(stage_ranking(unrecovered, pairwise(unrecovered)).columns)[:4] == ["model", "level", "strategies",
                                                                                    "kendall_tau"]


def test_the_interval_is_reproducible_from_the_seed():
    trials = grid({"a": 3.0, "b": 3.1, "c": 3.2}, {"a": 3.0, "b": 3.1, "c": 3.2}, noise=0.1)
    first, again = (stage_ranking(trials, pairwise(trials), seed=4) for _ in range(2))
    pd.testing.assert_frame_equal(first, again)
    assert first.iloc[0]["tau_low"] <= first.iloc[0]["kendall_tau"] <= first.iloc[0]["tau_high"]
