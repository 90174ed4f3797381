"""orchestrator.analyze on Parquet written by the real pipeline (see conftest.py): numbers against an
independent pandas/scipy recomputation, every plot file, single-seed and failed cells, and bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest
from scipy import stats

from orchestrator import cli
from orchestrator.analyze import AnalyzeError, analyze, load
from orchestrator.analyze import stats as analysis_stats
from orchestrator.analyze.stats import pareto_front
from orchestrator.analyze.summary import summary_table


def run_cli(argv: list[str]) -> int:
    """`sentinel-bench analyze ARGV` in this process: the exit code."""
    return cli.main(["analyze", *argv])


def recomputed(trials: pd.DataFrame) -> pd.DataFrame:
    """Independent recomputation for perplexity: geometric mean and the t CI of the mean log, mapped back;
    no interval below 3 seeds."""
    ok = trials[trials["status"] == "ok"]
    out = []
    for (model, strategy, level), g in ok.groupby(["model", "strategy", "level"]):
        row = {"model": model, "label": strategy, "level": level, "n": g["seed"].nunique()}
        for value in ("dense", "pruned", "recovered"):
            x = np.log(g[value].to_numpy())
            half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 2 else np.nan
            row[f"{value}_mean"] = np.exp(x.mean())
            row[f"{value}_low"], row[f"{value}_high"] = np.exp(x.mean() - half), np.exp(x.mean() + half)
        out.append(row)
    return pd.DataFrame(out)


def test_fixture_is_real_pipeline_output(results_dir):
    trials = pd.read_parquet(results_dir / "trials.parquet")
    assert set(trials["status"]) == {"ok", "failed"}
    assert (trials.loc[trials.status == "ok", "metric_name"] == "perplexity").all()
    assert len(pd.read_parquet(results_dir / "curves.parquet")) and len(pd.read_parquet(results_dir / "heads.parquet"))


def test_summary_means_and_ci_match_pandas_recomputation(results_dir):
    trials = pd.read_parquet(results_dir / "trials.parquet")
    assert set(trials.loc[trials.status == "ok", "metric_scale"]) == {"log"}
    summary = summary_table(load([str(results_dir)]).trials).set_index(["model", "label", "level"])
    expected = recomputed(trials).set_index(["model", "label", "level"])
    assert set(expected.index) <= set(summary.index)
    for key, row in expected.iterrows():
        assert summary.loc[key, "n_seeds"] == row["n"]
        for value in ("dense", "pruned", "recovered"):
            for column in (f"{value}_mean", f"{value}_low", f"{value}_high"):
                np.testing.assert_allclose(summary.loc[key, column], row[column], rtol=1e-9, equal_nan=True)


def test_paired_difference_to_random_matches_ttest_rel_by_seed(results_dir):
    trials = pd.read_parquet(results_dir / "trials.parquet")
    ok = trials[trials["status"] == "ok"]
    summary = summary_table(load([str(results_dir)]).trials).set_index(["model", "label", "level"])
    for (model, level), g in ok[ok.strategy == "magnitude"].groupby(["model", "level"]):
        r = ok[(ok.strategy == "random") & (ok.model == model) & (ok.level == level)].set_index("seed")
        m = g.set_index("seed").loc[r.index.intersection(g["seed"])]
        for value in ("pruned", "recovered"):
            a, b = m[value].to_numpy(), r.loc[m.index, value].to_numpy()
            p = stats.ttest_rel(np.log(a), np.log(b)).pvalue  # perplexity is compared in log space
            row = summary.loc[(model, "magnitude", level)]
            assert row[f"vs_random_{value}_n_pairs"] == len(m) == 3
            np.testing.assert_allclose(row[f"vs_random_{value}_diff"], (a - b).mean(), rtol=1e-9)
            np.testing.assert_allclose(row[f"vs_random_{value}_ratio"], np.exp(np.log(a / b).mean()), rtol=1e-9)
            np.testing.assert_allclose(row[f"vs_random_{value}_p"], p, rtol=1e-9, equal_nan=True)
            # the ratio's 95% interval: exp(mean log ratio +- t(0.975, n - 1) * sem)
            d = np.log(a / b)
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
            np.testing.assert_allclose([row[f"vs_random_{value}_effect_low"], row[f"vs_random_{value}_effect_high"]],
                                       np.exp([d.mean() - half, d.mean() + half]), rtol=1e-9)
        # Holm over the model's family (magnitude at both levels; entropy has one seed, no p): 2 tests
        ps = summary.loc[(model, "magnitude"), "vs_random_pruned_p"].sort_values()
        expected = np.maximum.accumulate(np.minimum(1, [2 * ps.iloc[0], ps.iloc[1]]))
        np.testing.assert_allclose(summary.loc[(model, "magnitude"), "vs_random_pruned_p_adj"].loc[ps.index], expected)


def test_better_than_random_needs_p_below_005_in_the_metrics_direction(results_dir):
    trials = load([str(results_dir)]).trials
    ok = trials["status"].eq("ok")
    magnitude = ok & trials["strategy"].eq("magnitude") & trials["level"].eq(0.25)
    random_ = ok & trials["strategy"].eq("random") & trials["level"].eq(0.25)
    # make magnitude 10 +- 0.1 perplexity below random at every seed: lower perplexity is better
    by_seed = trials[random_].set_index("seed")["pruned"]
    trials.loc[magnitude, "pruned"] = trials.loc[magnitude, "seed"].map(by_seed) - 10 - 0.1 * trials.loc[magnitude, "seed"]
    cell = lambda t: summary_table(t).set_index(["label", "level"]).loc[("magnitude", 0.25)]  # noqa: E731
    assert cell(trials)["vs_random_pruned_verdict"] == "better"
    flipped = trials.assign(higher_is_better=True)  # the same numbers for a higher-is-better metric
    assert cell(flipped)["vs_random_pruned_verdict"] == "worse"


def test_single_seed_cell_has_no_ci_and_a_note(results_dir, report):
    summary = pd.read_csv(report.parent / "summary.csv")
    entropy = summary[summary["label"] == "entropy"].iloc[0]
    assert entropy["n_seeds"] == 1 and np.isnan(entropy["recovered_low"]) and np.isnan(entropy["vs_random_pruned_p"])
    assert "single seed" in entropy["note"] and entropy["vs_random_pruned_verdict"] == "too few seeds"
    assert "single seed" in report.read_text()


def test_failed_trial_is_listed_with_its_error_and_left_out_of_means(results_dir, report):
    trials = pd.read_parquet(results_dir / "trials.parquet")
    failed = trials[trials["status"] == "failed"]
    assert len(failed) == 1
    summary = pd.read_csv(report.parent / "summary.csv")
    cell = summary[(summary["label"] == "magnitude") & (summary["level"] == 0.5)].iloc[0]
    assert cell["n_failed"] == 1 and cell["n_seeds"] == 3 and "1 failed" in cell["note"]
    text = report.read_text()
    assert "## Failed trials (1)" in text
    from orchestrator.analyze.formatting import md_text

    assert md_text(failed["error"].iloc[0].splitlines()[0]) in text  # "ValueError: seq_len: 128 is not in 1..64 ..."


def test_report_embeds_every_plot_and_each_image_is_non_trivial(results_dir, report):
    assert report == results_dir / "analysis" / "report.md"
    text = report.read_text()
    stems = ["strategies", "metric_vs_level", "recovery_curves", "heads_tiny-gpt2", "pareto"]
    for stem in stems:
        png, svg = report.parent / f"{stem}.png", report.parent / f"{stem}.svg"
        assert f"]({stem}.png)" in text, stem
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 200 and image.shape[1] > 200
        rgb = (image[..., :3] * 255).astype(np.uint32)
        colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
        assert len(colours) > 10, stem  # not a blank canvas
        assert svg.stat().st_size > 5000 and "<svg" in svg.read_text()[:2000]
    for needle in ("better than random", "p < 0.05", "perplexity, ", "4 windows of 32 tokens", "versions:",
                   "weights: safetensors as float32",
                   "device(s): cpu", "partial results", "## Summary table"):
        assert needle in text, needle
    assert "metric_vs_level.png" in (report.parent / "report.html").read_text()


def test_tables_are_written_as_csv_and_markdown(report):
    text = report.read_text()
    assert "inputs: `../trials.parquet`" in text  # relative to the report: no author's directories in it
    summary = pd.read_csv(report.parent / "summary.csv")
    dense = display_table_of(summary)["dense"]
    assert not dense.str.contains(r"\[").any()  # the dense model is one value, never an interval
    assert {"dense_mean", "pruned_low", "pruned_high", "recovered_mean", "vs_random_recovered_p", "params_after",
            "speed_after", "speedup", "speedup_min", "speedup_max", "ideal_speedup", "speedup_share",
            "speedup_share_min", "speedup_share_max"} <= set(summary.columns)
    markdown = (report.parent / "summary.md").read_text().splitlines()
    assert markdown[0].startswith("| model | strategy | level") and len(markdown) == 2 + len(summary)


def display_table_of(summary: pd.DataFrame) -> pd.DataFrame:
    from orchestrator.analyze.report_tables import display_table

    return display_table(summary.fillna({"note": ""}))


def test_inputs_merge_and_duplicates_are_dropped(results_dir, tmp_path):
    """Two runs split by strategy merge to the whole; the same run given twice is counted once."""
    trials = pq.read_table(results_dir / "trials.parquet")
    df = trials.to_pandas()
    parts = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    for path, mask in zip(parts, (df["strategy"] == "random", df["strategy"] != "random")):
        pq.write_table(pa.Table.from_pandas(df[mask], schema=trials.schema, preserve_index=False), path)
    merged = load([str(p) for p in parts] + [str(results_dir / "curves.parquet")])
    assert len(merged.trials) == len(df) and len(merged.curves) == len(pd.read_parquet(results_dir / "curves.parquet"))
    twice = load([str(results_dir), f"file://{results_dir}"])
    assert len(twice.trials) == len(df) and any("duplicate" in n for n in twice.notes)
    pd.testing.assert_frame_equal(summary_table(twice.trials), summary_table(load([str(results_dir)]).trials))


def test_the_same_cells_under_another_protocol_are_refused_not_counted_twice(results_dir, tmp_path):
    """A second run of the same cells with other data has other trial ids: merged, each cell would have two rows and
    a test twice its samples. It is refused in one line naming the cell and what differs."""
    import json

    trials = pq.read_table(results_dir / "trials.parquet")
    other = trials.to_pandas()
    specs = [json.loads(s) for s in other["spec"]]
    for spec in specs:
        spec["data"]["eval_tokens"] += 64
    other["spec"] = [json.dumps(s) for s in specs]
    other["trial_id"] = other["trial_id"] + "x"
    other["run_id"] = "second-run"
    pq.write_table(pa.Table.from_pandas(other, schema=trials.schema, preserve_index=False), tmp_path / "b.parquet")
    with pytest.raises(AnalyzeError, match=r"different specs in the inputs \(runs .*second-run.*\), differing in "
                                           r"data\.eval_tokens; analyze runs of one protocol together") as caught:
        load([str(results_dir), str(tmp_path / "b.parquet")])
    assert "\n" not in str(caught.value)


def test_cli_writes_to_out_and_returns_0(results_dir, tmp_path, capsys):
    assert run_cli([str(results_dir / "trials.parquet"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.md").is_file()
    # trials alone: no curves or heads plots, the rest still works
    assert not (tmp_path / "out" / "recovery_curves.png").exists() and (tmp_path / "out" / "pareto.png").exists()


def test_sentinel_bench_analyze_subcommand(results_dir, tmp_path):
    from orchestrator.cli import main as cli_main

    # trials only (fewer plots to draw): the wiring is what is tested here
    assert cli_main(["analyze", str(results_dir / "trials.parquet"), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report.md").is_file()


def _bad_inputs(results_dir: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    text = tmp / "notes.parquet"
    text.write_text("not parquet\n")
    future = tmp / "future.parquet"
    df = pd.read_parquet(results_dir / "trials.parquet").assign(schema_version=99)
    df.to_parquet(future)
    empty = tmp / "empty" / "trials.parquet"
    empty.parent.mkdir()
    table = pq.read_table(results_dir / "trials.parquet")
    pq.write_table(table.slice(0, 0), empty)
    no_trials = tmp / "no-trials"
    no_trials.mkdir()
    shutil.copy(results_dir / "curves.parquet", no_trials / "curves.parquet")
    return {
        "missing": (tmp / "does-not-exist", "no such file or folder"),
        "not parquet": (text, "not a readable Parquet file"),
        "schema": (future, "schema_version 99 is not understood"),
        "empty": (empty.parent, "trials table is empty"),
        "no trials": (no_trials, "no trials.parquet"),
    }


@pytest.mark.parametrize("case", ["missing", "not parquet", "schema", "empty", "no trials"])
def test_bad_input_is_one_line_naming_the_file_and_exit_2(results_dir, tmp_path, capsys, case):
    path, message = _bad_inputs(results_dir, tmp_path)[case]
    assert run_cli([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sentinel-bench: error: ") and message in err
    assert path.name in err
    with pytest.raises(AnalyzeError):
        analyze([str(path)], out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_pareto_front_respects_the_metric_direction():
    x = pd.Series([1.0, 1.5, 2.0, 1.5])
    y = pd.Series([10.0, 12.0, 20.0, 15.0])  # perplexity: lower is better; (1.5, 15) is dominated by (1.5, 12)
    assert pareto_front(x, y, higher_is_better=False).tolist() == [True, True, True, False]
    assert pareto_front(x, y, higher_is_better=True).tolist() == [False, False, True, False]


def test_only_failed_trials_still_give_a_report(results_dir, tmp_path):
    table = pq.read_table(results_dir / "trials.parquet")
    failed = table.filter(pa.compute.equal(table["status"], "failed"))
    pq.write_table(failed, tmp_path / "trials.parquet")
    report = analyze([str(tmp_path)])
    text = report.read_text()
    assert "## Failed trials (1)" in text and "trials: 0 ok, 1 failed" in text
    assert not list(report.parent.glob("*.png"))  # nothing measured, nothing to plot


def test_report_names_each_models_protocol_from_its_task(results_dir, report):
    """The protocol line comes from the task's own label (schema 2), so a new task needs no reader changes."""
    trials = load([str(results_dir)]).trials
    ok = trials[trials.status == "ok"].iloc[0]
    assert ok["task"] == "perplexity" and ok["protocol_label"].endswith(
        "alice-40k.txt eval split, 4 windows of 32 tokens over 1 of 1 documents")
    assert f"perplexity, {ok['protocol_label']}" in report.read_text()
    from orchestrator.analyze.plots import protocol_label

    old = {"metric_name": "perplexity", "protocol": '{"dataset": "gutenberg", "seq_len": 64}'}  # a schema-1 row
    assert protocol_label(old) == "perplexity, dataset gutenberg, seq_len 64"


def test_holm_adjustment_matches_the_step_down_by_hand():
    from orchestrator.analyze.stats import holm

    p = pd.Series([0.01, 0.04, np.nan, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4x, 3x, 2x, 1x, each at least the one before, at most 1
    expected = {4: 0.02, 0: 0.03, 3: 0.06, 1: 0.06}
    adjusted = holm(p)
    assert np.isnan(adjusted[2])
    for index, value in expected.items():
        assert adjusted[index] == pytest.approx(value)


def synthetic(values: dict[str, list[float]], level: float = 0.3) -> pd.DataFrame:
    """A trials table: one ok perplexity row per (strategy, seed) with the given pruned values."""
    rows = [{"model": "m", "strategy": s, "label": s, "level": level, "seed": i, "status": "ok", "dense": 10.0,
             "pruned": v, "recovered": v, "metric_name": "perplexity", "higher_is_better": False, "metric_scale": "log"}
            for s, vs in values.items() for i, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_best_is_named_only_where_it_beats_every_other_strategy_after_adjustment():
    from orchestrator.analyze.stats import best, not_separated, pairwise

    rng = np.random.default_rng(0)
    noise = lambda: rng.normal(0, 0.02, 6)  # noqa: E731
    clear = synthetic({"random": list(1000 * np.exp(noise())), "gradient": list(50 * np.exp(noise())),
                       "entropy": list(400 * np.exp(noise()))})
    pairs = pairwise(clear)
    assert len(pairs) == 2 * 1  # pruned and recovered, one pair each: random is judged apart (vs random), never here
    assert best(pairs, "m", 0.3, "pruned") == "gradient"
    close = synthetic({"random": list(1000 * np.exp(noise())), "gradient": list(50 * np.exp(noise())),
                       "l0": list(50 * np.exp(noise()))})
    pairs = pairwise(close)
    assert best(pairs, "m", 0.3, "pruned") is None
    assert not_separated(pairs, "m", 0.3, "pruned", "gradient") == ["l0"]
    row = summary_table(close).set_index("label").loc["gradient"]
    assert row.vs_random_pruned_verdict == "better"
    assert row.vs_random_pruned_effect_low < row.vs_random_pruned_effect < row.vs_random_pruned_effect_high < 0.1


def test_no_verdict_below_three_seeds_and_zero_spread_is_labelled_not_an_interval():
    from orchestrator.analyze.report_tables import display_table

    two = summary_table(synthetic({"random": [1000.0, 900.0], "magnitude": [50.0, 50.0]})).set_index("label")
    assert two.loc["magnitude", "vs_random_pruned_verdict"] == "too few seeds"
    assert np.isnan(two.loc["magnitude", "vs_random_pruned_p"])
    flat = summary_table(synthetic({"random": [1000.0, 900.0, 800.0], "magnitude": [50.0, 50.0, 50.0]}))
    shown = display_table(flat).set_index("strategy")
    assert shown.loc["magnitude", "pruned"] == "50 (no spread)"
    assert "no spread" in flat.set_index("label").loc["magnitude", "note"]


def test_generation_table_plot_and_report_section(results_dir, report):
    trials = pd.read_parquet(results_dir / "trials.parquet")
    table = analysis_stats.generation_table(load(str(results_dir)).trials)
    ok = trials[trials["status"].eq("ok")]
    cell = ok[ok["strategy"].eq("magnitude") & ok["level"].eq(0.5)]
    row = table[table["label"].eq("magnitude") & table["level"].eq(0.5)].iloc[0]
    # one layout (magnitude): the median of its 3 rounds, with their min-max, and the realised share of the ideal gain
    ratios = list(cell["decode_batch_speedup_rounds"].iloc[0])
    ideal = cell["ideal_decode_batch_speedup"].iloc[0]
    assert len(ratios) == 3 and row["decode_batch"] == pytest.approx(np.median(ratios))
    assert (row["decode_batch_min"], row["decode_batch_max"]) == pytest.approx((min(ratios), max(ratios)))
    if ideal >= analysis_stats.MIN_IDEAL_FOR_SHARE:
        assert row["decode_batch_share"] == pytest.approx((np.median(ratios) - 1) / (ideal - 1))
        assert row["decode_batch_share_min"] == pytest.approx((min(ratios) - 1) / (ideal - 1))
    else:  # an ideal gain this small: no share (timing noise over a small denominator)
        assert np.isnan(row["decode_batch_share"]) and np.isnan(row["decode_batch_share_min"])
    assert row["kv_cache"] == pytest.approx((cell["kv_bytes_per_token_after"] / cell["kv_bytes_per_token_before"]).mean())
    assert 0 < row["kv_cache"] < 1 and int(row["batch_size"]) == 2
    text = report.read_text()
    assert "## Generation: KV cache and tokens/s" in text and "decode speedup (batch B)" in text
    assert (report.parent / "generation.png").stat().st_size > 10_000


def test_metrics_table_and_its_report_section_repeat_the_primary_numbers(results_dir, report):
    metrics = pd.read_parquet(results_dir / "metrics.parquet")
    trials = pd.read_parquet(results_dir / "trials.parquet").set_index("trial_id")
    ok = metrics[metrics["trial_id"].isin(trials.index[trials["status"].eq("ok")])]
    assert set(ok["stage"]) == {"dense", "pruned", "recovered"} and set(ok["task"]) == {"perplexity"}
    for stage in ("dense", "pruned", "recovered"):
        rows = ok[ok["stage"].eq(stage)].set_index("trial_id")
        assert np.allclose(rows["value"], trials.loc[rows.index, stage])
    table = analysis_stats.extra_table(load(str(results_dir)).metrics)
    summary = summary_table(load(str(results_dir)).trials).set_index(["label", "level"])
    for row in table.itertuples():
        assert row.recovered_mean == pytest.approx(summary.loc[(row.label, row.level), "recovered_mean"])
    text = report.read_text()
    assert "## Extra evaluations" in text and (report.parent / "extra_metrics.png").stat().st_size > 10_000


def test_a_generation_column_holding_text_is_refused_and_a_null_direction_does_not_crash(results_dir, tmp_path):
    trials = pd.read_parquet(results_dir / "trials.parquet")
    bad = tmp_path / "bad.parquet"
    trials.assign(decode_tps_after="fast").to_parquet(bad)
    with pytest.raises(AnalyzeError, match="decode_tps_after"):
        load([str(bad)])
    metrics = load(str(results_dir)).metrics.assign(higher_is_better=None)
    table = analysis_stats.extra_table(metrics)
    assert len(table) and set(table["scale"]) == {"identity"}


@pytest.mark.parametrize("column, value, message", [
    ("seed", 0.5, "column 'seed' must hold whole numbers, found 0.5"),
    ("seed", float("nan"), "column 'seed' must hold whole numbers, found nan"),
    ("pruned", float("inf"), "column 'pruned' holds inf in a finished trial"),
    ("recovered", float("-inf"), "column 'recovered' holds -inf in a finished trial"),
    ("pruned_heads", "[[0, 1]]", "column 'pruned_heads' must hold lists of [layer, head] integer pairs"),
])
def test_analyze_refuses_fractional_seeds_and_infinite_metrics_in_one_line(results_dir, tmp_path, capsys, column,
                                                                          value, message):
    from orchestrator import cli

    trials = pd.read_parquet(results_dir / "trials.parquet")
    first_ok = trials.index[trials["status"].eq("ok")][0]
    if column == "pruned_heads":  # text where lists of pairs belong (a whole column: Parquet holds one type)
        trials[column] = value
    else:
        trials[column] = trials[column].astype(float)
        trials.loc[first_ok, column] = value
    bad = tmp_path / "bad.parquet"
    trials.to_parquet(bad)
    assert cli.main(["analyze", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_speed_noise_alone_puts_no_cell_on_the_pareto_front():
    """The audit: entropy was marked Pareto-optimal for a median speedup 1% above gradient's while their timed rounds
    overlapped (same parameter count). With the rounds' spread, a gain within the noise is no gain: the better-quality
    cell dominates; a speedup whose rounds all beat the other's still counts."""
    x = pd.Series([1.07, 1.08, 1.30])
    perplexity = pd.Series([77.0, 8800.0, 9000.0])
    low, high = pd.Series([1.02, 1.01, 1.25]), pd.Series([1.13, 1.12, 1.35])
    assert pareto_front(x, perplexity, higher_is_better=False).tolist() == [True, True, True]  # medians alone
    assert pareto_front(x, perplexity, higher_is_better=False, x_low=low, x_high=high).tolist() == [True, False, True]
