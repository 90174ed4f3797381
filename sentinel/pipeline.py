"""One grid cell, top to bottom: load -> dense baseline -> scores -> select -> prune -> evaluate ->
fine-tune -> evaluate. Usable without Ray; the orchestrator calls `run_trial` and nothing else.

Work shared between cells goes through a `shared` store with `get_or_compute(key, fn) -> (value, reused)`;
the default keeps it in this process. What is shared, and why it may be:
- the dense baseline, per model and evaluation protocol;
- head scores, per (model, strategy, options, scoring data), and per seed only for strategies whose scores
  depend on it (`Strategy.depends_on_seed`): entropy or magnitude give the same heads for every seed;
- the pruned model's metric and its speed, per distinct pruned layout (the set of heads removed): cells
  that remove the same heads have the same pruned model, so its metric is one number, not several noisy
  ones, and its speed is one measurement. Speed is measured under `shared.exclusive()`, which keeps every
  other trial on the node from computing meanwhile: tokens/s is a property of the layout, not of the load.
Every key is `work_key(kind, *what the value depends on)`: the kind, then one digest of those parts.
Dense models are kept in an in-process cache and copied per trial, so a worker that runs many trials
loads each model from disk once.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import platform
import statistics
import traceback
from dataclasses import asdict, replace
from typing import Any, Callable, ContextManager, Iterator, Mapping, Protocol

import torch
from torch import nn

from sentinel.eval import (Metric, Stopwatch, autocast, compare_throughput, count_parameters, every_core,
                           forward_flops, resolve_device)
from sentinel.export.formats import servable_by
from sentinel import work_cache
from sentinel.models.device import model_device
from sentinel.finetune import finetune
from sentinel.models import (HeadMask, check_compensable, head_layout, is_causal_lm, load_model, mask_heads,
                             prune_heads)
from sentinel.pruning import STRATEGIES, Selection, score_heads, select_heads
from sentinel.tasks import Prepared, prepare_task
from sentinel.result import TrialResult, digest
from sentinel.trial import DataSpec, TrialSpec, reference_seed  # noqa: F401  (the contract, re-exported)

class SharedWork(Protocol):
    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> tuple[Any, bool]: ...

    def working(self) -> ContextManager[None]:
        """Held around every compute stage, so that `exclusive` can wait for the stages in progress."""

    def exclusive(self) -> ContextManager[bool]:
        """No other trial on this node computes inside the block; yields False if that could not be had."""


class LocalShared:
    """Shared work kept in this process (the default, and what a plain loop over run_trial uses).

    One process runs one trial at a time, so `exclusive` holds by construction here.
    """

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> tuple[Any, bool]:
        if key in self._values:
            return self._values[key], True
        self._values[key] = fn()
        return self._values[key], False

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[bool]:
        yield True


_MODELS: dict[tuple, tuple[nn.Module, Any]] = {}  # dense models loaded in this worker process


def dense_model(name: str, device: torch.device, options: Mapping[str, Any]) -> tuple[nn.Module, Any]:
    """The dense model from the in-process cache (loaded once per worker), and its tokenizer."""
    key = (name, str(device), json.dumps(dict(options), sort_keys=True, default=str))
    if key not in _MODELS:
        _MODELS[key] = load_model(name, device=str(device), **options)
    return _MODELS[key]


def versions() -> dict[str, str]:
    import transformers

    from sentinel import __version__

    out = {"sentinel_bench": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version()}
    return out


Keep = Callable[[str, nn.Module, Any], None]  # (stage "pruned" | "recovered", the model, its tokenizer)


def run_trial(spec: TrialSpec, shared: SharedWork | None = None, device: str | None = None,
              keep: Keep | None = None) -> TrialResult:
    """Runs one cell. Never raises for a failure inside the trial: it returns status "failed" and the error.

    `device` overrides `spec.device` with what a scheduler assigned ("auto" resolved by Ray's GPU ids); the spec
    stays as asked, because it is the cell's identity (its trial_id) and the row records the device used.
    `keep` is handed the model after pruning (before recovery changes it) and after recovery: how a user takes a
    trial's model away (orchestrator.extract).
    """
    result = TrialResult(spec=spec, versions=versions())
    try:
        _run(spec, shared or LocalShared(), result, device or spec.device, keep)
        _check_finite(result)
    except Exception as exc:  # one failing cell must not take down a grid; the row says what happened
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
    return result


def _check_finite(result: TrialResult) -> None:
    """A NaN or infinite metric is a failed trial, not a number to average (an lr that diverged, an overflow)."""
    for stage in ("dense", "pruned", "recovered"):
        value = getattr(result, stage)
        if not math.isfinite(value):
            raise ArithmeticError(f"{stage}: the {result.metric_name or 'metric'} is {value} (not finite); "
                                  "the model's outputs overflowed or training diverged")


def work_key(kind: str, *parts: Any) -> str:
    """A shared-work key: the kind of value, then one digest of everything the value depends on."""
    return f"{kind}/{digest([str(part) for part in parts])}"


def _run(spec: TrialSpec, shared: SharedWork, result: TrialResult, device_name: str, keep: Keep | None) -> None:
    timings = Stopwatch(result.timings)

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:  # a timed compute stage (speed waits for those in progress)
        with timings(name), shared.working():
            yield

    device = resolve_device(device_name)
    result.device = str(device) + (" bf16" if spec.bf16 and device.type == "cuda" else "")
    model_id = (spec.model, json.dumps(dict(spec.model_options), sort_keys=True, default=str))

    with stage("load"):
        dense, tokenizer = dense_model(spec.model, device, spec.model_options)
        model = copy.deepcopy(dense)  # the cached dense model is never modified
        task = cached_task(dense, spec, tokenizer)
    result.architecture = model.config.model_type
    if spec.compensate:  # before any evaluation: a family that cannot take the bias fails the trial now
        check_compensable(model)
    result.weights = getattr(dense, "sentinel_weights", "")
    result.heads_total = head_layout(model).total_heads

    with stage("baseline"):
        _record_baseline(result, shared, dense, task, spec, device, model_id)
    calibration = task.calibration(spec.seed)
    result.protocol = {**result.protocol, "calibration": calibration.record}
    with stage("score"):
        scores = _scores(result, shared, dense, model, spec, calibration, model_id)

    strategy = STRATEGIES.get(spec.strategy)
    if strategy.during_finetune:  # dynamic: heads are chosen while a copy of the dense model fine-tunes
        with stage("finetune"):
            selection, result.curve = _prune_while_finetuning(dense, task, spec, result.dense, device)
    else:
        with stage("select"):  # whole KV groups on GQA models: HeadScores carries the group size
            selection = select_heads(scores, spec.level, policy=spec.policy,  # a layer-unit strategy empties layers
                                     min_heads_per_layer=0 if strategy.unit == "layer" else spec.min_heads_per_layer)
    result.selection_notes = list(selection.notes)
    result.pruned_heads = [[l, h] for l, heads in sorted(selection.heads.items()) for h in heads]
    result.heads_pruned = len(result.pruned_heads)
    # one pruned model per layout; a compensated one differs by its biases, which come from this seed's draw
    layout = (*model_id, spec.method, result.pruned_heads, calibration.key if spec.compensate else "plain")

    with stage("prune"):
        mask = _prune(result, model, dense, selection, spec, calibration)
    with stage("eval_pruned"), autocast(device, spec.bf16):  # one number per distinct pruned model
        pruned, result.reused["pruned_eval"] = shared.get_or_compute(
            work_key("pruned", *layout, task.key, result.device), lambda: task.evaluate(model))
    result.pruned, result.pruned_units = pruned.value, pruned.units
    if keep is not None:
        keep("pruned", model, tokenizer)
    if spec.measure_speed:
        with timings("speed"):  # once per layout, with the node to itself
            speed, result.reused["speed"] = shared.get_or_compute(
                work_key("speed", *layout, result.device, spec.data.seq_len, spec.data.batch_size),
                lambda: _quiet_speed(dense, model, spec, device, shared))
        result.speed_before, result.speed_after, result.speed_quiet, result.speedup_rounds = speed
    if spec.generation is not None and is_causal_lm(model):  # encoders: nothing to generate, nothing recorded
        with timings("generation"):  # once per layout, with the node to itself
            numbers, result.reused["generation"] = shared.get_or_compute(
                work_key("generation", *layout, result.device, spec.generation.to_dict()),
                lambda: _quiet_generation(dense, model, tokenizer, spec, shared))
        for name, value in numbers.items():
            setattr(result, name, value)

    extras: dict[str, list] = {}
    if spec.extra_tasks:  # the dense model once per model, the pruned one once per layout
        with stage("extra"), autocast(device, spec.bf16):
            extras["dense"], _ = shared.get_or_compute(
                work_key("extra", *model_id, spec.extra_tasks, spec.data.to_dict(), result.device),
                lambda: extra_metrics(dense, tokenizer, spec))
            extras["pruned"], _ = shared.get_or_compute(
                work_key("extra", *layout, spec.extra_tasks, spec.data.to_dict(), result.device),
                lambda: extra_metrics(model, tokenizer, spec))

    recovers = spec.finetune is not None and spec.finetune.steps > 0
    if strategy.during_finetune:  # pruned while fine-tuning: its last evaluation had every selected head masked
        result.recovered = result.curve[-1]["eval_metric"]
    elif recovers:
        last = LastMetric(task.evaluate)
        with stage("finetune"):
            result.curve = finetune(
                model, task.train_batches(spec.finetune.batch_size), spec.finetune, seed=spec.seed,
                evaluate=last, teacher=_teacher(task, dense, spec), mask=mask, device=device,
                bf16=spec.bf16, initial_metric=result.pruned,
            )
        result.recovered, result.recovered_units = result.curve[-1]["eval_metric"], last.units
        if keep is not None:
            keep("recovered", model, tokenizer)
    else:
        result.recovered, result.recovered_units = result.pruned, result.pruned_units
    if spec.extra_tasks:  # after recovery (a dynamic trial's `model` is its unrecovered pruned copy: not measured)
        if recovers and not strategy.during_finetune:
            with stage("extra"), autocast(device, spec.bf16):
                extras["recovered"] = extra_metrics(model, tokenizer, spec)
        elif not strategy.during_finetune:
            extras["recovered"] = extras["pruned"]  # no recovery: the recovered model is the pruned one
        result.metrics = [{**row, "stage": stage_name} for stage_name, rows in extras.items() for row in rows]


class LastMetric:
    """`evaluate` as fine-tuning calls it (model -> value), keeping the units of the last evaluation: the recovered
    value's (fine-tuning always evaluates after its last step)."""

    def __init__(self, evaluate: Callable[[nn.Module], Metric]) -> None:
        self.evaluate, self.units = evaluate, []

    def __call__(self, model: nn.Module) -> float:
        metric = self.evaluate(model)
        self.units = metric.units
        return metric.value


def extra_metrics(model: nn.Module, tokenizer: Any, spec: TrialSpec) -> list[dict[str, Any]]:
    """The spec's extra evaluations of `model`: lm-eval tasks through sentinel.zero_shot, registered tasks
    through their own evaluate. One row per metric: {task, metric, value, stderr, higher_is_better, protocol}."""
    from sentinel.zero_shot import PREFIX, evaluate_lm_eval

    rows = []
    for name in spec.extra_tasks:
        if name.startswith(PREFIX):
            rows += evaluate_lm_eval(model, tokenizer, name)
            continue
        dense, _ = dense_model(spec.model, model_device(model), spec.model_options)
        metric = cached_task(dense, replace(spec, task=name), tokenizer).evaluate(model)
        rows.append({"task": name, "metric": metric.name, "value": metric.value, "stderr": None,
                     "higher_is_better": metric.higher_is_better, "protocol": metric.protocol})
    return rows


def _record_baseline(result: TrialResult, shared: SharedWork, dense: nn.Module, task: Prepared, spec: TrialSpec,
                     device: torch.device, model_id: tuple) -> None:
    """The dense metric (once per model, task data and device) and, if asked, the dense model on the whole eval split."""
    baseline, result.reused["baseline"] = shared.get_or_compute(
        work_key("baseline", *model_id, task.key, result.device), lambda: _baseline(dense, task, spec, device))
    result.metric_name, result.higher_is_better = baseline["metric"], baseline["higher_is_better"]
    result.metric_scale, result.dense, result.params_before = baseline["scale"], baseline["value"], baseline["params"]
    result.task, result.protocol_label, result.protocol = task.task, task.label, dict(baseline["protocol"])
    if spec.data.whole_split_reference:  # the dense model on the whole eval split, once per model
        full, _ = shared.get_or_compute(
            work_key("full", *model_id, task.full_key, result.device),
            lambda: _dense_full(dense, task, spec, device, result.device))
        result.dense_full = full["value"]
        result.protocol["whole_split_reference"] = full["provenance"]


def _dense_full(model: nn.Module, task: Prepared, spec: TrialSpec, device: torch.device, device_name: str) -> dict:
    """{"value": the dense metric on the whole eval split, "provenance": where it came from}: the same for every run
    of these weights under this protocol, so it is kept on disk (sentinel.work_cache) and computed once."""
    def compute() -> float:
        with autocast(device, spec.bf16):
            return task.evaluate_full(model).value

    key = work_cache.key_of("whole-split", weights=work_cache.weights_digest(model), protocol=task.full_key,
                            device=device_name, options=spec.model_options)
    value, provenance = work_cache.get_or_compute(key, compute)
    return {"value": value, "provenance": provenance}


def _scores(result: TrialResult, shared: SharedWork, dense: nn.Module, model: nn.Module, spec: TrialSpec,
            calibration, model_id: tuple):
    """Head scores, shared per (model, strategy, options, seed if the strategy uses it, calibration draw if it reads
    data)."""
    strategy = STRATEGIES.get(spec.strategy)
    drawn_with = reference_seed(spec.seed) if spec.reference else spec.seed
    seed = drawn_with if strategy.depends_on_seed(dense) else "any"
    data = calibration.key if strategy.uses_data else "no-data"
    scores, result.reused["scores"] = shared.get_or_compute(
        work_key("scores", *model_id, spec.strategy, dict(spec.strategy_options), seed, data),
        lambda: score_heads(spec.strategy, model, calibration.batches, seed=drawn_with, **spec.strategy_options))
    result.scores = scores.scores.tolist()
    return scores


def _prune(result: TrialResult, model: nn.Module, dense: nn.Module, selection: Selection, spec: TrialSpec,
           calibration) -> HeadMask | None:
    """Removes (or masks) the selected heads of `model` and records its size and FLOPs beside the dense model's.
    Returns the mask (method mask), which fine-tuning is then given."""
    mask = None
    if selection.heads and spec.method == "remove":
        prune_heads(model, selection.heads, compensate=calibration.batches if spec.compensate else None)
    elif selection.heads:
        mask = mask_heads(model, selection.heads)
    result.params_after = count_parameters(model)
    result.servable_by = _servable_by(dense, selection)
    result.flops_before = forward_flops(dense, spec.data.seq_len)
    result.flops_after = forward_flops(model, spec.data.seq_len) if spec.method == "remove" else result.flops_before
    return mask


def _servable_by(dense: nn.Module, selection: Selection) -> list[str]:
    """The runtimes that load the pruned layout without sentinel (sentinel.export.servable_by), from the dense layout
    and the removed heads: a removal takes a KV head when all its query heads go (whole groups on GQA models)."""
    layout = head_layout(dense)
    heads, kv_heads = list(layout.heads), list(layout.kv_heads)
    for layer, removed in selection.heads.items():
        group = layout.group_size(layer)
        heads[layer] -= len(removed)
        kv_heads[layer] -= sum(all(h in set(removed) for h in range(k * group, (k + 1) * group))
                               for k in range(layout.kv_heads[layer]))
    return servable_by(dense.config.model_type, heads, kv_heads, pruned=bool(selection.heads),
                       hidden_size=int(getattr(dense.config, "hidden_size", 0) or 0))


def _prune_while_finetuning(dense: nn.Module, task: Prepared, spec: TrialSpec, dense_metric: float,
                            device: torch.device) -> tuple[Selection, list]:
    """A strategy with `during_finetune` (dynamic): a copy of the dense model fine-tunes while the strategy's hook
    zeroes more gates on its schedule. Returns (the heads removed, the learning curve: step 0 is the dense metric, the
    last step has every removed head masked)."""
    trained = copy.deepcopy(dense)
    mask = mask_heads(trained, None)
    pruner = STRATEGIES.get(spec.strategy).during_finetune(trained, mask, task.calibration(spec.seed).batches, level=spec.level, steps=spec.finetune.steps,
                           policy=spec.policy, min_heads_per_layer=spec.min_heads_per_layer,
                           generator=torch.Generator().manual_seed(spec.seed), **spec.strategy_options)
    curve = finetune(trained, task.train_batches(spec.finetune.batch_size), spec.finetune, seed=spec.seed,
                     evaluate=lambda m: task.evaluate(m).value, teacher=_teacher(task, dense, spec), mask=mask,
                     device=device,
                     bf16=spec.bf16, initial_metric=dense_metric, on_step=pruner)
    heads = mask.masked()
    selected = sum(len(h) for h in heads.values())
    return Selection(heads=heads, requested=pruner.requested, selected=selected, notes=pruner.notes), curve


def _teacher(task: Prepared, dense: nn.Module, spec: TrialSpec) -> nn.Module | None:
    """What recovery distils to: the task's teacher (an encoder's dense model), or the dense model when a causal LM
    is asked to distil (finetune.objective 'distill')."""
    if spec.finetune.objective == "distill" and task.teacher is None:
        return dense
    return task.teacher


SPEED_ROUNDS = 3  # alternating dense / pruned timings per layout: a median and a spread, never one timing


def _quiet_speed(dense, model, spec: TrialSpec, device, shared: SharedWork) -> tuple[float, float, bool, list[float]]:
    """(dense tokens/s, pruned tokens/s: medians over the rounds, whether the node was quiet, pruned / dense per
    round), dense and pruned timed alternately."""
    with shared.exclusive() as quiet, every_core() if quiet else contextlib.nullcontext():
        rounds = compare_throughput(dense, model, seq_len=spec.data.seq_len, batch_size=spec.data.batch_size,
                                    rounds=SPEED_ROUNDS, iters=1, device=device)
    return (statistics.median(d for d, _ in rounds), statistics.median(p for _, p in rounds), quiet,
            [p / d for d, p in rounds])


def _quiet_generation(dense, model, tokenizer, spec: TrialSpec, shared: SharedWork) -> dict[str, Any]:
    """KV cache per token, prefill and decode tokens/s (dense and pruned, alternately: medians over the rounds, and
    each round's ratio) and their ideal ratios: the TrialResult fields they fill. In transformers (eager PyTorch),
    or in llama.cpp on GGUF exports of both models (generation.engine)."""
    from sentinel.eval.generation import compare_generation, ideal_generation_ratios, kv_cache_bytes_per_token

    g = spec.generation
    if g.engine == "llama.cpp":
        from sentinel.export import llamacpp

        with shared.exclusive() as quiet:
            out = llamacpp.compare_generation(dense, model, tokenizer, prompt_tokens=g.prompt_tokens,
                                              new_tokens=g.new_tokens, rounds=g.rounds, dtype=g.gguf_dtype)
        return {**out, "generation_quiet": quiet}
    with shared.exclusive() as quiet, every_core() if quiet else contextlib.nullcontext():
        rounds = compare_generation(dense, model, prompt_tokens=g.prompt_tokens, new_tokens=g.new_tokens,
                                    batch_size=g.batch_size, rounds=g.rounds)
        threads = torch.get_num_threads()
    ideal = ideal_generation_ratios(dense, model, prompt_tokens=g.prompt_tokens, new_tokens=g.new_tokens,
                                    batch_size=g.batch_size)
    out: dict[str, Any] = {
        "generation_engine": "transformers", "generation_threads": threads,
        "kv_bytes_per_token_before": float(kv_cache_bytes_per_token(dense)),
        "kv_bytes_per_token_after": float(kv_cache_bytes_per_token(model)),
        "generation_batch_size": g.batch_size, "generation_quiet": quiet,
        "ideal_prefill_speedup": ideal["prefill"], "ideal_decode_speedup": ideal["decode"],
        "ideal_decode_batch_speedup": ideal["decode_batch"],
    }
    for kind in ("prefill", "decode", "decode_batch"):
        field_name = f"{kind}_tokens_per_s"
        dense_tps = [getattr(d, field_name) for d, _ in rounds]
        pruned_tps = [getattr(p, field_name) for _, p in rounds]
        out[f"{kind}_tps_before"], out[f"{kind}_tps_after"] = statistics.median(dense_tps), statistics.median(pruned_tps)
        out[f"{kind}_speedup_rounds"] = [p / d for d, p in zip(dense_tps, pruned_tps)]
    return out


_TASKS: dict[tuple, Prepared] = {}  # prepared tasks (tokenised data) per (model, task, data spec), in this worker


def cached_task(dense: nn.Module, spec: TrialSpec, tokenizer) -> Prepared:
    """The spec's task prepared for this dense model (tokenised data), once per worker process."""
    key = (spec.model, spec.task, str(next(dense.parameters()).device), json.dumps(asdict(spec.data), sort_keys=True))
    if key not in _TASKS:
        _TASKS[key] = prepare_task(spec.task, dense, tokenizer, spec.data)
    return _TASKS[key]


def _baseline(model: nn.Module, task: Prepared, spec: TrialSpec, device: torch.device) -> dict[str, Any]:
    with autocast(device, spec.bf16):
        metric = task.evaluate(model)
    return {
        "metric": metric.name, "higher_is_better": metric.higher_is_better, "value": metric.value,
        "scale": metric.scale,
        "protocol": metric.protocol, "params": count_parameters(model),
    }
