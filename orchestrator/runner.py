"""The Ray Tune runner: one Tune trial per grid cell, shared work through a store actor, rows streamed to storage.

    spec.cells minus the cells that already have a row ──► a Tuner per 1,000 cells (CellQueue, with_resources)
              └─ trainable(config): TrialSpec.from_dict ─► run_trial(spec, shared) ─► tune.report(payload)
    driver callbacks: Progress (a line per trial), ResultStream (a Parquet part per flush), PendingReport
    after the grid: compact parts ──► trials / curves / heads Parquet, config.yaml ──► analyze (if installed)

A trial whose run_trial returns status "failed" reports its failed row, then raises: Tune retries it up
to `max_failures` times, and after the last try the failed row (status, error) is what the results hold.
A trial that died without reporting (worker killed) gets a row built from its config and Tune's error.

Resuming does not restore Tune's state: the stored rows say which cells are done (trials are not checkpointed,
so Tune would re-run an unfinished one from the start anyway). `--resume` compacts what a killed driver left,
checks the config against the saved one (only added cells are allowed), and runs the cells without a row.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, TextIO

from ray.tune import Callback, Stopper
from ray.tune.search import Searcher

from orchestrator import watchdog
from orchestrator.analyze.load import strategy_label
from orchestrator.results import compact, finished_trials, write_part
from orchestrator.spec import ExperimentSpec, SpecError
from orchestrator.storage import filesystem, is_uri, read_text, write_bytes
from sentinel.trial import failed_row

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
    cell = config["cell"]
    try:
        device, context["device_assigned"] = choose_device(
            cell.get("device", "auto"), gpu_ids, torch.cuda.is_available(), run.get("gpu_dry_run", False))
        result = run_trial(TrialSpec.from_dict(cell), shared, device=device)
        payload = {"row": result.row(), "curve": result.curve, "scores": result.scores}
    except Exception as exc:  # the spec itself was refused (or no device): still one failed row
        payload = {"row": failed_row(cell, f"{type(exc).__name__}: {exc}"), "curve": [], "scores": []}
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


# ------------------------------------------------------------------------------------------- progress


class Progress(Callback):
    """One line per finished trial with its key metric; Tune's own table is off (verbose=0).

    Tune pickles its callbacks with the experiment; the stream is not pickled (None = sys.stdout).
    """

    def __init__(self, total: int, stream: TextIO | None = None, done: int = 0) -> None:
        self.total = total
        self.stream = stream
        self.done = done  # cells finished by earlier runs of this experiment
        self.last: dict[str, dict] = {}
        self.started = time.time()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "stream": None, "last": {}}

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def _line(self, trial, note: str) -> None:
        self.done += 1
        self._write(f"[{self.done}/{self.total}] {_cell_name(trial)}: {note} ({time.time() - self.started:.0f}s)")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info):
        row = _payload(self.last.pop(trial.trial_id, None)).get("row", {})
        note = "done"
        if row.get("status") == "ok":
            arrow = f"{row['dense']:.4g} -> {row['pruned']:.4g} -> {row['recovered']:.4g}"
            reused = ",".join(k.removeprefix("reused_") for k, v in row.items() if k.startswith("reused_") and v) or "nothing"
            note = f"{row['metric_name']} dense -> pruned -> recovered {arrow} (reused {reused})"
        self._line(trial, note)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._write(f"[retry] {_cell_name(trial)}: {_error_line(trial)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.last.pop(trial.trial_id, None)
        self._line(trial, f"FAILED: {_error_line(trial)}")


def _payload(result: Mapping[str, Any] | None) -> dict[str, Any]:
    return json.loads((result or {}).get("payload") or "{}")


class ResultStream(Callback):
    """Writes finished trials' rows to storage as they end, so a killed driver loses no finished row.

    Rows are buffered for at most `flush_s` seconds (a part per flush, not per trial, keeps a 10,000-cell grid
    at a few hundred files); `on_step_end` runs every loop of Tune's driver, so a buffered row waits no longer.
    """

    def __init__(self, output_dir: str, run_id: str, flush_s: float = 0.5) -> None:
        self.output_dir, self.run_id, self.flush_s = output_dir, run_id, flush_s
        self.buffer: list[dict] = []
        self.parts = 0
        self.write_failed = False
        self.flushed_at = time.time()
        self.last: dict[str, dict] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "buffer": [], "last": {}}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info):
        payload = _payload(self.last.pop(trial.trial_id, None))
        if payload:
            self._add(payload)
        # Tune keeps (and checkpoints) every trial's last result until the run ends; the row is ours to keep now,
        # so a 10,000-cell grid does not hold every row twice in the driver
        (trial.last_result or {}).pop("payload", None)

    def on_trial_error(self, iteration, trials, trial, **info):
        payload = _payload(self.last.pop(trial.trial_id, None))
        (trial.last_result or {}).pop("payload", None)
        if not payload:  # died without reporting (a killed worker): a failed row from its config and Tune's error
            payload = {"row": failed_row(trial.config["cell"], f"TuneError: {tune_error(trial)}"),
                       "curve": [], "scores": [],
                       "context": {"experiment": trial.config["run"]["experiment"], "run_id": self.run_id}}
        self._add(payload)

    def on_step_end(self, iteration, trials, **info):
        if self.buffer and time.time() - self.flushed_at >= self.flush_s:
            self.flush()

    def on_experiment_end(self, trials, **info):
        self.flush()

    def _add(self, payload: dict) -> None:
        self.buffer.append(payload)
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
            self.buffer = []
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
    label = strategy_label(cell["strategy"], cell.get("strategy_options") or {}, cell.get("compensate") is True)
    return f"{cell['model']} {label} level={cell['level']} seed={cell['seed']}"


def _error_line(trial) -> str:
    payload = getattr(trial, "last_result", {}).get("payload")
    if payload:
        error = json.loads(payload)["row"].get("error") or ""
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


# --------------------------------------------------------------------------------------------- driver


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
SPEC_FILE = "sentinel_spec.json"  # the resolved spec, beside the results: what --resume compares against


LOCK_FILE = ".sentinel.lock"  # held by the run writing into an output folder (created exclusively)


def prepare(spec: ExperimentSpec, resume: bool, overwrite: bool, run_id: str) -> bool:
    """Checks the results folder against --resume/--overwrite before Ray starts, and records the spec.

    --resume refuses a config that differs from the saved one, with one line naming what changed, unless the
    change only adds cells (more seeds, levels, strategies or models): the finished cells stay, the new ones
    run. Anything else would mix two experiments in one table.

    --overwrite deletes only what this experiment wrote: the tables and parts of a folder that holds its saved
    spec, and the Tune folders of the runs that spec records. A folder with tables but no saved spec (written
    by something else) is refused, never deleted; so is a Tune folder no recorded run made.

    Returns:
        whether the saved spec is new (this run created it: the caller removes it if nothing then ran).
    """
    out = spec.output_dir
    saved_text = read_text(f"{out}/{SPEC_FILE}")
    saved = _saved_spec(saved_text, out) if saved_text is not None else None
    exists = saved is not None or finished_trials(out).num_rows > 0
    if resume and not exists:
        raise SpecError(f"--resume: no experiment at {out!r} to resume; run without --resume")
    if resume and saved is not None:
        _check_resumable(saved, spec)
    runs = list(saved.get("runs", [])) if saved and resume else []
    if exists and not resume:
        if not overwrite:
            raise SpecError(f"experiment: {spec.experiment!r} already has results at {out!r}; "
                            "pass --resume to continue it or --overwrite to start again")
        if saved is None:
            raise SpecError(f"--overwrite: {out!r} holds result tables that no sentinel-bench run recorded "
                            f"(no {SPEC_FILE}); they are not deleted: move them, or choose another output")
        _delete_results(out)
        storage, name = spec.tune_location
        for run in saved.get("runs", []):  # Tune state of the runs this experiment made, nothing else
            if isinstance(run, str) and run.startswith(f"{spec.experiment}-") and "/" not in run:
                _delete(f"{storage.rstrip('/')}/{name}/{run}", folder=True)
    saved_spec = {"spec": spec.to_dict(), "cells": [c.to_dict() for c in spec.cells], "runs": runs + [run_id]}
    write_bytes(f"{out}/{SPEC_FILE}", json.dumps(saved_spec, sort_keys=True, default=str).encode())
    return saved is None


def _saved_spec(text: str, out: str) -> dict[str, Any]:
    try:
        saved = json.loads(text)
    except json.JSONDecodeError:
        saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get("spec"), dict) or not isinstance(saved.get("cells"), list):
        raise SpecError(f"output: {out}/{SPEC_FILE} is not a saved experiment spec; not touching {out!r}: "
                        "move it, or choose another output")
    return saved


def _delete_results(out: str) -> None:
    """What --overwrite replaces: the tables, their parts, the saved spec (an `analysis/` folder is rewritten later)."""
    _delete(f"{out}/parts", folder=True)
    for name in ("trials.parquet", "curves.parquet", "heads.parquet", "config.yaml", SPEC_FILE):
        _delete(f"{out}/{name}")


def _delete(path: str, folder: bool = False) -> None:
    fs, inner = filesystem(path)
    try:
        fs.delete_dir(inner) if folder else fs.delete_file(inner)
    except (FileNotFoundError, OSError):
        pass


@contextlib.contextmanager
def output_lock(out: str) -> Iterator[None]:
    """Holds `<out>/.sentinel.lock`, created exclusively, while a run writes into `out`: a second run into the
    same folder is refused before Ray starts. A lock left by a process of this host that is gone is taken
    over. Object stores have no exclusive create: for s3:// and other URIs there is no lock (docs/SECURITY.md)."""
    if is_uri(out):
        yield
        return
    created = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK_FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is None:  # its process is gone: a stale lock
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            raise SpecError(f"output: another run (pid {holder.get('pid')} on {holder.get('host')}, since "
                            f"{holder.get('since')}) is writing to {out!r}; wait for it to end, or use another "
                            "output or experiment name") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise SpecError(f"output: could not take the lock {path!r}; another run is starting there")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out)  # only if empty: a run refused before writing leaves nothing behind


def _lock_holder(path: str) -> dict[str, Any] | None:
    """Who holds the lock, or None when it is stale (its process on this host is gone, or the file is unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.load(f)
        pid = int(holder["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        try:  # a lock another run created an instant ago may not hold its JSON yet: young means held
            young = time.time() - os.path.getmtime(path) < 10
        except OSError:
            young = False
        return {"pid": "?", "host": "?", "since": "a moment ago"} if young else None
    if holder.get("host") != socket.gethostname():
        return holder  # another host's process: cannot tell, so it holds
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return holder


def _check_resumable(saved: dict[str, Any], spec: ExperimentSpec) -> None:
    """A SpecError naming the changed fields (`finetune.steps`, ...) unless `spec` only adds cells to the saved one."""
    current = json.loads(json.dumps(spec.to_dict(), sort_keys=True, default=str))
    changed = _changed_fields(saved["spec"], current)
    if not changed:
        return
    old_cells = {json.dumps(c, sort_keys=True, default=str) for c in saved["cells"]}
    new_cells = {json.dumps(c.to_dict(), sort_keys=True, default=str) for c in spec.cells}
    if old_cells <= new_cells:
        return  # more seeds, levels, strategies or models: every finished cell is still a cell of this grid
    raise SpecError(f"--resume: the config changed since the experiment started ({', '.join(changed)}); "
                    "resume with the original config, add cells only, or start again with --overwrite")


def _changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [field for key in sorted(set(old) | set(new))
                for field in _changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []


CONNECT_TIMEOUT_S = 5.0  # a Ray address that does not accept a connection within this is refused


def check_address(address: str | None) -> None:
    """Refuses, before anything is written, a Ray address `run` cannot use: --address, else RAY_ADDRESS (which
    ray.init reads too). A job server URL (http://HEAD:8265) is `submit`'s, not `run`'s; host:port and
    ray://host:port must accept a TCP connection within CONNECT_TIMEOUT_S (ray.init would wait much longer)."""
    from urllib.parse import urlparse

    given, field = (address, "--address") if address else (os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS")
    if not given or given in ("auto", "local"):
        return
    parsed = urlparse(given if "://" in given else f"tcp://{given}")
    if parsed.scheme in ("http", "https"):
        raise SpecError(f"{field}: {given!r} is a job server URL; submit jobs to it with `sentinel-bench submit`, "
                        "or give run the cluster's GCS address (HOST:6379, ray://HOST:10001 or auto)")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme not in ("tcp", "ray") or not parsed.hostname or port is None:
        raise SpecError(f"{field}: {given!r} is not a Ray address; expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)
        raise SpecError(f"{field}: no Ray cluster answers at {given!r} ({reason}); is it up (`ray status`)?") from None


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
    before = set(watchdog.children_of_this_process())
    ray.init(address=address, **kwargs)
    if address is None:  # a local Ray is this driver's: it stops with it, even after a SIGKILL
        global _WATCHDOG
        _WATCHDOG = watchdog.start([p for p in watchdog.children_of_this_process() if p not in before])
    return True


_WATCHDOG = None


def stop_ray() -> None:
    """ray.shutdown(), then the watchdog of a local Ray ends whatever outlived it."""
    import ray

    global _WATCHDOG
    ray.shutdown()
    watchdog.stop(_WATCHDOG)
    _WATCHDOG = None


class Interrupted(KeyboardInterrupt):
    """A stop signal outside Tune's loop (or a second one): the run ends now; `signum` says which signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalStop:
    """SIGINT (Ctrl-C) and SIGTERM (what a batch scheduler sends) stop a grid the same way, through Tune's public
    Stopper (`StopOnSignal`): the running trials end, every finished row is written, the summary says which signal
    came. A second signal, or one outside Tune's loop, raises `Interrupted` at once."""

    _received = threading.Event()  # class-level: the stopper Tune holds (and pickles) reads it
    signum: int | None = None

    def __enter__(self) -> SignalStop:
        SignalStop._received.clear()
        SignalStop.signum = None
        self.tuning = False
        self.saved = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self.saved = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def reinstall(self) -> None:
        """After ray.init: Ray's core installs its own SIGTERM handler (a stack dump, then exit 1) over ours."""
        for signum in self.saved:
            signal.signal(signum, self._handle)

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        first = not SignalStop._received.is_set()
        SignalStop.signum = SignalStop.signum or signum
        SignalStop._received.set()
        if not (first and self.tuning):
            raise Interrupted(SignalStop.signum)

    def stop_all(self) -> bool:
        return SignalStop._received.is_set()


class StopOnSignal(Stopper):
    """Tune's view of SignalStop: no state of its own (Tune pickles its stopper with the experiment)."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return SignalStop._received.is_set()


class ResultsWriteError(OSError):
    """The final tables could not be written; the finished rows are kept in parts (the message says where)."""


def _compact(out: str, spec: ExperimentSpec, unwritten: int = 0) -> dict[str, str]:
    """compact(), with a failed write said in one line: the parts are deleted only after every table is written,
    so the rows stay where they are and --resume picks them up."""
    try:
        return compact(out, spec.to_dict())
    except OSError as exc:
        lost = f"; {unwritten} finished row(s) could not be written at all" if unwritten else ""
        raise ResultsWriteError(
            f"results: could not write the tables in {out} ({exc.strerror or type(exc).__name__}); the rows "
            f"already streamed are kept in {out}/parts{lost}: make the folder writable and rerun with --resume"
        ) from None


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
    """Runs (or resumes) the experiment's grid with Ray Tune, streaming rows to storage, then compacts them.

    Args:
        spec: the validated experiment.
        address: an existing Ray cluster ("auto", "ray://host:10001", ...); None starts a local one.
        resume: continue the experiment stored under its output folder; cells with a row are not run again.
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

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # the progress line and the row carry the error
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SignalStop handles Ctrl-C and SIGTERM alike
    out = spec.output_dir
    run_id = f"{spec.experiment}-{uuid.uuid4().hex[:8]}"
    with output_lock(out), SignalStop() as stop:
        created = prepare(spec, resume, overwrite, run_id)
        cells = spec.cells
        if resume:
            _compact(out, spec)  # what a killed driver left in parts becomes the table the cells are read from
        done = set(finished_trials(out).column("trial_id").to_pylist())
        todo = [c for c in cells if c.trial_id() not in done]
        storage, name = spec.tune_location
        summary = RunSummary(f"{storage.rstrip('/')}/{name}/{run_id}", out, total=len(cells))
        started = time.time()
        if todo:
            try:
                owns_ray = start_ray(address, **dict(ray_init or {}))
            except BaseException as exc:
                if created:  # nothing ran: leave no saved spec that would block the next run
                    _delete(f"{out}/{SPEC_FILE}")
                if isinstance(exc, (ConnectionError, RuntimeError, ValueError)):  # ray.init's refusals
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise SpecError(f"{'--address' if address else 'ray'}: Ray did not start or connect ({reason})") from None
                raise
            stop.reinstall()
            results = ResultStream(out, run_id)
            try:
                store = start_store(spec.experiment)  # noqa: F841  (the handle keeps the actor alive until the end)
                resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
                fn = tune.with_resources(trainable_fn or trainable, resources)
                filesystem = None
                if is_uri(storage):
                    filesystem, storage = pafs.FileSystem.from_uri(storage)
                callbacks = [Progress(len(cells), stream, done=len(cells) - len(todo)), results,
                             PendingReport(spec.pending_report_s, resources, stream)]
                run = {"experiment": spec.experiment, "run_id": run_id, "gpu_dry_run": spec.gpu_dry_run}
                # Tune keeps as many trials pending as a custom searcher's concurrency limit (1 without one: made
                # for searchers that learn from results). A fixed queue gets what Tune gives grid search.
                limit = spec.max_concurrent_trials or max(200, int(ray.cluster_resources().get("CPU", 1) * 1.1))
                verb = "resuming" if resume else "starting"
                stream.write(f"{spec.experiment}: {len(cells)} trials ({verb}; {len(todo)} to run), results in {out}\n")
                # one Tuner per CHUNK_CELLS cells: Tune holds every trial of a run (config, last result, metric
                # history: ~115 KB each) until it ends, so one Tuner over 10,000 cells grew the driver by 1.1 GB
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
                        tune.Tuner(fn, tune_config=tune_config, run_config=run_config).fit()
                    finally:
                        stop.tuning = False
            finally:
                results.flush()  # rows buffered when a signal came (a failed write keeps them, and says so)
                summary.parts, summary.unwritten = results.parts, len(results.buffer)
                if owns_ray:
                    stop_ray()
        compacting = time.time()
        summary.written = _compact(out, spec, summary.unwritten)
        summary.compact_s = time.time() - compacting
        rows = finished_trials(out).select(["trial_id", "status"]).to_pylist()
        status = {r["trial_id"]: r["status"] for r in rows}
        ids = [c.trial_id() for c in cells]
        summary.ok = sum(status.get(i) == "ok" for i in ids)
        summary.failed = sum(i in status and status[i] != "ok" for i in ids)
        summary.missing = len(ids) - summary.ok - summary.failed
        summary.wall_s = time.time() - started
        summary.signal = SignalStop.signum
    return summary
