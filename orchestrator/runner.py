"""The Ray Tune runner: one Tune trial per grid cell, shared work through a store actor, rows streamed to storage.

    spec.cells minus the cells that already have a row ──► a Tuner per 1,000 cells (CellQueue, with_resources)
              └─ trainable(config): TrialSpec.from_dict ─► run_trial(spec, shared) ─► tune.report(TrialRecord)
    driver callbacks: Progress (a line per trial), ResultStream (a Parquet part per flush), PendingReport
    after the grid: compact parts ──► trials / curves / heads / metrics Parquet, config.yaml ──► analyze (if installed)

This module is the driver loop; its parts live beside it: trainable.py (what a worker runs), callbacks.py (the
driver's Tune callbacks and the cell queue), outputs.py (the results folder: checks, lock, resume, compaction) and
ray_session.py (the address, a local Ray bound to the driver, stop signals).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, TextIO

from orchestrator.callbacks import CellQueue, PendingReport, Progress, ResultStream
from orchestrator.outputs import SPEC_FILE, compact_results, delete_path, output_lock, prepare
from orchestrator.ray_session import SignalStop, StopOnSignal, start_ray, stop_ray
from orchestrator.spec import ExperimentSpec, SpecError
from orchestrator.storage import is_uri
from orchestrator.trainable import trainable

@dataclass
class RunSummary:
    experiment_path: str  # Tune's state of this run: one folder per chunk of cells (resume reads the rows instead)
    output_dir: str  # Parquet tables
    total: int
    ok: int = 0
    failed: int = 0
    missing: int = 0  # trials that did not finish (interrupted); --resume runs them
    wall_s: float = 0.0
    compact_s: float = 0.0  # merging the streamed parts into the tables
    parts: int = 0  # Parquet parts this run streamed
    written: dict = field(default_factory=dict)
    signal: int | None = None  # SIGINT or SIGTERM when a stop signal ended the run early
    unwritten: int = 0  # finished rows that could not be streamed to storage (a read-only folder)

    @property
    def complete(self) -> bool:
        return self.missing == 0


CHUNK_CELLS = 1000  # cells per Tuner run (see run_experiment)


def run_experiment(
    spec: ExperimentSpec,
    *,
    address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    trainable_fn: Callable[[dict], None] | None = None,
    ray_init: Mapping[str, Any] | None = None,
    stream: TextIO | None = None,
) -> RunSummary:
    """Runs (or resumes) the experiment's grid with Ray Tune, streaming rows to storage, then compacts them.

    Args:
        spec: the validated experiment.
        address: an existing Ray cluster ("auto", "ray://host:10001", ...); None starts a local one.
        resume: continue the experiment stored under its output folder; cells with a row are not run again.
        overwrite: delete a previous experiment of the same name instead of refusing to start.
        trainable_fn: replaces `trainable` (tests wrap it to observe concurrency).
        ray_init: extra ray.init arguments (tests: num_cpus, num_gpus).
        stream: where progress lines go (None: sys.stdout as it is when the run starts, not when this module was
            imported: a redirected stdout gets them).
    Returns:
        A RunSummary (paths, counts of ok / failed / missing trials).
    """
    stream = stream or sys.stdout
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # the progress line and the row carry the error
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SignalStop handles Ctrl-C and SIGTERM alike
    out = spec.output_dir
    run_id = f"{spec.experiment}-{uuid.uuid4().hex[:8]}"
    with output_lock(out), SignalStop() as stop:
        created = prepare(spec, resume, overwrite, run_id)
        cells = spec.cells
        # on resume, what a killed driver left in parts becomes the table the finished cells are read from
        done = set(compact_results(out, spec).status) if resume else set()
        todo = [c for c in cells if c.trial_id() not in done]
        storage, name = spec.tune_location
        summary = RunSummary(f"{storage.rstrip('/')}/{name}/{run_id}", out, total=len(cells))
        started = time.time()
        if todo:
            owns_ray = _start_ray_or_refuse(address, ray_init, f"{out}/{SPEC_FILE}" if created else None)
            stop.reinstall()
            try:
                stream.write(f"{spec.experiment}: {len(cells)} trials ({'resuming' if resume else 'starting'}; "
                             f"{len(todo)} to run), results in {out}\n")
                summary.parts, summary.unwritten = tune_cells(spec, todo, len(cells), run_id, stop, stream,
                                                              trainable_fn or trainable)
            finally:
                if owns_ray:
                    stop_ray()
        compacting = time.time()
        compacted = compact_results(out, spec, summary.unwritten)
        summary.written, status = compacted.paths, compacted.status
        summary.compact_s = time.time() - compacting
        ids = [c.trial_id() for c in cells]
        summary.ok = sum(status.get(i) == "ok" for i in ids)
        summary.failed = sum(i in status and status[i] != "ok" for i in ids)
        summary.missing = len(ids) - summary.ok - summary.failed
        summary.wall_s = time.time() - started
        summary.signal = SignalStop.signum
    return summary


def _start_ray_or_refuse(address: str | None, ray_init: Mapping[str, Any] | None, created_spec: str | None) -> bool:
    """start_ray, with its refusals as one SpecError line; the saved spec this run created (if any) is removed
    first, so a run that never started leaves nothing that would block the next. Returns whether Ray is ours."""
    try:
        return start_ray(address, **dict(ray_init or {}))
    except BaseException as exc:
        if created_spec is not None:
            delete_path(created_spec)
        if isinstance(exc, (ConnectionError, RuntimeError, ValueError)):  # ray.init's refusals
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SpecError(f"{'--address' if address else 'ray'}: Ray did not start or connect ({reason})") from None
        raise


@contextlib.contextmanager
def _quiet_result_grid() -> Iterator[None]:
    """Tune's result grid warns once per trial that never started (a FileNotFoundError line each, 24 of them after
    one Ctrl-C): our rows and summary already say which cells did not run and how to resume them."""
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis.level
    analysis.setLevel(logging.ERROR)
    try:
        yield
    finally:
        analysis.setLevel(level)


def tune_cells(spec: ExperimentSpec, todo: list, total: int, run_id: str, stop: SignalStop, stream: TextIO,
               fn: Callable[[dict], None]) -> tuple[int, int]:
    """Runs `todo` with Tune, one Tuner per CHUNK_CELLS cells, rows streamed as they finish; stops between and inside
    chunks on a signal. Returns (Parquet parts written, finished rows that could not be written)."""
    import pyarrow.fs as pafs
    import ray
    from ray import tune

    from orchestrator.shared import start_store

    storage, name = spec.tune_location
    progress = Progress(total, stream, done=total - len(todo))
    results = ResultStream(spec.output_dir, run_id, progress=progress)  # a trial's line once its row is on disk
    try:
        store = start_store(spec.experiment)  # noqa: F841  (the handle keeps the actor alive until the end)
        resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
        filesystem = None
        if is_uri(storage):
            filesystem, storage = pafs.FileSystem.from_uri(storage)
        callbacks = [progress, results,
                     PendingReport(spec.pending_report_s, resources, stream)]
        run = {"experiment": spec.experiment, "run_id": run_id, "gpu_dry_run": spec.gpu_dry_run}
        # Tune keeps as many trials pending as a custom searcher's concurrency limit (1 without one: made for
        # searchers that learn from results). A fixed queue gets what Tune gives grid search.
        limit = spec.max_concurrent_trials or max(200, int(ray.cluster_resources().get("CPU", 1) * 1.1))
        # one Tuner per CHUNK_CELLS cells: Tune holds every trial of a run (config, last result, metric history:
        # ~115 KB each) until it ends, so one Tuner over 10,000 cells grew the driver by 1.1 GB
        for index, start in enumerate(range(0, len(todo), CHUNK_CELLS)):
            if stop.stop_all():
                break
            chunk = todo[start:start + CHUNK_CELLS]
            run_config = tune.RunConfig(
                name=f"chunk-{index:03d}", storage_path=f"{storage.rstrip('/')}/{name}/{run_id}",
                storage_filesystem=filesystem, verbose=0, callbacks=callbacks, stop=StopOnSignal(),
                failure_config=tune.FailureConfig(max_failures=spec.max_failures))
            queue = CellQueue([{"cell": c.to_dict(), "run": run} for c in chunk])
            tune_config = tune.TuneConfig(reuse_actors=True, max_concurrent_trials=limit, search_alg=queue,
                                          num_samples=len(chunk))
            stop.tuning = True
            try:
                with _quiet_result_grid():
                    tune.Tuner(tune.with_resources(fn, resources), tune_config=tune_config,
                               run_config=run_config).fit()
            finally:
                stop.tuning = False
    finally:
        results.flush()  # rows buffered when a signal came (a failed write keeps them, and says so)
    return results.parts, len(results.buffer)
