"""The test against the random reference (orchestrator.analyze.permutation, reference.vs_reference): exact where it
enumerates, intervals that agree with it, verdicts that do not move with the resampling seed, a level held at unequal
spreads where the former test lost it, and one line for a test or resample count that does not exist."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats

from orchestrator.analyze import reference as ref
from orchestrator.analyze.load import load
from orchestrator.analyze.permutation import MIN_RESAMPLES, TwoSampleTest, partitions, rank_interval, rank_p
from orchestrator.analyze.stats import pairwise, realised_share
from orchestrator.cli import main
from tests.unit.analyze.test_reference import random_reference, rows

DATA = Path(__file__).resolve().parents[3] / "docs" / "data"


def test_an_exact_p_is_the_enumeration_of_every_partition_of_welchs_t():
    rng = np.random.default_rng(0)
    x, y = rng.normal(0.5, 0.2, 4), rng.normal(0, 1, 9)
    test = TwoSampleTest(x, y)
    assert test.exact and test.partitions == math.comb(13, 4)

    def welch(a, b):
        return sstats.ttest_ind(a, b, equal_var=False).statistic

    pooled = np.concatenate([x, y])
    observed = abs(welch(x, y))
    count = 0
    for chosen in itertools.combinations(range(13), 4):
        rest = [i for i in range(13) if i not in chosen]
        count += abs(welch(pooled[list(chosen)], pooled[rest])) >= observed * (1 - 1e-12)
    assert test.p() == pytest.approx(count / math.comb(13, 4))


@pytest.mark.parametrize("statistic", ["studentized", "mean-difference"])
def test_the_interval_excludes_no_effect_exactly_when_the_test_rejects(statistic):
    rng = np.random.default_rng(1)
    agreed = {True: 0, False: 0}
    for shift in np.linspace(0, 1.5, 16):
        x, y = rng.normal(shift, 0.3, 5), rng.normal(0, 1, 30)
        test = TwoSampleTest(x, y, statistic, seed=int(shift * 100))
        low, high = test.interval(0.95)
        rejects = test.p() < 0.05
        assert (not low <= 0 <= high) == rejects
        assert low <= x.mean() - y.mean() <= high
        agreed[rejects] += 1
    assert agreed[True] and agreed[False]  # both outcomes were exercised


def test_the_rank_interval_inverts_the_rank_test():
    y = np.arange(40, dtype=float)
    for value in (-5.0, 0.5, 20.0, 39.5, 50.0):
        low, high = rank_interval(value, y, 0.95)
        assert (not low <= 0 <= high) == (rank_p(value, y) < 0.05)
    # five reference values: the rank test cannot reject (its smallest p is 2/6), so every shift is accepted
    assert all(math.isnan(v) for v in rank_interval(100.0, np.arange(5.0), 0.95))


def test_every_published_interval_agrees_with_its_test():
    """Every vs-random row of every published run: the interval excludes no effect exactly when p < 0.05."""
    checked = 0
    for summary in DATA.glob("*/summary.csv"):
        table = pd.read_csv(summary)
        for stage in ("pruned", "recovered"):
            p, low, high = (table.get(f"vs_random_{stage}_{c}") for c in ("p", "effect_low", "effect_high"))
            if p is None:
                continue
            null = np.where(table["scale"].eq("log"), 1.0, 0.0)
            has = p.notna() & low.notna()
            excludes = (low > null) | (high < null)
            assert (excludes[has] == (p[has] < 0.05)).all(), summary
            checked += int(has.sum())
    assert checked > 50


def _family(model: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison run's trials and reference, with the run that extends it by seeds (as the docs analyse them)."""
    results = load([str(DATA / "comparison"), *map(str, sorted(DATA.glob("comparison_*")))])
    pick = lambda t: t[t["model"].eq(model)]  # noqa: E731
    return pick(results.trials), pick(results.reference)


def test_a_different_resampling_seed_changes_no_verdict():
    """MiniLM's pruned family moved with the seed under one shared stream (8 to 13 cells separated); each test now
    has its own stream and is resampled until its verdict cannot move."""
    trials, reference = _family("sentinel/all-MiniLM-L6-v2")
    verdicts = [ref.vs_reference(trials, reference, "pruned", ref.TestSettings(seed=seed)).set_index("label")
                for seed in (0, 7)]
    pd.testing.assert_series_equal(verdicts[0]["verdict"], verdicts[1]["verdict"])
    assert not verdicts[0]["mc_straddles"].any()


def test_the_studentized_test_holds_its_level_at_unequal_spreads_where_the_former_test_did_not():
    """Null strategies centred on random's mean with 5 layouts: at twice random's spread the former test (permuted
    mean difference) calls them better or worse far above 0.05; the studentized decision stays near it. At a tenth of
    random's spread the former test misses a real effect the studentized test finds."""
    rng = np.random.default_rng(2)
    trials, published = _family("sentinel/smollm2-135m")
    reference = np.log(ref.reference_values(published, "sentinel/smollm2-135m", 0.3, "pruned").to_numpy(float))
    centre, runs = reference.mean(), 300
    index = partitions(5, 60, 999, rng)
    wide = {"studentized": 0, "mean-difference": 0}
    for _ in range(runs):
        x = centre + 2 * (rng.choice(reference, 5) - centre)
        y = rng.choice(reference, 60)
        for statistic in wide:
            if statistic == "studentized" and ref.spread_ratio(x, y) > ref.MAX_SPREAD_RATIO:
                continue  # no verdict: never a false positive
            wide[statistic] += TwoSampleTest(x, y, statistic, index=index).p() < 0.05
    limit = 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert wide["studentized"] / runs <= limit < wide["mean-difference"] / runs
    found = {"studentized": 0, "mean-difference": 0}
    for _ in range(100):
        x = centre - 0.6 * reference.std() + 0.1 * (rng.choice(reference, 5) - centre)
        y = rng.choice(reference, 60)
        for statistic in found:
            found[statistic] += TwoSampleTest(x, y, statistic, index=index).p() < 0.05
    assert found["studentized"] > 70 > found["mean-difference"] + 20


def test_two_to_four_layouts_or_a_wide_spread_get_no_verdict_but_a_percentile():
    rng = np.random.default_rng(3)
    base = random_reference(40, rng)
    few = rows("hybrid", np.exp(rng.normal(4.0, 0.1, 5)), layouts=[[[0, 0]], [[1, 1]]] * 2 + [[[0, 0]]])
    row = ref.vs_reference(few, base, "pruned").iloc[0]
    assert row["n_layouts"] == 2 and row["verdict"] == "too few distinct layouts" and math.isnan(row["p"])
    assert row["percentile"] > 0.8
    unstable = rows("wild", np.exp(rng.normal(6.5, 6.0, 5)))
    row = ref.vs_reference(unstable, base, "pruned").iloc[0]
    assert row["verdict"] == "too unstable for a verdict" and math.isnan(row["p"])


def test_a_reference_layout_with_a_non_finite_metric_ranks_last_rather_than_dropped():
    rng = np.random.default_rng(4)
    base = random_reference(30, rng)
    base.loc[base.index[:3], "pruned"] = np.nan  # overflowed perplexities are stored as missing
    row = ref.vs_reference(rows("gradient", np.exp(rng.normal(4.0, 0.1, 5))), base, "pruned").iloc[0]
    assert row["n_reference"] == 30 and row["n_nonfinite_reference"] == 3
    worst = np.sort(base["pruned"].dropna())[-2:]
    percentiles = ref.seed_percentiles(rows("gradient", [worst.mean()]), base)
    assert percentiles["percentile"].iloc[0] == pytest.approx(4 / 30)  # beats the worst finite and the 3 non-finite
    whole = rows("broken", [np.nan] * 5)
    assert ref.vs_reference(whole, base, "pruned").iloc[0]["verdict"] == "no finite metric"


def test_a_pair_without_spread_is_deterministic_never_no_difference():
    a = rows("hybrid", [5000.0] * 5, layouts=[[[0, 0]]] * 5)
    b = rows("magnitude", [240.0] * 5, layouts=[[[1, 1]]] * 5)
    pair = pairwise(pd.concat([a, b])).iloc[0]
    assert pair["verdict"] == "deterministic: worse" and pair["a"] == "hybrid"  # 21x the perplexity, every seed
    assert pair["unit"] == "seeds (paired)" and pair["family"] == "exploratory"


def test_no_share_of_a_gain_whose_ideal_is_within_twenty_percent_of_one():
    assert math.isnan(realised_share(1.05, 1.07))
    assert realised_share(1.5, 2.0) == pytest.approx(0.5)


@pytest.mark.parametrize("flags, field", [(["--test", "welch"], "--test"),
                                          (["--resamples", str(MIN_RESAMPLES - 1)], "--resamples")])
def test_an_unknown_test_or_too_few_resamples_is_one_line_and_exit_2(flags, field, capsys, tmp_path):
    assert main(["analyze", str(tmp_path / "missing"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err and "allowed" in err
