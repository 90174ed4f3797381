"""What runs inside a Ray worker: one grid cell as a Tune function trainable, and the device it uses.

A trial reports one thing: its TrialRecord as JSON (RECORD_KEY), the form it travels in to the driver's callbacks.
A trial whose run_trial returns status "failed" reports its failed record, then raises (TrialFailed): Tune retries
it up to `max_failures` times, and after the last try the failed row (status, error) is what the results hold.
"""
from __future__ import annotations

import gc
import os
import time
from typing import Any


from sentinel.result import RunContext, TrialRecord
from sentinel.trial import failed_record


# Tune runs each trial's function in a new thread, and glibc gives each thread its own malloc arena: the GBs a
# trial freed (a model copy, its gradients, AdamW state) were not reused by the next trial's thread, so a worker's
# RSS grew ~1 GB per SmolLM2 trial and every trial paid fresh page faults (fine-tuning 6.5 s in a plain process,
# 8.5-11 s in Tune). One arena, and a collection after each trial, keep both flat (6.0-6.6 s, RSS 3.5 GB).
WORKER_ENV = {"MALLOC_ARENA_MAX": "1"}


RECORD_KEY = "record"  # the reported result's key that holds the trial's record (TrialRecord.to_json())


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

    # what is alive as a trial starts (imports, the dense models and data this worker caches, Ray's own objects) is
    # moved out of the collector's reach, so the collection after the trial walks only what the trial made: 0.14 s
    # a trial with tiny models before. A frozen object is never collected again; the caches live as long as the worker
    gc.freeze()
    # torch computes on the CPUs Ray gave the trial (two 1-CPU trials on 2 cores: 1.2-1.6x the throughput of one
    # 2-thread trial, benchmarks/results/machine.md); a speed measurement takes the node's every core (every_core)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))
    run = config["run"]
    tune_trial_id = tune.get_context().get_trial_id()
    started = time.time()
    shared = RayShared(run["experiment"], owner=tune_trial_id)
    attempts = shared.count(f"attempts/{tune_trial_id}")
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    context = RunContext(
        experiment=run["experiment"], run_id=run["run_id"], tune_trial_id=tune_trial_id, attempts=attempts,
        version_ray=ray.__version__, gpu_ids=",".join(gpu_ids),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        ray_node_id=ray.get_runtime_context().get_node_id())
    cell = config["cell"]
    try:
        device, context.device_assigned = choose_device(
            cell.get("device", "auto"), gpu_ids, torch.cuda.is_available(), run.get("gpu_dry_run", False))
        record = TrialRecord.of(run_trial(TrialSpec.from_dict(cell), shared, device=device))
    except Exception as exc:  # the spec itself was refused (or no device): still one failed record
        record = failed_record(cell, f"{type(exc).__name__}: {exc}")
    finally:
        shared.close()
        gc.collect()  # the trial's model copies go now, not at some later allocation (see WORKER_ENV)
    context.started_at, context.finished_at = int(started * 1000), int(time.time() * 1000)
    record.context = context
    row = record.row
    tune.report({"status": row["status"], "metric_name": row.get("metric_name", ""),
                 "recovered": row.get("recovered"), RECORD_KEY: record.to_json()})
    if row["status"] != "ok":
        raise TrialFailed(row["error"].splitlines()[0] if row["error"] else "trial failed")
