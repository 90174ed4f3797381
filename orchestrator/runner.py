"""The Ray Tune runner: one Tune trial per grid cell, shared work through a store actor, Parquet at the end.

    spec ──► Tuner(grid_search over cells, with_resources, FailureConfig, reuse_actors) ──► ResultGrid
              └─ trainable(config): TrialSpec.from_dict ─► run_trial(spec, shared) ─► tune.report(payload)
    ResultGrid (+ errored trials) ──► trials / curves / heads Parquet, config.yaml ──► analyze (if installed)

A trial whose run_trial returns status "failed" reports its failed row, then raises: Tune retries it up
to `max_failures` times, and after the last try the failed row (status, error) is what the results hold.
A trial that died without reporting (worker killed) gets a row built from its config and Tune's error.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TextIO

from ray.tune import Callback

from orchestrator.results import write_bytes, write_results
from orchestrator.spec import ExperimentSpec, SpecError, _is_uri

# Experiment state is saved at most this often (Tune's default is >= 10 s); a short period means a killed
# driver loses at most the last second of finished trials. Local state files are small.
CHECKPOINT_PERIOD_S = "1"


# Tune runs each trial's function in a new thread, and glibc gives each thread its own malloc arena: the GBs a
# trial freed (a model copy, its gradients, AdamW state) were not reused by the next trial's thread, so a worker's
# RSS grew ~1 GB per SmolLM2 trial and every trial paid fresh page faults (fine-tuning 6.5 s in a plain process,
# 8.5-11 s in Tune). One arena, and a collection after each trial, keep both flat (6.0-6.6 s, RSS 3.5 GB).
WORKER_ENV = {"MALLOC_ARENA_MAX": "1"}


class TrialFailed(RuntimeError):
    """Raised by the trainable after reporting a failed row, so FailureConfig retries the trial."""


# -------------------------------------------------------------------------------------------- trainable


def choose_device(requested: str, gpu_ids: list, cuda_available: bool, dry_run: bool) -> tuple[str, str]:
    """The device a trial runs on, from what Ray assigned it.

    Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so "cuda" inside the trial is its own GPU (or GPU
    share). A trial without an assigned GPU never touches one, even with device "auto".

    Args:
        requested: the spec's device ("cpu", "cuda" or "auto").
        gpu_ids: ray.get_gpu_ids() inside the trial.
        cuda_available: torch.cuda.is_available() inside the trial.
        dry_run: with GPUs assigned but no CUDA (logical GPUs), run on CPU instead of failing.
    Returns:
        (device to run on, device Ray's assignment calls for: "cuda" or "cpu").
    """
    if requested == "cpu" or not gpu_ids:
        if requested == "cuda":
            raise TrialFailed("device 'cuda' was requested but Ray assigned this trial no GPU (resources.gpu)")
        return "cpu", "cpu"
    if cuda_available:
        return "cuda", "cuda"
    if dry_run:
        return "cpu", "cuda"
    raise TrialFailed(f"Ray assigned GPU(s) {gpu_ids} but CUDA is not available in this worker "
                      "(set gpu_dry_run: true to run on CPU with logical GPUs)")


def trainable(config: dict[str, Any]) -> None:
    """One grid cell as a Tune function trainable. `config` = {"cell": TrialSpec dict, "run": context}."""
    import ray
    import torch
    from ray import tune

    from orchestrator.shared import RayShared
    from sentinel.pipeline import TrialSpec, run_trial

    run = config["run"]
    tune_trial_id = tune.get_context().get_trial_id()
    started = time.time()
    shared = RayShared(run["experiment"], owner=tune_trial_id)
    attempts = shared.count(f"attempts/{tune_trial_id}")
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    context = {
        "experiment": run["experiment"], "run_id": run["run_id"], "tune_trial_id": tune_trial_id,
        "attempts": attempts, "ray_version": ray.__version__, "gpu_ids": ",".join(gpu_ids),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "ray_node_id": ray.get_runtime_context().get_node_id(),  # tells apart Ray nodes that share a host
    }
    cell = dict(config["cell"])
    try:
        cell["device"], context["device_assigned"] = choose_device(
            cell.get("device", "auto"), gpu_ids, torch.cuda.is_available(), run.get("gpu_dry_run", False))
        result = run_trial(TrialSpec.from_dict(cell), shared)
        payload = {"row": result.row(), "curve": result.curve, "scores": result.scores}
    except Exception as exc:  # the spec itself was refused (or no device): still one failed row
        payload = {"row": failed_row(config["cell"], f"{type(exc).__name__}: {exc}"), "curve": [], "scores": []}
    finally:
        shared.close()
        gc.collect()  # the trial's model copies go now, not at some later allocation (see WORKER_ENV)
    context["started_at"], context["finished_at"] = int(started * 1000), int(time.time() * 1000)
    payload["context"] = context
    row = payload["row"]
    tune.report({"status": row["status"], "metric_name": row.get("metric_name", ""),
                 "recovered": row.get("recovered"), "payload": json.dumps(payload, default=str)})
    if row["status"] != "ok":
        raise TrialFailed(row["error"].splitlines()[0] if row["error"] else "trial failed")


def failed_row(cell: Mapping[str, Any], error: str) -> dict[str, Any]:
    """A `trials` row for a cell that produced no TrialResult (refused spec, dead worker)."""
    try:
        from sentinel.pipeline import TrialSpec

        spec = TrialSpec.from_dict(cell)
        trial_id, spec_json = spec.trial_id(), json.dumps(spec.to_dict(), sort_keys=True)
    except Exception:  # the cell itself is what failed: identify it by its raw JSON
        import hashlib

        spec_json = json.dumps(cell, sort_keys=True, default=str)
        trial_id = hashlib.sha256(spec_json.encode()).hexdigest()[:12]
    return {
        "trial_id": trial_id, "model": cell["model"], "strategy": cell["strategy"], "level": float(cell["level"]),
        "seed": int(cell["seed"]), "method": cell.get("method"), "policy": cell.get("policy"),
        "strategy_options": json.dumps(dict(cell.get("strategy_options") or {}), sort_keys=True),
        "spec": spec_json, "status": "failed", "error": error,
    }


# ------------------------------------------------------------------------------------------- progress


class Progress(Callback):
    """One line per finished trial with its key metric; Tune's own table is off (verbose=0).

    Tune pickles its callbacks with the experiment; the stream is not pickled (None = sys.stdout).
    """

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream
        self.last: dict[str, dict] = {}
        self.finished: set[str] | None = None
        self.started = time.time()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "stream": None, "last": {}, "finished": None}

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def _line(self, trials, trial, note: str) -> None:
        if self.finished is None:  # first event: count trials already finished (a resumed experiment)
            self.finished = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        self.finished.add(trial.trial_id)
        done = len(self.finished)
        self._write(f"[{done}/{self.total}] {_cell_name(trial)}: {note} ({time.time() - self.started:.0f}s)")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info):
        payload = json.loads(self.last.get(trial.trial_id, {}).get("payload", "{}") or "{}")
        row = payload.get("row", {})
        note = "done"
        if row.get("status") == "ok":
            arrow = f"{row['dense']:.4g} -> {row['pruned']:.4g} -> {row['recovered']:.4g}"
            reused = ",".join(k for k, v in (row.get("reused") or {}).items() if v) or "nothing"
            note = f"{row['metric_name']} dense -> pruned -> recovered {arrow} (reused {reused})"
        self._line(trials, trial, note)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._write(f"[retry] {_cell_name(trial)}: {_error_line(trial)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial, f"FAILED: {_error_line(trial)}")


def _cell_name(trial) -> str:
    cell = trial.config["cell"]
    return f"{cell['model']} {cell['strategy']} level={cell['level']} seed={cell['seed']}"


def _error_line(trial) -> str:
    payload = getattr(trial, "last_result", {}).get("payload")
    if payload:
        error = json.loads(payload)["row"].get("error") or ""
        return error.splitlines()[0] if error else "failed"
    return "worker error (see the trial's error file)"


# --------------------------------------------------------------------------------------------- driver


@dataclass
class RunSummary:
    experiment_path: str  # Tune state (for --resume)
    output_dir: str  # Parquet tables
    total: int
    ok: int = 0
    failed: int = 0
    missing: int = 0  # trials that did not finish (interrupted); --resume runs them
    wall_s: float = 0.0
    written: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.missing == 0


SPEC_FILE = "sentinel_spec.json"  # the resolved spec, next to Tune's state: what --resume compares against


def prepare(spec: ExperimentSpec, resume: bool, overwrite: bool) -> str:
    """Checks the Tune state folder against --resume/--overwrite before Ray starts. Returns its path.

    A fresh start records the resolved spec in the folder; --resume refuses a spec that differs from it, with
    one line naming what changed: the saved grid and the new config would otherwise mix in one result.
    """
    from ray.tune import Tuner

    storage, name = spec.tune_location
    path = storage.rstrip("/") + "/" + name
    exists = Tuner.can_restore(path)
    if resume and not exists:
        raise SpecError(f"--resume: no experiment state at {path!r} to resume; run without --resume")
    if resume:
        saved = _read_text(f"{path}/{SPEC_FILE}")
        if saved is not None:  # experiments started before the file existed resume as they are
            _check_unchanged(json.loads(saved), spec)
        return path
    if exists:
        if not overwrite:
            raise SpecError(f"experiment: {spec.experiment!r} already has results at {path!r}; "
                            "pass --resume to continue it or --overwrite to start again")
        if _is_uri(path):
            import pyarrow.fs as pafs

            fs, inner = pafs.FileSystem.from_uri(path)
            fs.delete_dir(inner)
        else:
            shutil.rmtree(path)
    saved = {"spec": spec.to_dict(), "cells": spec.cells()}
    write_bytes(f"{path}/{SPEC_FILE}", json.dumps(saved, sort_keys=True, default=str).encode())
    return path


def _read_text(path: str) -> str | None:
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(path) if _is_uri(path) else (pafs.LocalFileSystem(), path)
    try:
        with fs.open_input_stream(inner) as f:
            return f.read().decode()
    except (FileNotFoundError, OSError):
        return None


def _check_unchanged(saved: dict[str, Any], spec: ExperimentSpec) -> None:
    """A SpecError naming the changed fields (`finetune.steps`, `levels`, ...) if `spec` is not the saved one."""
    current = json.loads(json.dumps(spec.to_dict(), sort_keys=True, default=str))
    changed = _changed_fields(saved["spec"], current)
    if not changed:
        return
    old_cells = {json.dumps(c, sort_keys=True, default=str) for c in saved["cells"]}
    new_cells = {json.dumps(c, sort_keys=True, default=str) for c in spec.cells()}
    if old_cells < new_cells:
        raise SpecError(f"--resume: the config adds {len(new_cells - old_cells)} cell(s) ({', '.join(changed)}), "
                        "and a saved Tune grid cannot grow; run them as a new experiment (another `experiment:` "
                        "name) and analyze both result folders together")
    raise SpecError(f"--resume: the config changed since the experiment started ({', '.join(changed)}); "
                    "resume with the original config, or start again with --overwrite")


def _changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [field for key in sorted(set(old) | set(new))
                for field in _changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []


def start_ray(address: str | None = None, **init_kwargs: Any) -> bool:
    """Starts a local Ray (dashboard off, bound to 127.0.0.1) or connects to `address`.

    Returns:
        True if this call started or connected Ray (and so should shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
                              "logging_level": "WARNING"}
    if address is None:
        kwargs["_node_ip_address"] = "127.0.0.1"
        os.environ.setdefault("MALLOC_ARENA_MAX", WORKER_ENV["MALLOC_ARENA_MAX"])  # the local raylet's workers inherit it
    else:
        kwargs["runtime_env"] = {"env_vars": dict(WORKER_ENV)}
    kwargs.update(init_kwargs)
    ray.init(address=address, **kwargs)
    return True


def run_experiment(
    spec: ExperimentSpec,
    *,
    address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    trainable_fn: Callable[[dict], None] | None = None,
    ray_init: Mapping[str, Any] | None = None,
    stream: TextIO = sys.stdout,
) -> RunSummary:
    """Runs (or resumes) the experiment's grid with Ray Tune and writes the Parquet tables.

    Args:
        spec: the validated experiment.
        address: an existing Ray cluster ("auto", "ray://host:10001", ...); None starts a local one.
        resume: continue the experiment saved under its storage path; finished trials are not re-run.
        overwrite: delete a previous experiment of the same name instead of refusing to start.
        trainable_fn: replaces `trainable` (tests wrap it to observe concurrency).
        ray_init: extra ray.init arguments (tests: num_cpus, num_gpus).
        stream: where progress lines go.
    Returns:
        A RunSummary (paths, counts of ok / failed / missing trials).
    """
    import pyarrow.fs as pafs
    import ray
    from ray import tune

    from orchestrator.shared import start_store

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", CHECKPOINT_PERIOD_S)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # the progress line and the row carry the error  # the verbose=0 path prints nothing per iteration
    path = prepare(spec, resume, overwrite)
    cells = spec.cells()
    summary = RunSummary(path, spec.output_dir, total=len(cells))
    started = time.time()
    owns_ray = start_ray(address, **dict(ray_init or {}))
    try:
        store = start_store(spec.experiment)  # noqa: F841  (the handle keeps the actor alive until the end)
        resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
        fn = tune.with_resources(trainable_fn or trainable, resources)
        storage, name = spec.tune_location
        filesystem = None
        if _is_uri(storage):
            filesystem, storage = pafs.FileSystem.from_uri(storage)
        run_config = tune.RunConfig(
            name=name, storage_path=storage, storage_filesystem=filesystem, verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[Progress(len(cells), stream)],
        )
        if resume:
            tuner = tune.Tuner.restore(path, trainable=fn, resume_errored=False, restart_errored=False,
                                       param_space=None)
            # the restored run config holds the pickled callbacks; give the progress printer this stream
            tuner._local_tuner.get_run_config().callbacks = run_config.callbacks
        else:
            param_space = {
                "cell": tune.grid_search(cells),
                "run": {"experiment": spec.experiment, "run_id": f"{spec.experiment}-{uuid.uuid4().hex[:8]}",
                        "gpu_dry_run": spec.gpu_dry_run},
            }
            tune_config = tune.TuneConfig(reuse_actors=True, max_concurrent_trials=spec.max_concurrent_trials)
            tuner = tune.Tuner(fn, param_space=param_space, tune_config=tune_config, run_config=run_config)
        stream.write(f"{spec.experiment}: {len(cells)} trials ({'resuming' if resume else 'starting'}), "
                     f"state in {path}\n")
        grid = tuner.fit()
        payloads = collect(grid)
    finally:
        if owns_ray:
            ray.shutdown()
    summary.ok = sum(p["row"]["status"] == "ok" for p in payloads)
    summary.failed = len(payloads) - summary.ok
    summary.missing = len(cells) - len(payloads)
    summary.written = write_results(spec.output_dir, payloads, spec.to_dict())
    summary.wall_s = time.time() - started
    return summary


def collect(grid) -> list[dict[str, Any]]:
    """Trial payloads from a ResultGrid: what each finished trial reported, or a failed row from its error.

    Trials that never ran to an end (an interrupted experiment) are left out: --resume runs them.
    """
    payloads = []
    for result in grid:
        reported = (result.metrics or {}).get("payload")
        if reported:
            payload = json.loads(reported)
            if result.error is not None and payload["row"]["status"] == "ok":
                continue  # reported ok, then crashed while finishing; not a result we can trust
            payloads.append(payload)
        elif result.error is not None:
            cell, run = result.config["cell"], result.config["run"]
            error = f"{type(result.error).__name__}: {result.error}".strip()
            payload = {"row": failed_row(cell, error), "curve": [], "scores": [],
                       "context": {"experiment": run["experiment"], "run_id": run["run_id"]}}
            payloads.append(payload)
    return payloads
