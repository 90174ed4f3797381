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
Dense models are kept in an in-process cache and copied per trial, so a worker that runs many trials
loads each model from disk once.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import platform
import socket
import traceback
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, ContextManager, Iterator, Mapping, Protocol

import torch
from torch import nn

from sentinel.finetune import FinetuneConfig, finetune
from sentinel.models import get_adapter, head_layout, load_model, mask_heads, prune_heads
from sentinel.pruning import STRATEGIES, score_heads, select_heads

METHODS = ("remove", "mask")
POLICIES = ("global", "per_layer")


@dataclass(frozen=True)
class DataSpec:
    """Where a trial's text comes from and how it is cut. Splits are by document (sentinel.data)."""

    source: str = "gutenberg"  # scoring and fine-tuning text, and evaluation text unless eval_source is set
    eval_source: str | None = None  # e.g. "wikitext-2" to evaluate on another corpus (its eval split)
    seq_len: int = 128
    stride: int = 64  # sliding-window perplexity stride (== seq_len: disjoint windows)
    batch_size: int = 8
    score_batches: int = 4  # batches of the score split used to score heads
    eval_tokens: int = 16384  # evaluation tokens taken from the eval split (0 = all of it)
    split_seed: int = 0  # document split; fixed across trials so every cell sees the same data
    sts_pairs: int = 0  # encoders: a seeded random sample of this many STS-B test pairs (0 = all 1379)


@dataclass(frozen=True)
class TrialSpec:
    """Everything that determines one cell's result. Its canonical JSON digest is the trial id."""

    model: str
    strategy: str
    level: float
    seed: int = 0
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    policy: str = "global"
    min_heads_per_layer: int = 1
    method: str = "remove"  # "remove": physical slicing (real speedup); "mask": gates only
    data: DataSpec = field(default_factory=DataSpec)
    finetune: FinetuneConfig | None = field(default_factory=lambda: FinetuneConfig(steps=20))
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto"
    bf16: bool = False  # bf16 autocast, CUDA only
    model_options: Mapping[str, Any] = field(default_factory=dict)  # passed to load_model
    measure_speed: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(STRATEGIES.unknown_message(self.strategy))
        if not isinstance(self.level, (int, float)) or not 0 <= self.level < 1:
            raise ValueError(f"level: {self.level!r} is not in [0, 1)")
        if self.method not in METHODS:
            raise ValueError(f"method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy: {self.policy!r} is not one of {', '.join(POLICIES)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialSpec":
        d = dict(d)
        if isinstance(d.get("data"), Mapping):
            d["data"] = DataSpec(**d["data"])
        if isinstance(d.get("finetune"), Mapping):
            d["finetune"] = FinetuneConfig(**d["finetune"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), sort_keys=True, default=str))

    def trial_id(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class TrialResult:
    spec: TrialSpec
    status: str = "ok"  # "ok" or "failed"
    error: str = ""
    architecture: str = ""
    metric_name: str = ""
    higher_is_better: bool = False
    metric_scale: str = ""  # how seeds are averaged and compared (sentinel.eval.Metric.scale)
    dense: float = float("nan")
    pruned: float = float("nan")
    recovered: float = float("nan")
    protocol: dict = field(default_factory=dict)
    heads_total: int = 0
    heads_pruned: int = 0
    pruned_heads: list = field(default_factory=list)  # [[layer, head], ...] in the dense layout
    selection_notes: list = field(default_factory=list)
    weights: str = ""  # where the weights came from ("gguf Q4_1 (...), dequantised to float32", ...)
    params_before: int = 0
    params_after: int = 0
    flops_before: float = float("nan")  # forward FLOPs of one seq_len sequence (sentinel.eval.forward_flops)
    flops_after: float = float("nan")
    speed_before: float = float("nan")  # forward tokens/s
    speed_after: float = float("nan")
    speed_quiet: bool | None = None  # no other trial computed on the node while speed was measured
    timings: dict = field(default_factory=dict)  # stage -> seconds
    reused: dict = field(default_factory=dict)  # "baseline"/"scores" -> bool
    device: str = ""
    node: str = field(default_factory=socket.gethostname)
    versions: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)  # fine-tuning rows {step, train_loss, eval_metric, lr}
    scores: list = field(default_factory=list)  # [layers][heads] head scores (higher = more important)

    def row(self) -> dict[str, Any]:
        """One `trials` row (flat, JSON-friendly); curves and scores go to their own tables."""
        s = self.spec
        row = {k.name: getattr(self, k.name) for k in fields(self) if k.name not in ("spec", "curve", "scores")}
        row.update(
            trial_id=s.trial_id(), model=s.model, strategy=s.strategy, level=float(s.level), seed=s.seed,
            method=s.method, policy=s.policy, strategy_options=json.dumps(dict(s.strategy_options), sort_keys=True),
            spec=json.dumps(s.to_dict(), sort_keys=True),
        )
        return row


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


def run_trial(spec: TrialSpec, shared: SharedWork | None = None) -> TrialResult:
    """Runs one cell. Never raises for a failure inside the trial: it returns status "failed" and the error."""
    result = TrialResult(spec=spec, versions=versions())
    try:
        _run(spec, shared or LocalShared(), result)
    except Exception as exc:  # one failing cell must not take down a grid; the row says what happened
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
    return result


def _run(spec: TrialSpec, shared: SharedWork, result: TrialResult) -> None:
    from sentinel.eval import Stopwatch, autocast, count_parameters, forward_flops, resolve_device

    timings = Stopwatch(result.timings)

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:  # a timed compute stage (speed waits for those in progress)
        with timings(name), shared.working():
            yield

    device = resolve_device(spec.device)
    result.device = str(device) + (" bf16" if spec.bf16 and device.type == "cuda" else "")
    model_key = f"{spec.model}{json.dumps(dict(spec.model_options), sort_keys=True, default=str)}"

    with stage("load"):
        dense, tokenizer = dense_model(spec.model, device, spec.model_options)
        model = copy.deepcopy(dense)  # the cached dense model is never modified
        task = _cached_task(dense, spec, tokenizer)
    result.architecture = model.config.model_type
    result.weights = getattr(dense, "sentinel_weights", "")
    layout = head_layout(model)
    result.heads_total = layout.total_heads

    with stage("baseline"):
        baseline, result.reused["baseline"] = shared.get_or_compute(
            f"baseline/{model_key}/{task.key}/{result.device}", lambda: _baseline(dense, task, spec, device)
        )
    result.metric_name, result.higher_is_better = baseline["metric"], baseline["higher_is_better"]
    result.metric_scale = baseline["scale"]
    result.dense, result.protocol = baseline["value"], baseline["protocol"]
    result.params_before = baseline["params"]

    with stage("score"):
        seed = spec.seed if STRATEGIES.get(spec.strategy).depends_on_seed(dense) else "any"
        scores, result.reused["scores"] = shared.get_or_compute(
            f"scores/{model_key}/{spec.strategy}/{json.dumps(dict(spec.strategy_options), sort_keys=True)}"
            f"/{seed}/{task.score_key}",
            lambda: score_heads(spec.strategy, model, task.score_batches, seed=spec.seed, **spec.strategy_options),
        )
    result.scores = scores.scores.tolist()

    with stage("select"):  # whole KV groups on GQA models: HeadScores carries the group size
        selection = select_heads(scores, spec.level, policy=spec.policy, min_heads_per_layer=spec.min_heads_per_layer)
    result.selection_notes = list(selection.notes)
    result.pruned_heads = [[l, h] for l, heads in sorted(selection.heads.items()) for h in heads]
    result.heads_pruned = len(result.pruned_heads)
    layout_key = f"{model_key}/{spec.method}/{hashlib.sha256(json.dumps(result.pruned_heads).encode()).hexdigest()[:16]}"

    with stage("prune"):
        if selection.heads and spec.method == "remove":
            prune_heads(model, selection.heads)
        elif selection.heads:
            model.sentinel_mask = mask_heads(model, selection.heads)
    result.params_after = count_parameters(model)
    result.flops_before = forward_flops(dense, spec.data.seq_len)
    result.flops_after = forward_flops(model, spec.data.seq_len) if spec.method == "remove" else result.flops_before

    with stage("eval_pruned"), autocast(device, spec.bf16):  # one number per distinct pruned model
        result.pruned, result.reused["pruned_eval"] = shared.get_or_compute(
            f"pruned/{layout_key}/{task.key}/{result.device}", lambda: task.evaluate(model).value)
    if spec.measure_speed:
        with timings("speed"):  # once per layout, with the node to itself
            speed, result.reused["speed"] = shared.get_or_compute(
                f"speed/{layout_key}/{result.device}/seq{spec.data.seq_len}x{spec.data.batch_size}",
                lambda: _quiet_speed(dense, model, spec, device, shared))
        result.speed_before, result.speed_after, result.speed_quiet = speed

    if spec.finetune is not None and spec.finetune.steps > 0:
        with stage("finetune"):
            result.curve = finetune(
                model, task.train_batches(spec.finetune.batch_size), replace(spec.finetune, seed=spec.seed),
                evaluate=lambda m: task.evaluate(m).value, teacher=task.teacher, device=device, bf16=spec.bf16,
                initial_metric=result.pruned,
            )
        result.recovered = result.curve[-1]["eval_metric"]
    else:
        result.recovered = result.pruned


def _quiet_speed(dense, model, spec: TrialSpec, device, shared: SharedWork) -> tuple[float, float, bool]:
    """(dense tokens/s, pruned tokens/s, whether the node was quiet), dense and pruned timed alternately."""
    from sentinel.eval import compare_throughput

    with shared.exclusive() as quiet:
        before, after = compare_throughput(dense, model, seq_len=spec.data.seq_len, batch_size=spec.data.batch_size,
                                           rounds=2, iters=1, device=device)
    return before, after, quiet


@dataclass
class _Task:
    """What a model is measured on: the data and metric for causal LMs or for encoders."""

    key: str  # identifies the evaluation data + protocol (baseline cache key)
    score_key: str  # identifies the scoring data (scores cache key)
    score_batches: list
    train_batches: Callable[[int], list]  # batch size -> fine-tuning batches
    evaluate: Callable[[nn.Module], Any]
    teacher: nn.Module | None = None


_TASKS: dict[tuple, _Task] = {}  # tokenised data per (model, data spec), kept in this worker process


def _cached_task(dense: nn.Module, spec: TrialSpec, tokenizer) -> _Task:
    key = (spec.model, str(next(dense.parameters()).device), json.dumps(asdict(spec.data), sort_keys=True))
    if key not in _TASKS:
        _TASKS[key] = _task(dense, spec, tokenizer)
    return _TASKS[key]


def _task(dense: nn.Module, spec: TrialSpec, tokenizer) -> _Task:
    """Data and metric for one model. `dense` is the cached dense model: read, never modified."""
    from sentinel import data as sdata
    from sentinel import eval as seval

    d = spec.data
    adapter = get_adapter(dense)  # unsupported architectures fail here, before any data work
    sdata.check_seq_len(dense, d.seq_len)
    splits = sdata.split_documents(sdata.load_documents(d.source), seed=d.split_seed)

    if adapter.causal and dense.get_output_embeddings() is not None:
        # causal LMs: packed token blocks for scoring and fine-tuning, sliding-window perplexity
        blocks = lambda docs: sdata.pack_blocks(sdata.token_stream(tokenizer, docs), d.seq_len)  # noqa: E731
        score_batches = sdata.batches(blocks(splits.score), d.batch_size)[: d.score_batches]
        train_blocks = blocks(splits.train)
        eval_docs = splits.eval if d.eval_source is None else sdata.split_documents(
            sdata.load_documents(d.eval_source), seed=d.split_seed).eval
        ids = sdata.token_stream(tokenizer, eval_docs)
        ids = ids[: d.eval_tokens] if d.eval_tokens else ids
        evaluate = lambda m: seval.perplexity(  # noqa: E731
            m, ids, seq_len=d.seq_len, stride=d.stride, batch_size=d.batch_size,
            dataset=d.eval_source or d.source, split="eval",
        )
        return _Task(
            key=f"ppl/{d.eval_source or d.source}:split{d.split_seed}:seq{d.seq_len}:stride{d.stride}:tok{d.eval_tokens}",
            score_key=f"blocks/{d.source}:split{d.split_seed}:seq{d.seq_len}:b{d.batch_size}x{d.score_batches}",
            score_batches=score_batches,
            train_batches=lambda batch_size: sdata.batches(train_blocks, batch_size),
            evaluate=evaluate,
        )

    # encoders: sentences (with [CLS]/[SEP]) for scoring and distillation, STS-B test for the metric
    batches = lambda texts, size: sdata.sentence_batches(tokenizer, texts, size, d.seq_len)  # noqa: E731
    score_batches = batches(sdata.sentences(splits.score, limit=d.batch_size * d.score_batches), d.batch_size)
    train_sentences = sdata.sentences(splits.train, limit=8192, seed=d.split_seed)
    pairs = seval.load_stsb("test")  # read once per task; sts_spearman samples from it
    return _Task(
        key=f"stsb/test:{d.sts_pairs or 'all'}:seed{d.split_seed}",
        score_key=f"sentences/{d.source}:split{d.split_seed}:len{d.seq_len}:b{d.batch_size}x{d.score_batches}",
        score_batches=score_batches,
        train_batches=lambda batch_size: batches(train_sentences, batch_size),
        evaluate=lambda m: seval.sts_spearman(m, tokenizer, pairs=pairs, sample=d.sts_pairs, seed=d.split_seed),
        teacher=dense,  # encoders recover by distillation to the dense model's embeddings
    )


def _baseline(model: nn.Module, task: _Task, spec: TrialSpec, device: torch.device) -> dict[str, Any]:
    from sentinel.eval import autocast, count_parameters

    with autocast(device, spec.bf16):
        metric = task.evaluate(model)
    return {
        "metric": metric.name, "higher_is_better": metric.higher_is_better, "value": metric.value,
        "scale": metric.scale,
        "protocol": metric.protocol, "params": count_parameters(model),
    }
