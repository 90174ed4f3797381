"""The driver's view of a Tune run: Progress (a line per trial), ResultStream (records streamed as Parquet parts),
PendingReport (trials that cannot be placed) and CellQueue (the cells handed to Tune in order). Every trial
reports its TrialRecord (orchestrator.trainable); one that died without reporting (worker killed) gets a failed
record built from its config and Tune's error (tune_error)."""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Mapping, TextIO

from ray.tune import Callback
from ray.tune.search import Searcher

from orchestrator.results import write_part
from orchestrator.trainable import RECORD_KEY
from sentinel.result import RunContext, TrialRecord, strategy_label
from sentinel.trial import failed_record


# ------------------------------------------------------------------------------------------- progress


class Progress(Callback):
    """One line per finished trial with its key metric; Tune's own table is off (verbose=0).

    Tune pickles its callbacks with the experiment; the stream is not pickled (None = sys.stdout).
    """

    def __init__(self, total: int, stream: TextIO | None = None, done: int = 0) -> None:
        self.total = total
        self.stream = stream
        self.done = done  # cells finished by earlier runs of this experiment
        self.done_here = 0  # cells finished by this run: the pace the time left is estimated from
        self.last: dict[str, dict] = {}
        self.pending: dict[str, tuple[Any, str]] = {}  # Tune trial id -> (trial, note): ended, row not yet on disk
        self.started = time.time()
        self.first_done: float | None = None  # when this run's first cell finished (the pace is measured from it)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "stream": None, "last": {}, "pending": {}}

    def written(self, tune_trial_ids: list[str]) -> None:
        """ResultStream wrote these trials' rows: their lines are printed now, never before (a driver killed after a
        "done" line must find that row on disk)."""
        for trial_id in tune_trial_ids:
            if trial_id in self.pending:
                self._line(*self.pending.pop(trial_id))

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def _line(self, trial, note: str) -> None:
        self.done += 1
        self.done_here += 1
        now = time.time()
        elapsed = now - self.started
        self.first_done = self.first_done or now
        left = (self.total - self.done) * self.pace(now)
        eta = f", about {_duration(left)} left" if self.done < self.total else ""
        self._write(f"[{self.done}/{self.total}] {_cell_name(trial)}: {note} ({_duration(elapsed)}{eta})")

    def pace(self, now: float) -> float:
        """Seconds per cell at this run's pace: measured from its first finished cell once there are two, because the
        time to the first one holds what a run pays once (Ray's start, model loads, dense baselines); on the
        comparison grid's extension (20 cells) the pace from the start put the time left at 9x the truth after a
        tenth of its cells, the pace after the first within 5%."""
        if self.done_here < 2:
            return (now - self.started) / self.done_here
        return (now - self.first_done) / (self.done_here - 1)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info):
        record = _record(self.last.pop(trial.trial_id, None))
        row = record.row if record else {}
        note = "done"
        if row.get("status") == "ok":
            arrow = f"{row['dense']:.4g} -> {row['pruned']:.4g} -> {row['recovered']:.4g}"
            reused = ",".join(k.removeprefix("reused_") for k, v in row.items() if k.startswith("reused_") and v) or "nothing"
            note = f"{row['metric_name']} dense -> pruned -> recovered {arrow} (reused {reused})"
        self.pending[trial.trial_id] = (trial, note)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._write(f"[retry] {_cell_name(trial)}: {_error_line(trial)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.last.pop(trial.trial_id, None)
        self.pending[trial.trial_id] = (trial, f"FAILED: {_error_line(trial)}")


def _duration(seconds: float) -> str:
    """'42s', '12m05s', '1h17m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _record(result: Mapping[str, Any] | None) -> TrialRecord | None:
    """The record a trial reported, or None if it reported none."""
    text = (result or {}).get(RECORD_KEY)
    return TrialRecord.from_json(text) if text else None


class ResultStream(Callback):
    """Writes finished trials' rows to storage as they end, so a killed driver loses no finished row.

    Rows are buffered for at most `flush_s` seconds (a part per flush, not per trial, keeps a 10,000-cell grid
    at a few hundred files); `on_step_end` runs every loop of Tune's driver, so a buffered row waits no longer.
    """

    def __init__(self, output_dir: str, run_id: str, flush_s: float = 0.5, progress: Progress | None = None) -> None:
        self.output_dir, self.run_id, self.flush_s = output_dir, run_id, flush_s
        self.progress = progress  # told which trials' rows are on disk after each write
        self.buffer: list[TrialRecord] = []
        self.parts = 0
        self.write_failed = False
        self.flushed_at = time.time()
        self.last: dict[str, dict] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "buffer": [], "last": {}}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info):
        record = _record(self.last.pop(trial.trial_id, None))
        if record:
            self._add(record)
        elif self.progress is not None:  # nothing reported, nothing to write: its line need not wait
            self.progress.written([trial.trial_id])
        # Tune keeps (and checkpoints) every trial's last result until the run ends; the record is ours to keep now,
        # so a 10,000-cell grid does not hold every row twice in the driver
        (trial.last_result or {}).pop(RECORD_KEY, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        record = _record(self.last.pop(trial.trial_id, None))
        (trial.last_result or {}).pop(RECORD_KEY, None)
        if not record:  # died without reporting (a killed worker): a failed record from its config and Tune's error
            record = failed_record(trial.config["cell"], f"TuneError: {tune_error(trial)}")
            record.context = RunContext(experiment=trial.config["run"]["experiment"], run_id=self.run_id,
                                        tune_trial_id=trial.trial_id)
        self._add(record)

    def on_step_end(self, iteration, trials, **info):
        if self.buffer and time.time() - self.flushed_at >= self.flush_s:
            self.flush()

    def on_experiment_end(self, trials, **info):
        self.flush()

    def _add(self, record: TrialRecord) -> None:
        self.buffer.append(record)
        if time.time() - self.flushed_at >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered rows as one part. A failed write (a folder made read-only mid-run) keeps them
        buffered for the next flush and says so once, instead of killing Tune's driver loop."""
        if self.buffer:
            try:
                write_part(self.output_dir, self.buffer, f"{self.run_id}-{self.parts:06d}")
            except OSError as exc:
                if not self.write_failed:
                    sys.stderr.write(f"results: cannot write to {self.output_dir} ({exc.strerror or exc}); "
                                     f"{len(self.buffer)} finished row(s) held in memory, retrying\n")
                self.write_failed = True
                self.flushed_at = time.time()
                return
            self.parts += 1
            written, self.buffer = [r.context.tune_trial_id for r in self.buffer], []
            if self.progress is not None:
                self.progress.written(written)
        self.flushed_at = time.time()


class PendingReport(Callback):
    """Reports trials that wait for resources longer than `after_s` while nothing runs: on a cluster short of
    what one trial asks for (resources.cpu/gpu), Tune would otherwise wait silently, maybe forever."""

    def __init__(self, after_s: float, resources: Mapping[str, float], stream: TextIO | None = None) -> None:
        self.after_s, self.resources, self.stream = after_s, dict(resources), stream
        self.progress_at = time.time()  # the last time a trial started or ended
        self.reported_at = 0.0
        self.checked_at = 0.0
        self.running = 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "stream": None}

    def on_step_end(self, iteration, trials, **info):
        import ray

        now = time.time()
        if now - self.checked_at < 1.0:  # Tune steps many times a second; a scan of 10,000 trials each time is not free
            return
        self.checked_at = now
        running = sum(t.status == "RUNNING" for t in trials)
        pending = [t for t in trials if t.status == "PENDING"]
        if running != self.running or not pending:
            self.running, self.progress_at = running, now
            return
        waited = now - self.progress_at
        if running == 0 and waited >= self.after_s and now - self.reported_at >= self.after_s:
            self.reported_at = now
            total = ray.cluster_resources()
            has = ", ".join(f"{k.lower()} {total.get(k, 0):g}" for k in ("CPU", "GPU"))
            asks = ", ".join(f"{k} {v:g}" for k, v in self.resources.items() if v)
            (self.stream or sys.stdout).write(
                f"[waiting] {len(pending)} trial(s) pending for {waited:.0f}s with none running: each asks for "
                f"{asks}, the cluster has {has} in all; add nodes, or lower resources.cpu/gpu\n")
            (self.stream or sys.stdout).flush()


class CellQueue(Searcher):
    """Hands Tune the grid's cells in order, one per trial. Tune's `grid_search` would deep-copy the whole
    unresolved grid (every cell) for every variant it generates: quadratic in the cells, minutes of driver CPU
    and hundreds of MB at 10,000 cells. Resume does not need Tune's searcher state (rows are the record)."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        super().__init__()
        self._configs = iter(configs)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return next(self._configs, Searcher.FINISHED)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:  # nothing to save: --resume reads the stored rows
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


def _cell_name(trial) -> str:
    cell = trial.config["cell"]
    if cell.get("reference") is True:
        return f"{cell['model']} random reference level={cell['level']} draw={cell['seed']}"
    label = strategy_label(cell["strategy"], cell.get("strategy_options") or {}, cell.get("compensate") is True,
                           cell.get("policy", "global"))
    return f"{cell['model']} {label} level={cell['level']} seed={cell['seed']}"


def _error_line(trial) -> str:
    record = _record(getattr(trial, "last_result", {}))
    if record:
        error = record.row.get("error") or ""
        return error.splitlines()[0] if error else "failed"
    return tune_error(trial)


def tune_error(trial) -> str:
    """The last line of the error Tune recorded for a trial (its error file: written locally when the trial fails,
    synced to storage later, so read where it was written first, then through Trial.get_error), or a note when
    it recorded none."""
    try:
        local = trial.error_file
        text = open(local, encoding="utf-8").read() if local and os.path.isfile(local) else str(trial.get_error() or "")
    except Exception:  # the error file is on storage that went away
        text = ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "worker died without reporting (no error recorded by Tune)"
