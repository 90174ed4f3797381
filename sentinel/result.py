"""What one trial produced and how it travels to the tables, declared once.

`TrialResult` is the pipeline's view of a finished cell; `TrialRecord` is what leaves the worker: the trial's
`trials` row (`TrialResult.row()`, the one place a row is built), its curve, head scores and extra metrics, and
`RunContext` (where and when it ran, filled by the runner). `columns(table)` declares the columns and value types of
the four tables (`trials`, `curves`, `heads`, `metrics`) from these classes: orchestrator.results derives the Arrow
schemas from it, and the analysis its column types, its dedupe key and the identity of child rows. A failed trial's
record has the same fields as a finished one. Plain Python, no torch: the analysis and the command line read it
without loading models.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import socket
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, NewType, get_type_hints

from sentinel.contract import STAGES

SCHEMA_VERSION = 2  # 2: protocol_<key> columns replaced by `task` + `protocol_label` (the protocol stays as JSON)
TABLE_NAMES = ("trials", "curves", "heads", "metrics")
KEY = "trial_id"  # one row per trial_id in a compacted `trials` table (orchestrator.results.latest_per_trial)
# which trial a curve, head or metric row belongs to: these columns of its trial row
IDENTITY = ("schema_version", "experiment", "run_id", "trial_id", "model", "strategy", "level", "seed")
EpochMs = NewType("EpochMs", int)  # milliseconds since the epoch: a UTC timestamp column
Int32 = NewType("Int32", int)  # a 32-bit integer column

# a fine-tuning curve row's keys and the types of their values (None where not measured): the `curves` table's columns
CURVE_COLUMNS: dict[str, type] = {"step": int, "train_loss": float, "eval_metric": float, "lr": float}
# a head's score and whether the trial pruned it: the `heads` table's columns
HEAD_COLUMNS: dict[str, type] = {"layer": int, "head": int, "score": float, "pruned": bool}
# an extra evaluation's row (TrialSpec.extra_tasks): the `metrics` table's columns; stage is dense, pruned or recovered
METRIC_COLUMNS: dict[str, type] = {"stage": str, "task": str, "metric": str, "value": float, "stderr": float,
                                   "higher_is_better": bool, "protocol": str}


def digest(value: Any) -> str:
    """The 12-hex-digit id of a JSON-able value (a trial id is the digest of its spec)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class TrialResult:
    spec: Any  # the cell's sentinel.trial.TrialSpec (this module stays below the contract: no import of it)
    status: str = "ok"  # "ok" or "failed"
    error: str = ""
    architecture: str = ""
    task: str = ""  # the evaluation task that ran (sentinel.tasks)
    metric_name: str = ""
    higher_is_better: bool | None = None
    metric_scale: str = ""  # how seeds are averaged and compared (sentinel.eval.Metric.scale)
    dense: float = math.nan
    dense_full: float = math.nan  # the dense model on the whole eval split (all STS-B pairs): the sample's reference
    pruned: float = math.nan
    recovered: float = math.nan
    # the evaluation units behind `pruned` and `recovered` (sentinel.eval.Metric.units: [[a, b], ...] in the
    # evaluation's fixed order), which the analysis resamples so that an interval carries the evaluation sample
    pruned_units: list[list[float]] = field(default_factory=list)
    recovered_units: list[list[float]] = field(default_factory=list)
    protocol: dict = field(default_factory=dict)  # the task's full protocol record
    protocol_label: str = ""  # the task's one-line description of it (plots and reports show this)
    heads_total: int | None = None
    heads_pruned: int | None = None
    pruned_heads: list[list[int]] = field(default_factory=list)  # [[layer, head], ...] in the dense layout
    selection_notes: list[str] = field(default_factory=list)
    servable_by: list[str] = field(default_factory=list)  # runtimes that load the layout without sentinel (RUNTIMES)
    weights: str = ""  # where the weights came from ("gguf Q4_1 (...), dequantised to float32", ...)
    params_before: int | None = None
    params_after: int | None = None
    flops_before: float = math.nan  # forward FLOPs of one seq_len sequence (sentinel.eval.forward_flops)
    flops_after: float = math.nan
    speed_before: float = math.nan  # forward tokens/s
    speed_after: float = math.nan
    speed_quiet: bool | None = None  # no other trial computed on the node while speed was measured
    # pruned / dense tokens/s of each alternating round (speed_before/after are the rounds' medians): the spread
    speedup_rounds: list[float] = field(default_factory=list)
    # generation (TrialSpec.generation; causal LMs): KV cache per token and tokens/s of greedy generation with the
    # cache, dense (before) and pruned (after); prefill and decode at batch 1, decode_batch at generation_batch_size
    kv_bytes_per_token_before: float = math.nan
    kv_bytes_per_token_after: float = math.nan
    prefill_tps_before: float = math.nan
    prefill_tps_after: float = math.nan
    decode_tps_before: float = math.nan
    decode_tps_after: float = math.nan
    decode_batch_tps_before: float = math.nan
    decode_batch_tps_after: float = math.nan
    generation_batch_size: int | None = None
    generation_engine: str = ""  # "transformers", or "llama.cpp f16" (GGUF exports of both models, their weight type)
    generation_threads: int | None = None  # CPU threads the engine ran on
    prefill_speedup_rounds: list[float] = field(default_factory=list)  # pruned / dense per alternating round
    decode_speedup_rounds: list[float] = field(default_factory=list)
    decode_batch_speedup_rounds: list[float] = field(default_factory=list)
    generation_quiet: bool | None = None
    ideal_prefill_speedup: float = math.nan  # FLOPs of the prompt, dense / pruned
    ideal_decode_speedup: float = math.nan  # bytes read per decode step (weights + KV cache), dense / pruned, batch 1
    ideal_decode_batch_speedup: float = math.nan  # the same at generation_batch_size
    timings: dict = field(default_factory=dict)  # stage -> seconds
    reused: dict = field(default_factory=dict)  # "baseline"/"scores"/"pruned_eval"/"speed" -> bool
    device: str = ""
    node: str = field(default_factory=socket.gethostname)
    versions: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)  # fine-tuning rows {step, train_loss, eval_metric, lr}
    scores: list = field(default_factory=list)  # [layers][heads] head scores (higher = more important)
    metrics: list = field(default_factory=list)  # extra evaluations: rows of METRIC_COLUMNS (the metrics table)

    ROUNDS = ("speedup_rounds", "prefill_speedup_rounds", "decode_speedup_rounds", "decode_batch_speedup_rounds")
    UNITS = ("pruned_units", "recovered_units")
    NESTED = ("spec", "curve", "scores", "metrics", "timings", "reused", "versions", "protocol")
    REUSED = ("baseline", "scores", "pruned_eval", "speed", "generation")  # what may come from another cell (pipeline's shared keys)
    VERSIONS = ("sentinel_bench", "torch", "transformers", "python")
    # what row() adds to the scalar fields above: identity (identity()), the protocol as JSON, and flattened stages
    EXTRA_COLUMNS: ClassVar[dict[str, Any]] = {
        "trial_id": str, "model": str, "strategy": str, "strategy_options": str, "level": float, "seed": int,
        "method": str, "compensate": bool, "reference": bool, "recovery_steps": int, "policy": str, "spec": str,
        "protocol": str, "ideal_speedup": float,
        "time_total": float, **{f"time_{stage}": float for stage in STAGES}, **{f"reused_{k}": bool for k in REUSED},
        **{f"version_{k}": str for k in VERSIONS},
    }

    @classmethod
    def columns(cls) -> dict[str, Any]:
        """Every column of row() with the Python type of its values (None allowed for all): the one declaration the
        `trials` table's Arrow schema is derived from (orchestrator.results)."""
        hints = get_type_hints(cls)
        own = {f.name: hints[f.name] for f in fields(cls) if f.name not in cls.NESTED}
        return {**own, **cls.EXTRA_COLUMNS}

    def row(self) -> dict[str, Any]:
        """The `trials` row of this cell: flat, JSON-able, NaN as None. The runner adds only where and when it
        ran (RunContext); curves and scores go to their own tables (TrialRecord)."""
        return self._row(identity(self.spec.to_dict(), self.spec.trial_id()))

    def _row(self, identity: dict[str, Any]) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.NESTED}
        row.update(identity)
        row.update(
            protocol=json.dumps(self.protocol, sort_keys=True, default=str),
            pruned_heads=[[int(l), int(h)] for l, h in self.pruned_heads],
            selection_notes=[str(n) for n in self.selection_notes],
            **{name: [float(v) for v in getattr(self, name)] for name in self.ROUNDS},
            **{name: [[float(a), float(b)] for a, b in getattr(self, name)] for name in self.UNITS},
            ideal_speedup=_ratio(self.flops_before, self.flops_after),
            time_total=sum(self.timings.values()) if self.timings else None,
        )
        row.update({f"time_{stage}": self.timings.get(stage) for stage in STAGES})
        row.update({f"reused_{k}": self.reused.get(k) for k in self.REUSED})
        row.update({f"version_{k}": self.versions.get(k) for k in self.VERSIONS})
        return {k: finite_or_none(v) if isinstance(v, float) else v for k, v in row.items()}


@dataclass
class RunContext:
    """Where and when a trial ran: filled by the runner (orchestrator.trainable), never by the trial itself."""

    experiment: str | None = None
    run_id: str | None = None
    tune_trial_id: str | None = None
    attempts: int | None = None  # how many times Tune started this trial (retries after failures)
    device_assigned: str | None = None  # what Ray's assignment calls for: "cuda" or "cpu"
    gpu_ids: str = ""
    cuda_visible_devices: str = ""
    ray_node_id: str | None = None  # tells apart Ray nodes that share a host
    version_ray: str | None = None
    started_at: EpochMs | None = None
    finished_at: EpochMs | None = None


@dataclass
class TrialRecord:
    """What leaves a worker for one trial, and the one form it travels in (to_json / from_json): its `trials` row
    (TrialResult.row()), the rows of its other tables and where it ran. `rows()` gives the four tables' rows."""

    row: dict[str, Any]
    curve: list[dict[str, Any]] = field(default_factory=list)  # CURVE_COLUMNS rows
    scores: list[list[float]] = field(default_factory=list)  # [layers][heads] head scores (higher = more important)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # METRIC_COLUMNS rows (protocol as a mapping)
    context: RunContext = field(default_factory=RunContext)

    @classmethod
    def of(cls, result: TrialResult) -> TrialRecord:
        return cls(result.row(), list(result.curve), list(result.scores), list(result.metrics))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> TrialRecord:
        data = json.loads(text)
        return cls(**{**data, "context": RunContext(**data.get("context") or {})})

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """The rows of the four tables, each with exactly the columns(table) and float columns finite or None."""
        trial = {**self.row, "schema_version": SCHEMA_VERSION, **dataclasses.asdict(self.context)}
        identity = {name: trial[name] for name in IDENTITY}
        pruned = {(int(l), int(h)) for l, h in trial.get("pruned_heads") or []}
        heads = [{"layer": layer, "head": head, "score": score, "pruned": (layer, head) in pruned}
                 for layer, scores in enumerate(self.scores or []) for head, score in enumerate(scores)]
        metrics = [{**m, "protocol": json.dumps(m.get("protocol") or {}, sort_keys=True, default=str)}
                   for m in self.metrics or []]
        out = {"trials": [trial], "curves": [{**identity, **c} for c in self.curve or []],
               "heads": [{**identity, **h} for h in heads], "metrics": [{**identity, **m} for m in metrics]}
        declared = {table: columns(table) for table in out}  # once per table, not per row (a trial has 270 heads)
        return {table: [_typed(row, declared[table]) for row in rows] for table, rows in out.items()}


def columns(table: str) -> dict[str, Any]:
    """The columns of one of the four tables with the Python type of their values (None allowed in every column):
    the declaration the Arrow schemas (orchestrator.results) and the analysis's column types are derived from."""
    return dict(_columns(TrialResult, table))  # TrialResult as this module holds it now (a test declares a subclass)


@functools.lru_cache(maxsize=None)
def _columns(result_type: type, table: str) -> dict[str, Any]:
    """columns(), computed once per result class and table: reading type hints costs 0.5 ms a call."""
    context = get_type_hints(RunContext)
    trials = {**result_type.columns(), "schema_version": Int32, **{f.name: context[f.name] for f in fields(RunContext)}}
    if table == "trials":
        return trials
    own = {"curves": CURVE_COLUMNS, "heads": HEAD_COLUMNS, "metrics": METRIC_COLUMNS}[table]
    return {**{name: trials[name] for name in IDENTITY}, **own}


def _typed(row: dict[str, Any], declared: dict[str, Any]) -> dict[str, Any]:
    """`row` with exactly the declared columns (absent ones None), float columns finite or None."""
    return {name: finite_or_none(row.get(name)) if value_type(kind) is float else row.get(name)
            for name, kind in declared.items()}


def value_type(annotation: Any) -> Any:
    """float for `float | None`, list for `list[int]`, EpochMs for itself: the type a column's values have."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return value_type(next(a for a in typing.get_args(annotation) if a is not type(None)))
    return typing.get_origin(annotation) or annotation


def identity(spec: dict[str, Any], trial_id: str) -> dict[str, Any]:
    """The columns that say which cell a row is, from a spec's plain dict."""
    level, seed = spec.get("level"), spec.get("seed")
    return {
        "trial_id": trial_id, "model": str(spec.get("model")), "strategy": str(spec.get("strategy")),
        "level": float(level) if isinstance(level, (int, float)) else None,
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        "method": str(spec.get("method") or ""), "policy": str(spec.get("policy") or ""),
        "compensate": spec.get("compensate") is True,
        "reference": spec.get("reference") is True,  # a layout of the random reference (analysis: not a strategy)
        "recovery_steps": _recovery_steps(spec.get("finetune")),
        "strategy_options": json.dumps(dict(spec.get("strategy_options") or {}), sort_keys=True, default=str),
        "spec": json.dumps(spec, sort_keys=True, default=str),
    }


def strategy_label(strategy: str, options: object, compensate: bool = False, policy: object = "global") -> str:
    """The strategy as compared in tables and progress lines: its name, plus its options (a mapping or its JSON) when
    any were set, "compensated" with bias compensation and its selection policy when it is not global (they change
    it)."""
    try:
        parsed = json.loads(options) if isinstance(options, str) else options
    except json.JSONDecodeError:
        parsed = {}
    parts = [f"{k}={v}" for k, v in sorted(parsed.items())] if isinstance(parsed, dict) else []
    parts += ["compensated"] if compensate else []
    parts += [str(policy)] if isinstance(policy, str) and policy not in ("", "global") else []
    return f"{strategy} (" + ", ".join(parts) + ")" if parts else str(strategy)


def _recovery_steps(finetune: Any) -> int:
    """Fine-tuning steps of a cell's recovery (0: none, its recovered value is its pruned one)."""
    steps = finetune.get("steps") if isinstance(finetune, dict) else None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else 0


def finite_or_none(value: Any) -> float | None:
    """A float column's value: NaN, infinities and None have no number to store (None)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan
