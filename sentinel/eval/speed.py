"""Size and speed: unique parameter count, forward throughput, and per-stage wall time."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from sentinel.models.device import model_device
from sentinel.models import head_layout


def count_parameters(model: nn.Module) -> int:
    """Number of unique parameter elements (tied weights, e.g. GPT-2's embedding and LM head, count once)."""
    # model.parameters() already de-duplicates by identity; the set keeps that explicit
    unique = {id(p): p for p in model.parameters()}
    return sum(p.numel() for p in unique.values())


def forward_flops(model: nn.Module, seq_len: int) -> float:
    """FLOPs (2 per multiply-add) of one forward pass over one sequence of `seq_len` tokens.

    Counts every linear layer (nn.Linear and GPT-2's Conv1D, the LM head included; embedding lookups are
    free) once per token, plus attention's two seq_len x seq_len products (Q K^T and A V) per query head.
    The ratio dense / pruned is the ideal speedup of a pruned layout: what removing the heads' weights and
    attention maps saves, before kernel efficiency and memory traffic decide what is measured. A masked
    model keeps every weight, so its FLOPs (and ideal speedup, 1) are the dense ones.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len: {seq_len} must be >= 1")
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)))
    layout = head_layout(model)
    attention = 2 * seq_len * seq_len * layout.head_dim * sum(layout.heads)  # multiply-adds: QK^T and AV
    return float(2 * (linear * seq_len + attention))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(
    model: nn.Module,
    *,
    seq_len: int,
    batch_size: int = 1,
    warmup: int = 2,
    iters: int = 5,
    device: torch.device | str | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Forward-only tokens per second on random token ids, warm-up excluded.

    Args:
        model: any transformers model; it is put in eval mode and run under torch.inference_mode.
        seq_len: tokens per sequence.
        batch_size: sequences per forward pass.
        warmup: untimed forward passes first (allocator, kernels, caches).
        iters: timed forward passes.
        device: where to run; default the model's device.
        vocab_size: ids are drawn from [0, vocab_size); default `model.config.vocab_size`.
        seed: seeds the private generator that draws the ids.
    Returns:
        {"tokens_per_s", "seconds_per_batch", "seq_len", "batch_size", "iters", "warmup"}.
    """
    for name, value, low in (("seq_len", seq_len, 1), ("batch_size", batch_size, 1), ("iters", iters, 1)):
        if value < low:
            raise ValueError(f"{name}: {value} must be >= {low}")
    if warmup < 0:
        raise ValueError(f"warmup: {warmup} must be >= 0")
    device = torch.device(device) if device is not None else model_device(model)
    vocab_size = vocab_size or model.config.vocab_size
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).to(device)  # [B, T]
    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            model(input_ids=ids)
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            model(input_ids=ids)
        _sync(device)  # CUDA kernels are asynchronous: wait before reading the clock
        elapsed = time.perf_counter() - start
    seconds = elapsed / iters
    return {
        "tokens_per_s": batch_size * seq_len / seconds,
        "seconds_per_batch": seconds,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "iters": iters,
        "warmup": warmup,
    }


class Stopwatch:
    """Wall time per named stage, into a dict; a stage timed twice accumulates.

    >>> timings = {}
    >>> watch = Stopwatch(timings)
    >>> with watch("score"):  # same as watch.timed("score")
    ...     pass
    >>> sorted(timings)
    ['score']

    Args:
        seconds: the dict to record into (default a new one, at `.seconds`).
        device: a CUDA device to synchronise before reading the clock (kernels run asynchronously).
    """

    def __init__(self, seconds: dict[str, float] | None = None, device: torch.device | str | None = None) -> None:
        self.seconds: dict[str, float] = seconds if seconds is not None else {}
        self._device = torch.device(device) if device is not None else None

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Adds the wall time of the `with` body to `seconds[stage]` (also when the body raises)."""
        if self._device is not None:
            _sync(self._device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._device is not None:
                _sync(self._device)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    __call__ = timed


@contextlib.contextmanager
def timed(stage: str, into: dict[str, float]) -> Iterator[None]:
    """Adds the wall time of the `with` body to `into[stage]`, for callers that keep their own dict."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[stage] = into.get(stage, 0.0) + time.perf_counter() - start


def compare_throughput(
    dense: nn.Module, pruned: nn.Module, *, seq_len: int, batch_size: int = 1, rounds: int = 3, iters: int = 3,
    device: torch.device | str | None = None,
) -> list[tuple[float, float]]:
    """Forward tokens/s of two models measured alternately, `rounds` times: (dense, pruned) per round.

    Alternating exposes both models to the same background load, so the ratio within a round is the comparable
    number; the spread of the rounds' ratios is what a speedup is reported with (median, min-max), never one timing.
    """
    out = []
    for round_ in range(rounds):
        warmup = 1 if round_ == 0 else 0  # later rounds run on warm caches and allocators
        out.append(tuple(throughput(model, seq_len=seq_len, batch_size=batch_size, warmup=warmup, iters=iters,
                                    device=device)["tokens_per_s"] for model in (dense, pruned)))
    return out  # type: ignore[return-value]


@contextlib.contextmanager
def every_core() -> Iterator[int]:
    """torch on every core this process may run on, for a timing taken while nothing else on the node computes (a
    trial packed on fewer cores measures speed as the node gives it, the same as an unpacked one); restored after.
    Yields the thread count."""
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or before)
    torch.set_num_threads(cores)
    try:
        yield cores
    finally:
        torch.set_num_threads(before)
