"""Results tables are untrusted, and their size is read from the footer before the rows: a 1 MB Parquet file can claim
4 x 10^7 rows, tens of GB once every column is materialised (issue #38). Compaction on --resume leaves such a part
unread and named; analyze refuses such a table in one line; and head to head, quadratic in strategies, is skipped
with a note past its cap instead of running for minutes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.analyze import stats
from orchestrator.analyze.load import AnalyzeError, load
from orchestrator.results import MAX_TABLE_BYTES, compact, read_bounded

BOMB_ROWS = 40_000_000


def write_bomb(path) -> int:
    """A Parquet file whose footer says 4 x 10^7 rows of two columns, all null: a few KB on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"trial_id": pa.nulls(BOMB_ROWS, pa.string()), "level": pa.nulls(BOMB_ROWS, pa.float64())})
    pq.write_table(table, path)
    return path.stat().st_size


def test_a_parquet_bomb_is_refused_from_its_footer(tmp_path):
    size = write_bomb(tmp_path / "bomb.parquet")
    assert size < 1_000_000  # small on disk
    # as a trials table, expanded to the schema's ~110 columns, it is the tens of GB the issue measured
    with pytest.raises(ValueError, match=r"40,000,000 rows x 110 columns would take 32.8 GiB; at most 2 GiB are read"):
        read_bounded(str(tmp_path / "bomb.parquet"), width=110)
    assert MAX_TABLE_BYTES == 2 * 2**30
    pq.write_table(pa.table({"level": [0.3, 0.5]}), tmp_path / "small.parquet")
    assert read_bounded(str(tmp_path / "small.parquet"), width=110).num_rows == 2  # a real table reads


def test_compaction_leaves_a_bomb_part_unread_and_named(tmp_path):
    out = tmp_path / "exp"
    write_bomb(out / "parts" / "trials" / "run-000000.parquet")
    done = compact(str(out), {"experiment": "exp"})
    assert [p.endswith("run-000000.parquet") for p in done.unreadable] == [True]
    assert (out / "parts" / "trials" / "run-000000.parquet").exists()  # never deleted
    assert pq.read_metadata(out / "trials.parquet").num_rows == 0


def test_analyze_refuses_a_bomb_table_in_one_line(tmp_path):
    write_bomb(tmp_path / "run" / "trials.parquet")
    with pytest.raises(AnalyzeError, match=r"trials.parquet: 40,000,000 rows") as caught:
        load([str(tmp_path / "run")])
    assert "\n" not in str(caught.value)


def test_head_to_head_past_its_cap_is_skipped_with_a_note(monkeypatch):
    rng = np.random.default_rng(0)

    def grid(n_labels: int) -> pd.DataFrame:
        return pd.DataFrame([{"model": "m", "label": f"s{i}", "strategy": f"s{i}", "level": 0.3, "seed": seed,
                              "status": "ok", "pruned": float(rng.uniform(10, 20)),
                              "recovered": float(rng.uniform(10, 20)), "metric_scale": "log",
                              "higher_is_better": False, "metric_name": "perplexity"}
                             for i in range(n_labels) for seed in range(3)])

    monkeypatch.setattr(stats, "MAX_HEAD_TO_HEAD", 3)
    notes: list[str] = []
    assert len(stats.pairwise(grid(3), notes)) == 2 * 3 and not notes  # 3 pairs per stage
    assert stats.pairwise(grid(4), notes).empty
    assert notes == ["no head-to-head table for m at level 0.3: 4 strategies, at most 3 are compared pair by pair "
                     "(analyse fewer at once)"]
