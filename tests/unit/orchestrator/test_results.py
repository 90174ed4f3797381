"""Results tables: fixed schemas (also for all-failed tables), flattened columns, atomic writes."""
from __future__ import annotations

import math
import os

import pandas as pd
import pyarrow.parquet as pq

from orchestrator.results import CURVES_SCHEMA, HEADS_SCHEMA, SCHEMA_VERSION, TRIALS_SCHEMA, tables, write_results


def ok_payload(level: float = 0.5) -> dict:
    row = {
        "trial_id": f"t{level}", "model": "m", "strategy": "entropy", "level": level, "seed": 0, "method": "remove",
        "policy": "global", "strategy_options": "{}", "spec": "{}", "status": "ok", "error": "", "architecture": "gpt2",
        "metric_name": "perplexity", "higher_is_better": False, "dense": 10.0, "pruned": 12.0, "recovered": 11.0,
        "protocol": {"dataset": "gutenberg", "split": "eval", "seq_len": 32, "stride": 16, "tokens": 500, "windows": 30},
        "heads_total": 4, "heads_pruned": 2, "pruned_heads": [[0, 1], [1, 3]], "selection_notes": [],
        "params_before": 100, "params_after": 80, "speed_before": 1000.0, "speed_after": 1200.0,
        "timings": {"load": 0.1, "score": 0.2, "finetune": 1.0}, "reused": {"baseline": True, "scores": False},
        "device": "cpu", "node": "host", "versions": {"torch": "2.13.0", "transformers": "5.0", "sentinel_bench": "0.1.0"},
    }
    return {"row": row, "curve": [{"step": 1, "train_loss": 3.0, "eval_metric": 11.0, "lr": 1e-3}],
            "scores": [[0.4, 0.1, 0.5, 0.6], [0.3, 0.2, 0.7, 0.05]],
            "context": {"experiment": "e", "run_id": "e-1", "ray_version": "2.60.0", "started_at": 1_700_000_000_000,
                        "finished_at": 1_700_000_001_000, "gpu_ids": "", "attempts": 1}}


def failed_payload() -> dict:
    row = {"trial_id": "bad", "model": "m", "strategy": "random", "level": 0.3, "seed": 1, "status": "failed",
           "error": "OSError: broken weights", "dense": float("nan"), "heads_total": 0}
    return {"row": row, "curve": [], "scores": [], "context": {"experiment": "e", "run_id": "e-1"}}


def test_all_failed_tables_keep_the_schema(tmp_path):
    written = write_results(str(tmp_path / "e"), [failed_payload()], {"experiment": "e"})
    assert pq.read_schema(written["trials"]).remove_metadata() == TRIALS_SCHEMA
    assert pq.read_schema(written["curves"]).remove_metadata() == CURVES_SCHEMA
    assert pq.read_schema(written["heads"]).remove_metadata() == HEADS_SCHEMA
    df = pd.read_parquet(written["trials"])
    assert df.loc[0, "status"] == "failed" and "broken weights" in df.loc[0, "error"]
    assert pd.isna(df.loc[0, "dense"]) and pd.isna(df.loc[0, "heads_total"])


def test_trial_row_is_flat_with_protocol_timings_versions(tmp_path):
    written = write_results(str(tmp_path / "e"), [ok_payload(0.5), failed_payload()], {"experiment": "e"})
    df = pd.read_parquet(written["trials"])
    row = df[df.status == "ok"].iloc[0]
    assert row.schema_version == SCHEMA_VERSION and row.run_id == "e-1"
    assert row.protocol_seq_len == 32 and row.protocol_stride == 16 and row.protocol_tokens == 500
    assert math.isclose(row.time_total, 1.3) and math.isclose(row.time_finetune, 1.0) and pd.isna(row.time_prune)
    assert row.reused_baseline and not row.reused_scores
    assert row.version_ray == "2.60.0" and row.version_torch == "2.13.0"
    assert [list(p) for p in row.pruned_heads] == [[0, 1], [1, 3]]
    assert str(row.started_at.tz) == "UTC"


def test_heads_table_marks_pruned_heads():
    heads = tables([ok_payload()])["heads"].to_pandas()
    assert len(heads) == 8
    assert set(map(tuple, heads[heads.pruned][["layer", "head"]].values)) == {(0, 1), (1, 3)}
    assert heads.set_index(["layer", "head"]).loc[(0, 0), "score"] == 0.4


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "e"
    write_results(str(out), [ok_payload()], {"experiment": "e", "levels": [0.5]})
    write_results(str(out), [ok_payload(), ok_payload(0.25)], {"experiment": "e", "levels": [0.25, 0.5]})
    assert sorted(os.listdir(out)) == ["config.yaml", "curves.parquet", "heads.parquet", "trials.parquet"]
    assert len(pd.read_parquet(out / "trials.parquet")) == 2
