"""Evaluation tasks: what a model is measured on, and how it recovers. One registry, one class per task.

A task turns (dense model, tokenizer, DataSpec) into `Prepared`: the scoring batches, the fine-tuning batches,
the `evaluate(model) -> Metric` function (whose protocol record travels with every value) and the keys under
which the pipeline shares work between cells. Adding a metric is adding a class here and registering it;
the schema stores the protocol as JSON plus the task's one-line `label`, so nothing downstream changes.

    perplexity  causal LMs: perplexity on windows spread over the eval split (or all of it); next-token fine-tuning
    stsb        encoders: Spearman of cosine similarities on STS-B test; fine-tuning by distillation

Calibration (the data heads are scored on) is drawn per trial seed from documents spread over the score split
(`data.calibration: resample`, the default) or once for every seed (`fixed`); `Prepared.calibration(seed)` gives
the batches, the key scores are shared under, and the record of what was drawn (the row's protocol keeps it).

`task: auto` (the default) picks the first registered task whose `fits(model)` holds, in registration order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from sentinel import data as sdata
from sentinel import eval as seval
from sentinel.models import get_adapter, is_causal_lm
from sentinel.registry import Registry


@dataclass(frozen=True)
class Calibration:
    """The scoring data of one trial: drawn per seed (`calibration: resample`) or once (`fixed`)."""

    batches: list
    key: str  # shared-work key of this sample: scores computed on it are shared by every cell that draws it
    record: dict  # the protocol's `calibration`: mode, seed, the documents and windows (or sentences) drawn


@dataclass
class Prepared:
    """A task bound to one model's tokenizer and one DataSpec (built once per worker, then reused)."""

    task: str
    key: str  # identifies the evaluation data and protocol (the dense baseline is shared under it)
    label: str  # one line for plots and reports: "wikitext-2 eval split, 8 windows of 128 tokens over 8 documents"
    calibration: Callable[[int], Calibration]  # trial seed -> its scoring data
    train_batches: Callable[[int], list]  # batch size -> fine-tuning batches
    evaluate: Callable[[nn.Module], seval.Metric]
    evaluate_full: Callable[[nn.Module], seval.Metric]  # the whole eval split: once per model, for reference
    full_key: str
    teacher: nn.Module | None = None  # encoders recover by distillation to the dense model
    full_share: float = 1.0  # what the whole split costs in evaluations of the sample (its size over theirs)


def _calibration_rng(d: Any, seed: int) -> tuple[random.Random, str]:
    """The generator of a trial's calibration draw and the draw's name: per seed, or one for every seed."""
    tag = f"seed{seed}" if d.calibration == "resample" else "fixed"
    return random.Random(f"calibration/split{d.split_seed}/{tag}"), tag


class Task:
    name = ""
    causal = True  # what the task measures: a causal LM with its head (True) or an encoder (False)

    def fits(self, model: nn.Module) -> bool:
        return is_causal_lm(model) == self.causal

    def prepare(self, dense: nn.Module, tokenizer: Any, d: Any) -> Prepared:
        """`dense` is the cached dense model: read, never modified. `d` is the trial's DataSpec."""
        raise NotImplementedError


TASKS: Registry[Task] = Registry("task")  # "auto" tries them in registration order


def register_task(task: type[Task]) -> type[Task]:
    TASKS.add(task.name, task())
    return task



@register_task
class Perplexity(Task):
    """Causal LMs: calibration windows drawn over the score split, packed blocks for fine-tuning, perplexity on
    windows spread evenly over the eval split (or the whole split, sliding windows) for the metric."""

    name = "perplexity"

    def prepare(self, dense: nn.Module, tokenizer: Any, d: Any) -> Prepared:
        splits = sdata.split_documents(sdata.load_documents(d.source), seed=d.split_seed)
        bos = sdata.bos_token(tokenizer, d.bos)
        text_len = d.seq_len - (bos is not None)  # a window is BOS + text when the model expects BOS
        train_stream = sdata.token_stream(tokenizer, splits.train)
        train_blocks = sdata.with_bos(sdata.pack_blocks(train_stream, text_len, "train split"), bos)
        eval_name = d.eval_source or d.source
        eval_docs = splits.eval if d.eval_source is None else sdata.split_documents(
            sdata.load_documents(d.eval_source), seed=d.split_seed).eval
        eval_ids = sdata.document_tokens(tokenizer, eval_docs)
        stream = sdata.joined(tokenizer, eval_ids)  # tokenised once: windows and the whole split read the same ids
        if bos is not None:
            stream = torch.cat([torch.tensor([bos]), stream])
        whole = lambda m: seval.perplexity(m, stream, seq_len=d.seq_len, stride=d.stride,  # noqa: E731
                                           batch_size=d.batch_size, dataset=eval_name, split="eval")
        bos_label = ", BOS first" if bos is not None else ""
        if d.eval_tokens:
            count = -(-d.eval_tokens // text_len)
            total = sum(len(ids) for ids in eval_ids)
            if count * text_len > total:
                raise ValueError(f"eval_tokens: {d.eval_tokens} is more than the eval split holds ({total} tokens in "
                                 f"{len(eval_ids)} documents); use at most {total}, or 0 for the whole split")
            placed = sdata.spread_windows([len(ids) for ids in eval_ids], text_len, count)
            inputs = sdata.window_tensor(eval_ids, placed, text_len, bos)
            documents = len({doc for doc, _ in placed})
            extra = {"placement": "spread", "eval_documents": documents, "eval_split_documents": len(eval_docs),
                     "bos": bos is not None}
            evaluate = lambda m: seval.window_perplexity(m, inputs, batch_size=d.batch_size,  # noqa: E731
                                                         dataset=eval_name, split="eval", extra=extra)
            label = (f"{eval_name} eval split, {count} windows of {d.seq_len} tokens over {documents} of "
                     f"{len(eval_docs)} documents{bos_label}")
        else:
            evaluate = lambda m: _with(whole(m), placement="whole split", eval_documents=len(eval_docs),  # noqa: E731
                                       eval_split_documents=len(eval_docs), bos=bos is not None)
            label = f"{eval_name} eval split, all {len(eval_docs)} documents, seq {d.seq_len} stride {d.stride}{bos_label}"
        score_ids = sdata.document_tokens(tokenizer, splits.score)
        cache: dict[int, Calibration] = {}

        def calibration(seed: int) -> Calibration:
            if seed not in cache:
                rng, tag = _calibration_rng(d, seed)
                drawn = sdata.draw_windows([len(ids) for ids in score_ids], text_len, d.batch_size * d.score_batches,
                                           rng, d.calibration_documents)
                blocks = sdata.window_tensor(score_ids, drawn, text_len, bos)
                names = [splits.score[doc].name for doc, _ in drawn]
                record = {"mode": d.calibration, "draw": tag, "documents": sorted(set(names)),
                          "windows": [[name, start] for name, (_, start) in zip(names, drawn)]}
                key = (f"calib/{d.source}:split{d.split_seed}:{tag}:seq{d.seq_len}:bos{int(bos is not None)}:"
                       f"b{d.batch_size}x{d.score_batches}:docs{d.calibration_documents}")
                cache[seed] = Calibration(sdata.batches(blocks, d.batch_size), key, record)
            return cache[seed]

        return Prepared(
            task=self.name,
            key=(f"ppl/{eval_name}:split{d.split_seed}:seq{d.seq_len}:stride{d.stride}:tok{d.eval_tokens}:"
                 f"bos{int(bos is not None)}:spread"),
            label=label,
            calibration=calibration,
            train_batches=lambda batch_size: sdata.batches(train_blocks, batch_size),
            evaluate=evaluate,
            evaluate_full=lambda m: _with(whole(m), placement="whole split", eval_documents=len(eval_docs),
                                          bos=bos is not None),
            full_key=f"ppl-full/{eval_name}:split{d.split_seed}:seq{d.seq_len}:stride{d.stride}:bos{int(bos is not None)}",
            full_share=len(stream) / d.stride / (count if d.eval_tokens else len(stream) / d.stride),
        )


def _with(metric: seval.Metric, **protocol: Any) -> seval.Metric:
    """The metric with more fields in its protocol record."""
    return replace(metric, protocol={**metric.protocol, **protocol})


@register_task
class STSB(Task):
    """Encoders: sentences for scoring (drawn per seed over the score split) and distillation, Spearman on
    STS-B test (a seeded sample if asked)."""

    name = "stsb"
    causal = False

    def prepare(self, dense: nn.Module, tokenizer: Any, d: Any) -> Prepared:
        splits = sdata.split_documents(sdata.load_documents(d.source), seed=d.split_seed)
        batches = lambda texts, size: sdata.sentence_batches(tokenizer, texts, size, d.seq_len)  # noqa: E731
        train_sentences = sdata.sentences(splits.train, limit=8192, seed=d.split_seed)
        pairs = seval.load_stsb("test")  # read once per task; sts_spearman samples from it
        shown = min(d.sts_pairs, len(pairs)) if d.sts_pairs else len(pairs)
        score_sentences = sdata.sentences_by_document(splits.score)  # [(document index, sentence)]
        cache: dict[int, Calibration] = {}

        def calibration(seed: int) -> Calibration:
            if seed not in cache:
                rng, tag = _calibration_rng(d, seed)
                count = d.batch_size * d.score_batches
                if count > len(score_sentences):
                    raise ValueError(f"score_batches: {d.score_batches} batches of {d.batch_size} sentences is more "
                                     f"than the {len(score_sentences)} sentences of the score split")
                documents = sorted({doc for doc, _ in score_sentences})
                if d.calibration_documents:
                    if d.calibration_documents > len(documents):
                        raise ValueError(f"calibration_documents: {d.calibration_documents} is more than the "
                                         f"{len(documents)} documents of the score split")
                    documents = sorted(rng.sample(documents, d.calibration_documents))
                chosen = set(documents)
                pool = [i for i, (doc, _) in enumerate(score_sentences) if doc in chosen]
                drawn = sorted(rng.sample(pool, min(count, len(pool))))
                texts = [score_sentences[i][1] for i in drawn]
                names = sorted({splits.score[score_sentences[i][0]].name for i in drawn})
                record = {"mode": d.calibration, "draw": tag, "documents": names, "sentences": drawn}
                key = (f"calib-sent/{d.source}:split{d.split_seed}:{tag}:len{d.seq_len}:"
                       f"b{d.batch_size}x{d.score_batches}:docs{d.calibration_documents}")
                cache[seed] = Calibration(batches(texts, d.batch_size), key, record)
            return cache[seed]

        return Prepared(
            task=self.name,
            key=f"stsb/test:{d.sts_pairs or 'all'}:seed{d.split_seed}",
            label=f"stsb test split, {shown} pairs" + (f" (seeded sample, seed {d.split_seed})" if d.sts_pairs else ""),
            calibration=calibration,
            train_batches=lambda batch_size: batches(train_sentences, batch_size),
            evaluate=lambda m: seval.sts_spearman(m, tokenizer, pairs=pairs, sample=d.sts_pairs, seed=d.split_seed),
            evaluate_full=lambda m: seval.sts_spearman(m, tokenizer, pairs=pairs, sample=0, seed=d.split_seed),
            full_key="stsb/test:all",
            teacher=dense,
            full_share=len(pairs) / (d.sts_pairs or len(pairs)),
        )


def prepare_task(name: str, dense: nn.Module, tokenizer: Any, d: Any) -> Prepared:
    """The named task (or, for "auto", the first that fits the model), prepared for this model and data."""
    get_adapter(dense)  # unsupported architectures fail here, before any data work
    sdata.check_seq_len(dense, d.seq_len)
    if name == "auto":
        fitting = [n for n in TASKS.in_order() if TASKS.get(n).fits(dense)]
        if not fitting:
            raise ValueError(f"task: no registered task fits {type(dense).__name__}; tasks: {', '.join(TASKS.names())}")
        name = fitting[0]
    task = TASKS.get(name)
    if not task.fits(dense):
        raise ValueError(f"task: {name!r} does not fit {type(dense).__name__} (a {dense.config.model_type} model)")
    return task.prepare(dense, tokenizer, d)

