"""Results tables: fixed schemas (also for all-failed tables), flattened columns, atomic writes."""
from __future__ import annotations

import dataclasses
import json
import math
import os

import pandas as pd
import pytest
import pyarrow.parquet as pq

from orchestrator.results import compact, schema, tables, write_part
from sentinel.result import SCHEMA_VERSION, RunContext, TrialRecord, TrialResult
from sentinel.trial import TrialSpec, failed_record
from tests.tables import write_results


def ok_record(level: float = 0.5) -> TrialRecord:
    spec = TrialSpec(model="sentinel/tiny-gpt2", strategy="entropy", level=level)
    result = TrialResult(
        spec=spec, architecture="gpt2", task="perplexity", metric_name="perplexity", higher_is_better=False,
        metric_scale="log", dense=10.0, pruned=12.0, recovered=11.0,
        protocol={"dataset": "gutenberg", "split": "eval", "seq_len": 32, "stride": 16, "tokens": 500, "windows": 30},
        protocol_label="gutenberg eval split, seq 32 stride 16, 500 tokens", heads_total=4, heads_pruned=2,
        pruned_heads=[[0, 1], [1, 3]], params_before=100, params_after=80, flops_before=2.0, flops_after=1.6,
        speed_before=1000.0, speed_after=1200.0, timings={"load": 0.1, "score": 0.2, "finetune": 1.0},
        reused={"baseline": True, "scores": False}, device="cpu", node="host",
        versions={"torch": "2.13.0", "transformers": "5.0", "sentinel_bench": "0.1.0"},
    )
    record = TrialRecord.of(result)
    record.curve = [{"step": 1, "train_loss": 3.0, "eval_metric": 11.0, "lr": 1e-3}]
    record.scores = [[0.4, 0.1, 0.5, 0.6], [0.3, 0.2, 0.7, 0.05]]
    record.context = RunContext(experiment="e", run_id="e-1", version_ray="2.60.0", started_at=1_700_000_000_000,
                                finished_at=1_700_000_001_000, gpu_ids="", attempts=1)
    return record


def failed_record_of_a_cell() -> TrialRecord:
    cell = {"model": "sentinel/tiny-gpt2", "strategy": "random", "level": 0.3, "seed": 1}
    record = failed_record(cell, "OSError: broken weights")
    record.context = RunContext(experiment="e", run_id="e-1")
    return record


def test_one_row_shape_for_every_trial_and_it_is_the_schema():
    """A record's trials row has exactly the trials schema's columns, for ok rows, failed rows, and rows of cells
    the contract refused (whose fields may be anything); a failed record has a finished one's fields."""
    refused = failed_record({"model": 3, "strategy": "nope", "level": "x", "seed": -1}, "SpecError: ...")
    context = {f.name for f in dataclasses.fields(RunContext)}
    for record in (ok_record(), failed_record_of_a_cell(), refused):
        assert set(record.rows()["trials"][0]) == set(schema("trials").names)
        assert set(record.row).isdisjoint(context)  # the trial never claims to know where it ran
        assert TrialRecord.from_json(record.to_json()) == record  # the one form it travels in, both ways
    assert set(vars(refused)) == set(vars(ok_record()))
    table = tables([ok_record(), failed_record_of_a_cell(), refused])["trials"]
    assert table.num_rows == 3 and table.schema == schema("trials")


def test_all_failed_tables_keep_the_schema(tmp_path):
    written = write_results(str(tmp_path / "e"), [failed_record_of_a_cell()], {"experiment": "e"})
    for name in ("trials", "curves", "heads", "metrics"):
        assert pq.read_schema(written[name]).remove_metadata() == schema(name)
    df = pd.read_parquet(written["trials"])
    assert df.loc[0, "status"] == "failed" and "broken weights" in df.loc[0, "error"]
    assert pd.isna(df.loc[0, "dense"]) and pd.isna(df.loc[0, "heads_total"])


def test_trial_row_is_flat_with_protocol_timings_versions(tmp_path):
    written = write_results(str(tmp_path / "e"), [ok_record(0.5), failed_record_of_a_cell()], {"experiment": "e"})
    df = pd.read_parquet(written["trials"])
    row = df[df.status == "ok"].iloc[0]
    assert row.schema_version == SCHEMA_VERSION and row.run_id == "e-1"
    assert json.loads(row.protocol)["seq_len"] == 32 and row.task == "perplexity"
    assert row.protocol_label == "gutenberg eval split, seq 32 stride 16, 500 tokens"
    assert math.isclose(row.ideal_speedup, 1.25)
    assert math.isclose(row.time_total, 1.3) and math.isclose(row.time_finetune, 1.0) and pd.isna(row.time_prune)
    assert row.reused_baseline and not row.reused_scores
    assert row.version_ray == "2.60.0" and row.version_torch == "2.13.0"
    assert [list(p) for p in row.pruned_heads] == [[0, 1], [1, 3]]
    assert str(row.started_at.tz) == "UTC"


def test_heads_table_marks_pruned_heads():
    heads = tables([ok_record()])["heads"].to_pandas()
    assert len(heads) == 8
    assert set(map(tuple, heads[heads.pruned][["layer", "head"]].values)) == {(0, 1), (1, 3)}
    assert heads.set_index(["layer", "head"]).loc[(0, 0), "score"] == 0.4


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "e"
    write_results(str(out), [ok_record()], {"experiment": "e", "levels": [0.5]})
    write_results(str(out), [ok_record(), ok_record(0.25)], {"experiment": "e", "levels": [0.25, 0.5]})
    assert sorted(os.listdir(out)) == ["config.yaml", "curves.parquet", "heads.parquet", "metrics.parquet", "trials.parquet"]
    assert len(pd.read_parquet(out / "trials.parquet")) == 2


def test_parts_compact_into_one_row_per_trial_and_are_then_removed(tmp_path):
    out = str(tmp_path / "e")
    first, again = ok_record(0.5), ok_record(0.5)
    again.context = dataclasses.replace(again.context, run_id="e-2", finished_at=1_700_000_009_000)
    write_part(out, [first, failed_record_of_a_cell()], "e-1-000000")
    write_part(out, [again], "e-2-000000")  # the same cell, run again later: the newer row wins
    written = compact(out, {"experiment": "e"}).paths
    trials, curves = pd.read_parquet(written["trials"]), pd.read_parquet(written["curves"])
    assert len(trials) == 2 and trials.trial_id.is_unique
    assert trials.set_index("status").loc["ok", "run_id"] == "e-2"
    assert set(curves.run_id) == {"e-2"}  # curves and heads follow the kept row's run
    assert not (tmp_path / "e" / "parts").exists()
    write_part(out, [ok_record(0.25)], "e-3-000000")  # a later run's parts merge with the compacted table
    assert len(pd.read_parquet(compact(out, {"experiment": "e"}).paths["trials"])) == 3


def test_a_truncated_part_is_left_where_it_is_and_the_readable_rows_are_kept(tmp_path):
    """A kill mid-write can leave a part cut short: compaction (every --resume) must not crash on it and must not
    delete it; the good parts merge, and the truncated part's trials, without a row, run again."""
    out = str(tmp_path / "e")
    write_part(out, [ok_record(0.5)], "e-1-000000")
    write_part(out, [ok_record(0.25)], "e-2-000000")
    broken = next((tmp_path / "e" / "parts" / "trials").glob("e-2-*"))
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    compacted = compact(out, {"experiment": "e"})
    assert compacted.unreadable == [str(broken)] and broken.is_file()
    trials = pd.read_parquet(compacted.paths["trials"])
    assert list(trials.level) == [0.5]
    assert list(compact(out, {"experiment": "e"}).status.values()) == ["ok"]  # and again: still no crash


def test_compaction_never_deletes_another_experiment_living_in_its_parts_folder(tmp_path):
    """Experiment `parts` with output out/a, then experiment `a` in out: `a` compacting its own parts must leave
    every file of `parts` (results, config, its own parts) where it was."""
    other = str(tmp_path / "a" / "parts")
    write_part(other, [ok_record(0.25)], "parts-1-000000")
    compact(other, {"experiment": "parts"})
    write_part(other, [ok_record(0.5)], "parts-2-000000")  # and parts of its own, not yet compacted
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "a" / "parts").rglob("*") if p.is_file())
    assert len(before) >= 6
    mine = str(tmp_path / "a")
    write_part(mine, [ok_record(0.5)], "a-1-000000")
    compact(mine, {"experiment": "a"})
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "a" / "parts").rglob("*") if p.is_file())
    mine_left = [p for p in after if p.name.startswith("a-1")]
    assert not mine_left and set(before) <= set(after)


@dataclasses.dataclass
class WithProbe(TrialResult):
    """TrialResult as a release that adds two measurements would declare it: the one place a field is added."""

    probe_heads_kept: int | None = None
    probe_ratio: float = math.nan


def test_a_field_added_to_the_result_arrives_typed_in_the_analysis(tmp_path, monkeypatch):
    import sentinel.result
    from orchestrator.analyze.load import AnalyzeError, load

    monkeypatch.setattr(sentinel.result, "TrialResult", WithProbe)  # the declaration every table is derived from
    spec = TrialSpec(model="sentinel/tiny-gpt2", strategy="entropy", level=0.5)
    result = WithProbe(spec=spec, metric_name="perplexity", higher_is_better=False, dense=10.0, pruned=12.0,
                       recovered=11.0, probe_heads_kept=7, probe_ratio=0.25)
    record = TrialRecord.from_json(TrialRecord.of(result).to_json())  # as the worker reports it to the driver
    record.context = RunContext(experiment="e", run_id="e-1")
    folder = tmp_path / "e"
    write_results(str(folder), [record], {"experiment": "e"})
    assert schema("trials").field("probe_heads_kept").type == "int64"
    trials = load(str(folder)).trials
    assert trials.probe_heads_kept.tolist() == [7] and pd.api.types.is_integer_dtype(trials.probe_heads_kept)
    assert trials.probe_ratio.tolist() == [0.25] and pd.api.types.is_float_dtype(trials.probe_ratio)
    # the reader's types come from the same declaration: a string in the new numeric column is refused, not blanked
    frame = pd.read_parquet(folder / "trials.parquet").assign(probe_heads_kept="seven")
    frame.to_parquet(folder / "trials.parquet")
    with pytest.raises(AnalyzeError, match="column 'probe_heads_kept' must be numeric"):
        load(str(folder))
