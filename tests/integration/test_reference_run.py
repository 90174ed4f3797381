"""A grid with a random reference through a real Ray runtime: reference layouts run as cells beside the strategies,
land in trials.parquet marked `reference`, and the analysis tests every strategy against them."""
from __future__ import annotations

import io

import pandas as pd
import pytest

from orchestrator.analyze import analyze
from orchestrator.analyze.reference import layout_key
from orchestrator.runner import run_experiment
from orchestrator.spec import parse_spec
from tests.integration.test_orchestrator import experiment

pytestmark = pytest.mark.slow


def test_reference_layouts_run_as_cells_and_every_strategy_is_tested_against_them(ray_cluster, tiny_gpt2,
                                                                                   tiny_corpus, tmp_path):
    raw = experiment("ref", tmp_path, [tiny_gpt2], tiny_corpus, strategies=["magnitude", "random"], levels=[0.25],
                     seeds=[0, 1, 2], random_reference={"layouts": 20, "recovered": 5})
    stream = io.StringIO()
    summary = run_experiment(parse_spec(raw), stream=stream)
    assert (summary.ok, summary.failed) == (26, 0)
    assert "random reference level=0.25 draw=19" in stream.getvalue()  # the progress line names a draw, not a seed

    trials = pd.read_parquet(summary.written["trials"])
    reference = trials[trials.reference]
    assert len(reference) == 20 and set(reference.strategy) == {"random"}
    assert sorted(reference[reference.recovery_steps > 0].seed) == [0, 1, 2, 3, 4]
    assert reference.speed_after.isna().all()  # the reference measures quality, never speed
    # reference draw d is not random seed d: its head scores come from a stream of their own
    heads = pd.read_parquet(summary.written["heads"])
    scores = heads.groupby("trial_id").score.apply(tuple)
    grid_random = trials[(trials.strategy == "random") & ~trials.reference].set_index("seed").trial_id
    draws = reference.set_index("seed").trial_id
    assert all(scores[grid_random[d]] != scores[draws[d]] for d in (0, 1, 2))
    key = layout_key
    # an unrecovered draw's recovered value is its pruned one; the analysis uses only the recovered draws for that stage
    unrecovered = reference[reference.recovery_steps == 0]
    assert (unrecovered.recovered == unrecovered.pruned).all()

    report = analyze([summary.written["trials"].rsplit("/", 1)[0]])
    table = pd.read_csv(report.parent / "summary.csv").set_index("label")
    assert set(table.index) == {"magnitude", "random"}  # the reference is not a strategy row
    # tiny-gpt2 has 28 layouts of 2 heads in 8: 20 draws repeat some, and each distinct layout counts once
    distinct = reference.pruned_heads.map(key).nunique()
    assert table.loc["magnitude", "vs_random_pruned_test"] == f"permutation, 1 layout(s) vs {distinct} random"
    assert 0 <= table.loc["magnitude", "pruned_percentile"] <= 1
    recovered = reference[reference.recovery_steps > 0].pruned_heads.map(key).nunique()
    assert table.loc["magnitude", "vs_random_recovered_test"].endswith(f"vs {recovered} random")
    text = report.read_text()
    assert "random reference for" in text and "20 draws" in text and "5 draws also recovered" in text
    assert (report.parent / "percentiles.csv").is_file() and (report.parent / "stability.csv").is_file()
