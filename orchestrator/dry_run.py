"""`sentinel-bench run CONFIG --dry-run`: what a run would do and about how long it would take here, with nothing
started and nothing written.

The plan is counted from the validated grid: cells per model, the random reference's layouts and how many recover,
the scorings the shared store will compute once (per strategy, seed and calibration draw, as the pipeline keys
them), the distinct layouts evaluated, and whether a whole-split reference is already on disk (sentinel.work_cache).
The estimate rests on a short measurement on this machine, per model: load, one evaluation, one recovery step and
one scoring per strategy, with the threads a trial gets, then the plan's counts times those seconds. It assumes one
trial at a time (trials run by `max_concurrent_trials` at once are divided among them), counts a distinct layout
for every cell of a data-reading strategy (an upper bound: seeds that pick the same heads share an evaluation) and
adds the outside-trial cost of a run (Ray, workers, analysis) measured on the default run.
"""
from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.spec import ExperimentSpec

OUTSIDE_TRIALS_S = 30.0  # Ray's start, workers, Parquet and the analysis: the default run's time outside its trials
SPEED_FORWARDS = 7  # compare_throughput: 3 rounds of dense and pruned, plus a warm-up
SCORED_ONCE = "any"


@dataclass
class ModelPlan:
    name: str
    cells: int = 0
    reference: int = 0
    recovered: int = 0
    steps: int = 0  # recovery steps summed over the recovered cells
    evaluations: int = 0  # distinct pruned evaluations (an upper bound) and the recovery's evaluations
    speed_layouts: int = 0
    scorings: Counter = field(default_factory=Counter)  # strategy -> scorings the shared store computes
    whole_split: str = "not asked"


def plan(spec: ExperimentSpec) -> list[ModelPlan]:
    """What the grid computes, per model, counted as the pipeline's shared-work keys count it."""
    from sentinel.pruning import STRATEGIES

    plans: dict[str, ModelPlan] = {}
    scored: set[tuple] = set()
    layouts: set[tuple] = set()
    for cell in spec.cells:
        p = plans.setdefault(cell.model, ModelPlan(cell.model))
        p.cells += 1
        p.reference += bool(cell.reference)
        strategy = STRATEGIES.get(cell.strategy)
        reads = strategy.uses_data or strategy.uses_seed
        layout = (cell.model, cell.strategy, json.dumps(dict(cell.strategy_options), sort_keys=True), cell.level,
                  cell.seed if reads or cell.reference else SCORED_ONCE, cell.compensate, cell.reference)
        if layout not in layouts:
            layouts.add(layout)
            p.evaluations += 1
            p.speed_layouts += bool(cell.measure_speed)
        if not cell.reference:
            key = (cell.model, cell.strategy, json.dumps(dict(cell.strategy_options), sort_keys=True),
                   cell.seed if reads else SCORED_ONCE)
            if key not in scored:
                scored.add(key)
                p.scorings[cell.strategy] += 1
        if cell.finetune is not None and cell.finetune.steps > 0:
            p.recovered += 1
            p.steps += cell.finetune.steps
            p.evaluations += math.ceil(cell.finetune.steps / cell.finetune.eval_every)
        if cell.data.whole_split_reference:
            p.whole_split = "computed once"
    return list(plans.values())


def measure(spec: ExperimentSpec, p: ModelPlan, threads: int) -> dict[str, Any]:
    """Seconds of one load, evaluation, recovery step, speed forward and scoring per strategy of model `p.name`, and
    whether its whole-split reference is on disk, measured here with `threads` threads."""
    import torch

    from sentinel import work_cache
    from sentinel.eval import resolve_device, throughput
    from sentinel.finetune import finetune
    from sentinel.pipeline import cached_task, load_model
    from sentinel.pruning import score_heads

    torch.set_num_threads(threads)
    cell = next(c for c in spec.cells if c.model == p.name and not c.reference)
    device = resolve_device("cpu" if cell.device == "auto" else cell.device)
    started = time.perf_counter()
    dense, tokenizer = load_model(cell.model, device=str(device), **cell.model_options)
    task = cached_task(dense, cell, tokenizer)
    seconds: dict[str, Any] = {"load": time.perf_counter() - started}
    started = time.perf_counter()
    task.evaluate(dense)
    seconds["evaluate"] = time.perf_counter() - started
    calibration = task.calibration(cell.seed).batches
    seconds["score"] = {}
    for strategy in p.scorings:
        options = next(dict(c.strategy_options) for c in spec.cells if c.model == p.name and c.strategy == strategy)
        started = time.perf_counter()
        score_heads(strategy, dense, calibration, seed=cell.seed, **options)
        seconds["score"][strategy] = time.perf_counter() - started
    recovering = next((c for c in spec.cells if c.model == p.name and c.finetune is not None), None)
    if recovering is not None:
        config = replace(recovering.finetune, steps=2, warmup_steps=0, eval_every=2)
        started = time.perf_counter()
        finetune(copy.deepcopy(dense), task.train_batches(config.batch_size), config, teacher=task.teacher,
                 initial_metric=0.0, evaluate=None)
        seconds["step"] = (time.perf_counter() - started) / 2
    started = time.perf_counter()
    throughput(dense, seq_len=cell.data.seq_len, batch_size=cell.data.batch_size, warmup=0, iters=1, device=device)
    seconds["speed_forward"] = time.perf_counter() - started
    if cell.data.whole_split_reference:
        key = work_cache.key_of("whole-split", weights=work_cache.weights_digest(dense), protocol=task.full_key,
                                device=str(device), options=cell.model_options)
        found = work_cache.lookup(key)
        p.whole_split = f"on disk ({found[1]['from']})" if found else "computed once"
        seconds["whole_split"] = 0.0 if found else seconds["evaluate"] * task.full_share
    return seconds


def estimate(spec: ExperimentSpec, plans: list[ModelPlan], timings: dict[str, dict]) -> float:
    """Seconds for the whole run: every model's plan times its measured seconds, plus a run's outside-trial cost."""
    total = 0.0
    for p in plans:
        t = timings[p.name]
        total += t["load"] + t.get("whole_split", 0.0) + t["evaluate"]  # the dense model, once per worker
        total += p.evaluations * t["evaluate"] + p.steps * t.get("step", 0.0)
        total += sum(count * t["score"].get(strategy, 0.0) for strategy, count in p.scorings.items())
        total += p.speed_layouts * SPEED_FORWARDS * t["speed_forward"]
    concurrent = max(1, spec.max_concurrent_trials or 1)
    return total / concurrent + OUTSIDE_TRIALS_S


def describe(spec: ExperimentSpec, plans: list[ModelPlan], timings: dict[str, dict] | None,
             seconds: float | None) -> list[str]:
    lines = [f"{spec.experiment}: {sum(p.cells for p in plans)} cells, {len(spec.levels)} level(s) x "
             f"{len(spec.seeds)} seed(s); output {spec.output_dir} (dry run: nothing started, nothing written)"]
    for p in plans:
        scorings = ", ".join(f"{s} x{n}" for s, n in sorted(p.scorings.items()))
        lines.append(f"  {p.name}: {p.cells - p.reference} strategy cells + {p.reference} random-reference layouts; "
                     f"{p.recovered} recovered ({p.steps} steps in all); scorings: {scorings or 'none'}; "
                     f"whole-split reference: {p.whole_split}")
        if timings is not None:
            t = timings[p.name]
            parts = [f"load {t['load']:.1f}", f"evaluation {t['evaluate']:.2f}"]
            parts += [f"recovery step {t['step']:.2f}"] if "step" in t else []
            parts += [f"scoring {s} {v:.2f}" for s, v in t["score"].items()]
            lines.append(f"    measured here (s): {', '.join(parts)}")
    if seconds is not None:
        lines.append(f"estimated: about {round(seconds / 60)} min ({seconds:.0f} s) on this machine, "
                     f"{spec.max_concurrent_trials or 'as many as fit'} trial(s) at a time; an upper bound where "
                     "seeds choose the same heads")
    return lines


def dry_run(spec: ExperimentSpec, measure_here: bool = True) -> list[str]:
    """The plan and, when `measure_here`, the estimate: the lines `run --dry-run` prints."""
    plans = plan(spec)
    if not measure_here:
        return describe(spec, plans, None, None)
    threads = max(1, int(spec.resources.cpu))
    timings = {p.name: measure(spec, p, threads) for p in plans}
    return describe(spec, plans, timings, estimate(spec, plans, timings))
