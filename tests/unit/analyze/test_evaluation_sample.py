"""The evaluation-sample check (orchestrator.analyze.evaluation_sample): a verdict needs the layout test and a
bootstrap of the evaluation units. Simulated units where the answer is known: a strategy better on every window
keeps its verdict; one better only through a single window loses it; the same rows without units keep the layout
test's verdict and say no check ran. The metric recomputed from units is the metric (sentinel.resampling)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from orchestrator.analyze import reference as ref
from orchestrator.analyze.formatting import evaluation_sample
from orchestrator.analyze.summary import summary_table
from sentinel.resampling import bootstrap_draws, perplexity_of, resampled, spearman_of
from tests.unit.analyze.test_reference import LEVEL, rows

WINDOWS, TOKENS = 8, 127


def with_units(table: pd.DataFrame, nll: np.ndarray) -> pd.DataFrame:
    """Rows whose pruned and recovered perplexity come from per-window mean NLLs nll [rows, windows]."""
    units = [[[float(v * TOKENS), float(TOKENS)] for v in row] for row in nll]
    table = table.copy()
    table["pruned"] = table["recovered"] = perplexity_of(np.array(units))
    table["pruned_units"] = table["recovered_units"] = units
    return table


def simulated(rng: np.random.Generator, strategy_nll: np.ndarray, k: int = 24) -> tuple[pd.DataFrame, pd.DataFrame]:
    """k reference layouts (log perplexity ~ N(6.5, 0.3) per layout, plus a per-window offset shared by every layout
    and a little noise) and a strategy's rows given as per-window NLLs."""
    windows = rng.normal(0, 0.5, WINDOWS)
    reference_nll = rng.normal(6.5, 0.3, (k, 1)) + windows + rng.normal(0, 0.05, (k, WINDOWS))
    reference = with_units(rows("random", np.ones(k), reference=True), reference_nll)
    strategy = with_units(rows("gradient", np.ones(len(strategy_nll))), strategy_nll + windows)
    return strategy, reference


def test_a_strategy_better_on_every_window_keeps_its_verdict():
    rng = np.random.default_rng(0)
    strategy, reference = simulated(rng, rng.normal(5.5, 0.05, (5, 1)) + rng.normal(0, 0.05, (5, WINDOWS)))
    row = ref.vs_reference(strategy, reference, "pruned").iloc[0]
    assert row["verdict"] == "better" and row["eval_holds"] and row["eval_units"] == WINDOWS
    assert row["eval_opposite"] < 0.025 and row["eval_draws"] == 2000
    assert row["eval_effect_low"] <= row["effect"] <= row["eval_effect_high"] < 1  # a ratio below 1 on every draw


def test_a_strategy_better_only_through_one_window_is_not_robust_to_the_evaluation_sample():
    """On these 8 windows the strategy's layouts beat random's by far (the layout test rejects), but all of it comes
    from one window: a draw of windows without it (a third of them) finds no difference."""
    rng = np.random.default_rng(1)
    nll = rng.normal(6.5, 0.02, (5, 1)) + rng.normal(0, 0.05, (5, WINDOWS))
    nll[:, 0] -= 8.0  # one window, where the strategy's layouts predict far better
    strategy, reference = simulated(rng, nll)
    row = ref.vs_reference(strategy, reference, "pruned").iloc[0]
    assert row["p_adj"] < 0.05  # the layout test alone would call it better
    assert not row["eval_holds"] and row["eval_opposite"] > 0.1
    assert row["verdict"] == "not robust to the evaluation sample"
    assert row["eval_effect_low"] < 1 <= row["eval_effect_high"]  # the draws' interval reaches no effect: it agrees


def test_rows_without_units_keep_the_layout_test_and_say_no_check_ran():
    rng = np.random.default_rng(0)
    strategy, reference = simulated(rng, rng.normal(5.5, 0.05, (5, 1)) + rng.normal(0, 0.05, (5, WINDOWS)))
    bare = ref.vs_reference(strategy.drop(columns=["pruned_units", "recovered_units"]),
                            reference.drop(columns=["pruned_units", "recovered_units"]), "pruned").iloc[0]
    assert bare["verdict"] == "better" and bare["eval_units"] == 0 and bare["eval_holds"] is None
    summary = summary_table(strategy.drop(columns=["pruned_units"]), reference)
    assert summary["vs_random_pruned_eval_units"].eq(0).all()


def test_the_check_does_not_move_with_the_resampling_seed_where_it_is_clear():
    rng = np.random.default_rng(2)
    strategy, reference = simulated(rng, rng.normal(5.5, 0.05, (5, 1)) + rng.normal(0, 0.05, (5, WINDOWS)))
    verdicts = {ref.vs_reference(strategy, reference, "pruned", ref.TestSettings(seed=s)).iloc[0]["verdict"]
                for s in range(3)}
    assert verdicts == {"better"}


def test_recomputed_metrics_equal_the_metric():
    rng = np.random.default_rng(3)
    cos, gold = rng.normal(size=300), rng.integers(0, 6, 300).astype(float)  # gold scores with ties, as STS-B's
    units = np.stack([cos, gold], axis=1)
    assert spearman_of(units) == pytest.approx(stats.spearmanr(cos, gold).statistic, abs=1e-12)
    draws = bootstrap_draws(300, 50, seed=7)
    again = resampled("stsb_spearman", units[None], draws)[0]
    assert again[3] == pytest.approx(stats.spearmanr(cos[draws[3]], gold[draws[3]]).statistic, abs=1e-12)
    assert (bootstrap_draws(300, 50, seed=7) == draws).all()  # the draws are the seed's
    nll = np.stack([rng.uniform(100, 500, 8), np.full(8, 127.0)], axis=1)
    assert perplexity_of(nll) == pytest.approx(np.exp(nll[:, 0].sum() / nll[:, 1].sum()))
    with pytest.raises(ValueError, match="resampled metric: 'accuracy' is not one of perplexity, stsb_spearman"):
        resampled("accuracy", units[None], draws)


def test_the_report_states_the_check():
    text = evaluation_sample(8, 2000, 0.001, 0.05, 0.3, True, True)
    assert text == "sign kept in 99.9% of 2,000 draws of 8 units [0.05x, 0.3x]"
    assert evaluation_sample(0, 0, float("nan"), float("nan"), float("nan"), True, None) == ""
    assert (evaluation_sample(500, 2000, 0.2, -0.01, 0.02, False, False)
            == "sign kept in 80.0% of 2,000 draws of 500 units [-0.01, +0.02], not robust")


def test_under_a_null_on_the_windows_the_check_holds_rarely_but_not_never():
    """The check that could fail both ways (benchmarks/evaluation_check.py, fewer runs): with nothing to find over
    the window population it must not hold in most cells, and it must hold sometimes (it is a test, not a wall).
    Measured at 400 runs: 0.10 with 8 windows, at a tenth and at twice the reference's spread."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
    from evaluation_check import null_hold_rate

    for spread in (0.03, 0.6):
        assert 0.02 <= null_hold_rate(8, spread, runs=150) <= 0.2
