"""Every strategy against the random reference (orchestrator.analyze.reference): the test separates what differs,
does not separate what is random, counts a layout once, and says how many layouts it had.

Tables here are built by hand where a property needs a known distribution (power, false positives); the end-to-end
path (a grid with a reference through Ray into Parquet and the report) is tests/integration/test_reference_run.py.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from orchestrator.analyze import reference as ref
from orchestrator.analyze.stability import expected_jaccard, stability_table
from orchestrator.analyze.stats import compare, pairwise
from orchestrator.analyze.summary import summary_table

LEVEL = 0.3


def rows(label: str, values, *, layouts=None, recovered=None, reference=False, scale="log", higher=False,
         steps=3) -> pd.DataFrame:
    """Trial rows of one model and level: one per value; `layouts` gives each row's pruned heads (default: a distinct
    layout per row)."""
    n = len(values)
    layouts = layouts if layouts is not None else [[[i, 0], [i, 1]] for i in range(n)]
    return pd.DataFrame({
        "trial_id": [f"{label}-{reference}-{i}" for i in range(n)], "model": "m", "label": label,
        "strategy": "random" if reference else label, "level": LEVEL, "seed": range(n), "status": "ok",
        "pruned": values, "recovered": values if recovered is None else recovered, "dense": 10.0,
        "pruned_heads": layouts, "recovery_steps": steps, "metric_scale": scale, "higher_is_better": higher,
        "metric_name": "perplexity" if scale == "log" else "stsb_spearman", "reference": reference,
    })


def random_reference(k: int, rng: np.random.Generator, recovered: int = 10) -> pd.DataFrame:
    """k reference layouts whose log perplexities spread like SmolLM2's random 30% prunings (sd ~2 in log space)."""
    values = np.exp(rng.normal(6.5, 1.96, k))
    table = rows("random", values, reference=True)
    table["recovery_steps"] = [3 if i < recovered else 0 for i in range(k)]
    return table


def test_a_clearly_better_and_a_clearly_worse_strategy_are_separated_with_five_seeds():
    rng = np.random.default_rng(0)
    base = random_reference(60, rng)
    good = rows("gradient", np.exp(rng.normal(4.3, 0.15, 5)))  # ~0.1x random's geometric mean
    bad = rows("entropy", np.exp(rng.normal(9.0, 0.3, 5)))
    table = ref.vs_reference(pd.concat([good, bad]), base, "pruned").set_index("label")
    assert table.loc["gradient", "verdict"] == "better" and table.loc["entropy", "verdict"] == "worse"
    assert table.loc["gradient", "percentile"] > 0.8 and table.loc["entropy", "percentile"] < 0.2
    assert table.loc["gradient", "effect"] < 0.3 < 3 < table.loc["entropy", "effect"]  # ratios of geometric means
    # the interval is on the tested (log) scale, mapped back: it brackets the ratio and excludes 1 here
    assert table.loc["gradient", "effect_low"] < table.loc["gradient", "effect"] < table.loc["gradient", "effect_high"] < 1
    assert (table["n_reference"] == 60).all() and (table["n_layouts"] == 5).all()


def test_random_layouts_as_a_strategy_are_rejected_at_most_at_the_nominal_rate():
    """A test that separates everything is broken: 300 simulated runs in which the "strategy" is 5 more random
    layouts (skewed, as pruned log perplexities are); the permutation test rejects at alpha 0.05 in at most ~5% of
    them (binomial slack: 3 sd)."""
    rng = np.random.default_rng(1)
    rejected = 0
    runs = 300
    for _ in range(runs):
        draws = np.exp(rng.lognormal(1.8, 0.3, 35))
        p = ref.permutation_p(np.log(draws[:5]), np.log(draws[5:]))
        rejected += p < 0.05
    limit = 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert rejected / runs <= limit
    assert rejected > 0  # and it is a test: it does reject sometimes


def test_one_layout_is_the_rank_test_and_cannot_claim_more_than_its_rank():
    """A strategy that prunes the same heads for every seed (magnitude) is one layout: its seeds are not five
    pieces of evidence. Its p is the exact rank test within the reference."""
    rng = np.random.default_rng(2)
    base = random_reference(40, rng)
    best_random = base["pruned"].min()
    same = [[[0, 0], [9, 9]]] * 5
    magnitude = rows("magnitude", [best_random * 0.9] * 5, layouts=same)
    table = ref.vs_reference(magnitude, base, "pruned").iloc[0]
    assert table["n_layouts"] == 1 and table["percentile"] == 1.0
    assert table["p"] == pytest.approx(2 / 41)  # below every one of 40 layouts: rank 1 of 41, two-sided
    # the interval inverts the rank test: p < 0.05, so it excludes a ratio of 1
    assert table["effect_low"] <= table["effect_high"] < 1
    # the same five values as five distinct layouts would be (wrongly, for magnitude) far stronger evidence
    distinct = ref.vs_reference(rows("magnitude", [best_random * 0.9] * 5), base, "pruned").iloc[0]
    assert distinct["p"] < table["p"] / 10


def test_recovered_verdicts_use_only_the_recovered_reference_layouts():
    rng = np.random.default_rng(3)
    base = random_reference(30, rng, recovered=6)
    strategy = rows("gradient", np.exp(rng.normal(4.0, 0.1, 5)))
    table = ref.vs_reference(strategy, base, "recovered").iloc[0]
    assert table["n_reference"] == 6
    few = ref.vs_reference(strategy, random_reference(30, rng, recovered=3), "recovered").iloc[0]
    assert few["verdict"] == "too few reference layouts" and math.isnan(few["p"])


def test_a_layout_drawn_twice_counts_once_and_the_notes_say_so():
    rng = np.random.default_rng(4)
    base = random_reference(25, rng)
    base.loc[base.index[-3:], "pruned_heads"] = pd.Series([base["pruned_heads"].iloc[0]] * 3, index=base.index[-3:])
    base.loc[base.index[-3:], "pruned"] = base["pruned"].iloc[0]
    assert len(ref.reference_values(base, "m", LEVEL, "pruned")) == 22
    note = ref.reference_notes(base)[0]
    assert "25 draws, 22 distinct layouts" in note and "3 draws repeated a layout and count once" in note


def test_summary_table_reads_the_reference_when_there_is_one():
    rng = np.random.default_rng(5)
    base = random_reference(40, rng)
    trials = pd.concat([rows("gradient", np.exp(rng.normal(4.3, 0.15, 5))), rows("random", np.exp(rng.normal(6.5, 1.96, 5)))])
    summary = summary_table(trials, base).set_index("label")
    assert summary.loc["gradient", "vs_random_pruned_verdict"] == "better"
    assert summary.loc["gradient", "vs_random_pruned_test"].startswith("studentized permutation, 5 layout(s) vs 40 random")
    assert 0 <= summary.loc["random", "pruned_percentile"] <= 1
    assert "pruned_percentile" in summary and "recovered_percentile" in summary
    # without a reference, the older paired comparison (and no percentile)
    paired = summary_table(trials).set_index("label")
    assert paired.loc["gradient", "vs_random_pruned_test"] == "paired t by seed vs random"
    assert paired["pruned_percentile"].isna().all()


def test_head_to_head_leaves_random_out_so_one_comparison_has_one_verdict():
    rng = np.random.default_rng(6)
    trials = pd.concat([rows(name, np.exp(rng.normal(mu, 0.2, 5)))
                        for name, mu in (("gradient", 4.0), ("entropy", 8.0), ("random", 6.0))])
    pairs = pairwise(trials)
    assert not (pairs["a"].eq("random") | pairs["b"].eq("random")).any()
    assert set(zip(pairs["a"], pairs["b"])) == {("entropy", "gradient")}


def test_a_correlation_interval_is_on_fishers_z_like_its_test():
    """Spearman near 0.8: the paired t test runs on z; its interval, mapped back, must exclude 0 exactly when the
    test's p < 0.05 (before, the interval was in Spearman units and 6 published rows disagreed with their p)."""
    rng = np.random.default_rng(7)
    for shift in np.linspace(0.0, 0.03, 12):
        x = np.clip(0.8 + shift + rng.normal(0, 0.01, 5), -1, 1)
        y = np.clip(0.8 + rng.normal(0, 0.01, 5), -1, 1)
        a = rows("a", x, scale="atanh", higher=True)
        b = rows("b", y, scale="atanh", higher=True)
        result = compare(a, b, "pruned")
        excludes_zero = result["effect_low"] > 0 or result["effect_high"] < 0
        assert excludes_zero == (result["p"] < 0.05)
        assert result["effect_low"] <= result["effect"] <= result["effect_high"]


def test_stability_table_measures_overlap_against_random():
    rng = np.random.default_rng(8)
    same = [[[0, 0], [1, 1]]] * 4
    stable = rows("magnitude", [5.0] * 4, layouts=same)
    layouts = [[[int(l), int(h)] for l, h in zip(rng.integers(0, 6, 2), rng.integers(0, 12, 2))] for _ in range(30)]
    base = rows("random", np.exp(rng.normal(6, 1, 30)), layouts=layouts, reference=True)
    heads = pd.DataFrame([{"trial_id": t, "layer": l, "head": h, "score": float(l * 10 + h)}
                          for t in stable["trial_id"] for l in range(2) for h in range(2)])
    table = stability_table(stable, heads, base).iloc[0]
    assert table["jaccard"] == 1.0 and table["distinct_layouts"] == 1 and table["score_spearman"] == pytest.approx(1.0)
    assert 0 <= table["random_jaccard"] < 0.3  # two of 72 heads: random layouts rarely share one


def test_percentile_counts_ties_as_half():
    assert ref.percentile(5.0, np.array([4.0, 5.0, 6.0, 7.0]), higher_is_better=False) == pytest.approx(0.625)
    assert ref.percentile(5.0, np.array([4.0, 5.0, 6.0, 7.0]), higher_is_better=True) == pytest.approx(0.375)


def test_randoms_expected_overlap_under_per_layer_quotas_is_the_hypergeometric_one():
    """Two random layouts taking 2 of 3 units in each of 4 layers: the closed form against 20,000 simulated pairs."""
    rng = np.random.default_rng(9)
    exact = expected_jaccard([3] * 4, [2] * 4)
    draw = lambda: {(layer, int(u)) for layer in range(4) for u in rng.permutation(3)[:2]}  # noqa: E731
    simulated = np.mean([len(a & b) / len(a | b) for a, b in ((draw(), draw()) for _ in range(20_000))])
    assert exact == pytest.approx(simulated, abs=0.005)
    assert expected_jaccard([10], [10]) == pytest.approx(1.0) and math.isnan(expected_jaccard([10], [0]))


def test_a_uniform_strategy_is_compared_with_random_under_the_uniform_rule():
    """The audit: gradient (uniform) at 0.5 was compared with global random's 0.337 where random under its own rule
    gives 0.500. Here: 4 layers of 4 heads, 2 pruned per layer in every seed."""
    layouts = [[[layer, h] for layer in range(4) for h in (0, 1)]] * 3
    uniform = rows("gradient (uniform)", [5.0] * 3, layouts=layouts)
    uniform["policy"] = "uniform"
    heads = pd.DataFrame([{"trial_id": uniform["trial_id"].iloc[0], "model": "m", "layer": l, "head": h, "score": 0.0}
                          for l in range(4) for h in range(4)])
    table = stability_table(uniform, heads, pd.DataFrame()).iloc[0]
    assert table["random_jaccard"] == pytest.approx(expected_jaccard([4] * 4, [2] * 4))
    assert table["random_rule"].startswith("per-layer quotas")


def test_on_a_gqa_model_randoms_overlap_counts_whole_kv_groups():
    """Random layouts of a GQA model take whole KV groups, so random's expected overlap is a hypergeometric over groups,
    not heads: 4 layers of 6 heads in groups of 3, one group pruned per layer (a group-level count of 1 of 2 differs
    from a head-level 3 of 6)."""
    rng = np.random.default_rng(10)
    layouts = [[[layer, h] for layer in range(4) for h in (0, 1, 2)]] * 3
    uniform = rows("gradient (uniform)", [5.0] * 3, layouts=layouts)
    uniform["policy"] = "uniform"
    drawn = [[[layer, 3 * int(g) + i] for layer in range(4) for g in rng.integers(0, 2, 1) for i in range(3)]
             for _ in range(20)]
    base = rows("random", np.exp(rng.normal(6, 1, 20)), layouts=drawn, reference=True)
    heads = pd.DataFrame([{"trial_id": uniform["trial_id"].iloc[0], "model": "m", "layer": l, "head": h, "score": 0.0}
                          for l in range(4) for h in range(6)])
    table = stability_table(uniform, heads, base).iloc[0]
    assert table["random_jaccard"] == pytest.approx(expected_jaccard([2] * 4, [1] * 4))
    assert expected_jaccard([2] * 4, [1] * 4) != pytest.approx(expected_jaccard([6] * 4, [3] * 4), abs=1e-3)


def test_each_criterions_agreement_with_ablation_is_paired_by_seed_with_a_fishers_z_interval():
    """Ablation's scores are the ground truth; a criterion ordering the heads as ablation does at every seed has
    Spearman 1, one reversing them -1, one that matches at some seeds only something between, with an interval from
    the seeds; ablation itself and random get none."""
    rng = np.random.default_rng(3)
    truth = [rng.permutation(16).astype(float) for _ in range(4)]  # per seed: ablation's 16 scores
    noisy = [t + rng.normal(0, 4, 16) for t in truth]
    tables, heads = [], []
    for label, per_seed in (("ablation", truth), ("gradient", truth), ("entropy", [-t for t in truth]),
                            ("taylor", noisy), ("random", noisy)):
        cell = rows(label, [5.0] * 4)
        tables.append(cell)
        heads += [{"trial_id": t, "model": "m", "layer": i // 4, "head": i % 4, "score": float(s[i])}
                  for t, s in zip(cell["trial_id"], per_seed) for i in range(16)]
    table = stability_table(pd.concat(tables, ignore_index=True), pd.DataFrame(heads), pd.DataFrame())
    agreement = table.set_index("label")
    assert agreement.loc["gradient", "ablation_spearman"] == pytest.approx(1.0)
    assert agreement.loc["entropy", "ablation_spearman"] == pytest.approx(-1.0)
    rhos = [stats.spearmanr(n, t).statistic for n, t in zip(noisy, truth)]
    expected = np.tanh(np.mean(np.arctanh(rhos)))
    taylor = agreement.loc["taylor"]
    assert taylor["ablation_spearman"] == pytest.approx(expected) and taylor["ablation_seeds"] == 4
    assert taylor["ablation_spearman_low"] < expected < taylor["ablation_spearman_high"] <= 1
    assert agreement.loc[["ablation", "random"], "ablation_seeds"].tolist() == [0, 0]


def test_the_run_metadata_counts_the_reference_layouts_beside_the_strategy_cells():
    """A run of 6 strategy cells and 24 reference layouts is 30 trials: the report said "6 ok of 6 configured"."""
    from orchestrator.analyze.load import Results
    from orchestrator.analyze.report import run_metadata

    reference = random_reference(24, np.random.default_rng(0))
    reference.loc[reference.index[0], "status"] = "failed"
    results = Results(rows("gradient", [5.0] * 6), pd.DataFrame(), pd.DataFrame(), reference=reference)
    line = next(item for item in run_metadata(results) if item.startswith("trials:"))
    assert line == "trials: 6 ok, 0 failed, 6 strategy cells; random reference: 24 layouts (23 ok)"


def test_a_two_seed_cell_against_the_reference_has_a_verdict_and_its_note_does_not_deny_it():
    """The report said "2 seeds: too few for a verdict" beside a headline verdict at n = 2: against the reference the
    unit is the layout (here one, by the exact rank test), so only the CI needs seeds."""
    rng = np.random.default_rng(5)
    reference = random_reference(60, rng)  # 60 layouts: one layout below them all has p = 2/61 two-sided
    cell = rows("magnitude", [5.0, 5.0], layouts=[[[0, 0], [1, 1]]] * 2)  # beats every random layout
    row = summary_table(pd.concat([cell]), reference).iloc[0]
    assert row["vs_random_pruned_verdict"] == "better"
    assert "too few for a CI" in row["note"] and "verdict" not in row["note"]
    paired = summary_table(pd.concat([cell, rows("random", [30.0, 31.0])]))
    assert "too few for a CI or a verdict" in paired.set_index("label").loc["magnitude", "note"]
