"""A trial's "done" line is printed only once its row is on disk: a driver killed right after the line must not lose
the row (before, the line came while the row sat in the 0.5 s write buffer, and --resume recomputed it)."""
from __future__ import annotations

import io
import json
from types import SimpleNamespace

from orchestrator.callbacks import Progress, ResultStream
from orchestrator.trainable import RECORD_KEY
from tests.unit.orchestrator.test_results import ok_record


def test_the_done_line_waits_for_the_rows_part_file(tmp_path):
    stream = io.StringIO()
    progress = Progress(total=3, stream=stream, done=1)  # one cell done by an earlier run
    results = ResultStream(str(tmp_path / "e"), "e-1", flush_s=3600, progress=progress)  # nothing flushes by time
    record = ok_record(0.5)
    record.context.tune_trial_id = "t1"
    trial = SimpleNamespace(trial_id="t1", config={"cell": json.loads(record.row["spec"])}, last_result={})
    result = {RECORD_KEY: record.to_json()}
    for callback in (progress, results):  # Tune calls them in the runner's order
        callback.on_trial_result(0, [], trial, result)
    for callback in (progress, results):
        callback.on_trial_complete(0, [], trial)
    parts = tmp_path / "e" / "parts" / "trials"
    assert stream.getvalue() == "" and not parts.exists()  # buffered: no line yet
    results.flush()
    assert list(parts.glob("*.parquet")) and stream.getvalue().startswith("[2/3] ")
    assert "perplexity dense -> pruned -> recovered" in stream.getvalue()
    assert stream.getvalue().rstrip().endswith("left)")  # elapsed, and the time left at this run's pace


def test_the_time_left_is_paced_from_the_first_finished_cell(monkeypatch):
    """What a run pays once (Ray's start, model loads, dense baselines) sits before its first finished cell: the pace
    is measured after it, once there are two (the extension of the comparison grid: 20 cells, the first after 153 s,
    the second 9 s later)."""
    import orchestrator.callbacks as callbacks

    clock = iter([0.0, 153.0, 162.0])
    monkeypatch.setattr(callbacks.time, "time", lambda: next(clock))
    stream = io.StringIO()
    progress = Progress(total=20, stream=stream)
    trial = SimpleNamespace(trial_id="t", config={"cell": {"model": "m", "strategy": "s", "level": 0.5, "seed": 0}})
    progress._line(trial, "done")
    progress._line(trial, "done")
    first, second = stream.getvalue().splitlines()
    assert first.endswith("(2m33s, about 48m27s left)")  # 19 cells at 153 s each: the first cell's cost
    assert second.endswith("(2m42s, about 2m42s left)")  # 18 cells at 9 s each
