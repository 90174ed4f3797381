"""Evaluation tasks: what a model is measured on, and how it recovers. One registry, one class per task.

A task turns (dense model, tokenizer, DataSpec) into `Prepared`: the scoring batches, the fine-tuning batches,
the `evaluate(model) -> Metric` function (whose protocol record travels with every value) and the keys under
which the pipeline shares work between cells. Adding a metric is adding a class here and registering it;
the schema stores the protocol as JSON plus the task's one-line `label`, so nothing downstream changes.

    perplexity  causal LMs: sliding-window perplexity on the eval split; fine-tuning on next-token loss
    stsb        encoders: Spearman of cosine similarities on STS-B test; fine-tuning by distillation

`task: auto` (the default) picks the first registered task whose `fits(model)` holds, in registration order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from sentinel import data as sdata
from sentinel import eval as seval
from sentinel.models import get_adapter
from sentinel.registry import Registry


@dataclass
class Prepared:
    """A task bound to one model's tokenizer and one DataSpec (built once per worker, then reused)."""

    task: str
    key: str  # identifies the evaluation data and protocol (the dense baseline is shared under it)
    score_key: str  # identifies the scoring data (scores are shared under it)
    label: str  # one line for plots and reports: "wikitext-2 eval split, seq 128 stride 64, 1024 tokens"
    score_batches: list
    train_batches: Callable[[int], list]  # batch size -> fine-tuning batches
    evaluate: Callable[[nn.Module], seval.Metric]
    teacher: nn.Module | None = None  # encoders recover by distillation to the dense model


class Task:
    name = ""

    def fits(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def prepare(self, dense: nn.Module, tokenizer: Any, d: Any) -> Prepared:
        """`dense` is the cached dense model: read, never modified. `d` is the trial's DataSpec."""
        raise NotImplementedError


TASKS: Registry[Task] = Registry("task")
_AUTO_ORDER: list[str] = []  # registration order: what "auto" tries


def register_task(task: type[Task]) -> type[Task]:
    TASKS.add(task.name, task())
    _AUTO_ORDER.append(task.name)
    return task


def _causal_lm(model: nn.Module) -> bool:
    return get_adapter(model).causal and model.get_output_embeddings() is not None


@register_task
class Perplexity(Task):
    """Causal LMs: packed token blocks for scoring and fine-tuning, sliding-window perplexity for the metric."""

    name = "perplexity"

    def fits(self, model: nn.Module) -> bool:
        return _causal_lm(model)

    def prepare(self, dense: nn.Module, tokenizer: Any, d: Any) -> Prepared:
        splits = sdata.split_documents(sdata.load_documents(d.source), seed=d.split_seed)
        blocks = lambda docs: sdata.pack_blocks(sdata.token_stream(tokenizer, docs), d.seq_len)  # noqa: E731
        train_blocks = blocks(splits.train)
        eval_name = d.eval_source or d.source
        eval_docs = splits.eval if d.eval_source is None else sdata.split_documents(
            sdata.load_documents(d.eval_source), seed=d.split_seed).eval
        ids = sdata.token_stream(tokenizer, eval_docs)
        ids = ids[: d.eval_tokens] if d.eval_tokens else ids
        return Prepared(
            task=self.name,
            key=f"ppl/{eval_name}:split{d.split_seed}:seq{d.seq_len}:stride{d.stride}:tok{d.eval_tokens}",
            score_key=f"blocks/{d.source}:split{d.split_seed}:seq{d.seq_len}:b{d.batch_size}x{d.score_batches}",
            label=f"{eval_name} eval split, seq {d.seq_len} stride {d.stride}, {len(ids)} tokens",
            score_batches=sdata.batches(blocks(splits.score), d.batch_size)[: d.score_batches],
            train_batches=lambda batch_size: sdata.batches(train_blocks, batch_size),
            evaluate=lambda m: seval.perplexity(m, ids, seq_len=d.seq_len, stride=d.stride, batch_size=d.batch_size,
                                                dataset=eval_name, split="eval"),
        )


@register_task
class STSB(Task):
    """Encoders: sentences for scoring and distillation, Spearman on STS-B test (a seeded sample if asked)."""

    name = "stsb"

    def fits(self, model: nn.Module) -> bool:
        return not _causal_lm(model) and hasattr(model, "config")

    def prepare(self, dense: nn.Module, tokenizer: Any, d: Any) -> Prepared:
        splits = sdata.split_documents(sdata.load_documents(d.source), seed=d.split_seed)
        batches = lambda texts, size: sdata.sentence_batches(tokenizer, texts, size, d.seq_len)  # noqa: E731
        train_sentences = sdata.sentences(splits.train, limit=8192, seed=d.split_seed)
        pairs = seval.load_stsb("test")  # read once per task; sts_spearman samples from it
        shown = min(d.sts_pairs, len(pairs)) if d.sts_pairs else len(pairs)
        return Prepared(
            task=self.name,
            key=f"stsb/test:{d.sts_pairs or 'all'}:seed{d.split_seed}",
            score_key=f"sentences/{d.source}:split{d.split_seed}:len{d.seq_len}:b{d.batch_size}x{d.score_batches}",
            label=f"stsb test split, {shown} pairs" + (f" (seeded sample, seed {d.split_seed})" if d.sts_pairs else ""),
            score_batches=batches(sdata.sentences(splits.score, limit=d.batch_size * d.score_batches), d.batch_size),
            train_batches=lambda batch_size: batches(train_sentences, batch_size),
            evaluate=lambda m: seval.sts_spearman(m, tokenizer, pairs=pairs, sample=d.sts_pairs, seed=d.split_seed),
            teacher=dense,
        )


def prepare_task(name: str, dense: nn.Module, tokenizer: Any, d: Any) -> Prepared:
    """The named task (or, for "auto", the first that fits the model), prepared for this model and data."""
    get_adapter(dense)  # unsupported architectures fail here, before any data work
    sdata.check_seq_len(dense, d.seq_len)
    if name == "auto":
        fitting = [n for n in _AUTO_ORDER if TASKS.get(n).fits(dense)]
        if not fitting:
            raise ValueError(f"task: no registered task fits {type(dense).__name__}; tasks: {', '.join(TASKS.names())}")
        name = fitting[0]
    task = TASKS.get(name)
    if not task.fits(dense):
        raise ValueError(f"task: {name!r} does not fit {type(dense).__name__} (a {dense.config.model_type} model)")
    return task.prepare(dense, tokenizer, d)

