"""What one trial produced (`TrialResult`) and its `trials` row: `row()` is the one place a row is built, and
`TrialResult.columns()` the one declaration of its columns and their types (orchestrator.results derives the Arrow
schema from it). Plain Python, no torch: the analysis and the command line read it without loading models.
"""
from __future__ import annotations

import hashlib
import json
import math
import socket
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, get_type_hints

from sentinel.contract import STAGES

# a fine-tuning curve row's keys and the types of their values (None where not measured): the `curves` table's columns
CURVE_COLUMNS: dict[str, type] = {"step": int, "train_loss": float, "eval_metric": float, "lr": float}
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

    def payload(self) -> dict[str, Any]:
        """What a trial reports: its row and the rows of its other tables (curve, head scores, extra metrics)."""
        return {"row": self.row(), "curve": self.curve, "scores": self.scores, "metrics": self.metrics}

    def row(self) -> dict[str, Any]:
        """The `trials` row of this cell: flat, JSON-able, NaN as None. The runner adds only where and when it
        ran (orchestrator.results.CONTEXT_COLUMNS); curves and scores go to their own tables."""
        return self._row(identity(self.spec.to_dict(), self.spec.trial_id()))

    def _row(self, identity: dict[str, Any]) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.NESTED}
        row.update(identity)
        row.update(
            protocol=json.dumps(self.protocol, sort_keys=True, default=str),
            pruned_heads=[[int(l), int(h)] for l, h in self.pruned_heads],
            selection_notes=[str(n) for n in self.selection_notes],
            **{name: [float(v) for v in getattr(self, name)] for name in self.ROUNDS},
            ideal_speedup=_ratio(self.flops_before, self.flops_after),
            time_total=sum(self.timings.values()) if self.timings else None,
        )
        row.update({f"time_{stage}": self.timings.get(stage) for stage in STAGES})
        row.update({f"reused_{k}": self.reused.get(k) for k in self.REUSED})
        row.update({f"version_{k}": self.versions.get(k) for k in self.VERSIONS})
        return {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in row.items()}


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


def _recovery_steps(finetune: Any) -> int:
    """Fine-tuning steps of a cell's recovery (0: none, its recovered value is its pruned one)."""
    steps = finetune.get("steps") if isinstance(finetune, dict) else None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else 0


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None  # NaN and infinities: no number to store


def _ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan
