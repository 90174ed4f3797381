"""Perplexity of a causal LM on one token stream, with the sliding-window protocol.

The protocol is the one of the transformers perplexity guide (docs: "Perplexity of fixed-length
models"): windows of up to `seq_len` tokens start every `stride` tokens; in each window only the
tokens not scored by an earlier window (the last `trg_len = end - prev_end`) are scored, the rest is
context. Perplexity is exp(total NLL / total predicted tokens) over the whole stream. We sum token
cross-entropies ourselves, so the count of predicted tokens is exact: the label shift means the
first token of a window is never predicted, which (for stride < seq_len) only loses the first token
of the stream, and for stride == seq_len loses the first token of every window.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sentinel.models.device import model_device
from sentinel.eval.metric import Metric

IGNORE = -100  # the label value transformers' losses skip


@dataclass(frozen=True)
class Window:
    begin: int  # first token of the window (context starts here)
    end: int  # one past the last token
    trg_len: int  # the last trg_len tokens are scored

    @property
    def length(self) -> int:
        return self.end - self.begin


def windows(n_tokens: int, seq_len: int, stride: int) -> list[Window]:
    """The guide's windows over a stream of `n_tokens`: begin every `stride`, stop at the first that reaches the end."""
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + seq_len, n_tokens)
        out.append(Window(begin, end, end - prev_end))
        prev_end = end
        if end == n_tokens:
            break
    return out


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings allow, if the config says."""
    config = model.config
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return None


def _validate(model: nn.Module, ids: torch.Tensor, seq_len: int, stride: int) -> None:
    if ids.ndim != 1:
        raise ValueError(f"ids: expected a 1-D token stream, got shape {tuple(ids.shape)}")
    if ids.numel() < 2:
        raise ValueError(f"ids: {ids.numel()} token(s); perplexity needs at least 2 (one to predict from)")
    if seq_len < 2:
        raise ValueError(f"seq_len: {seq_len} must be >= 2")
    limit = max_positions(model)
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len: {seq_len} exceeds the model's max positions {limit}")
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride: {stride} must be in (0, seq_len={seq_len}]")


def _labels(inputs: torch.Tensor, trg_lens: list[int]) -> torch.Tensor:
    """Labels for a batch of equal-length windows [B, T]: IGNORE except on each row's last trg_len tokens."""
    labels = inputs.clone()
    for row, trg_len in enumerate(trg_lens):
        labels[row, : inputs.shape[1] - trg_len] = IGNORE
    return labels


def _nll_sum(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             rows: list[list[float]] | None = None) -> tuple[float, int]:
    """Summed next-token NLL and number of predicted tokens of one batch [B, T]; with `rows`, each row's
    [summed NLL, predicted tokens] is appended to it (the evaluation units)."""
    logits = model(input_ids=inputs).logits  # [B, T, V]
    # position t predicts token t + 1: drop the last logit and the first label
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    if rows is not None:  # per row beside the batch sum, which stays the value (the same reduction as before)
        per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        counts = (labels != IGNORE).sum(dim=1)
        rows += [[float(n), float(c)] for n, c in zip(per_token.double().sum(dim=1).tolist(), counts.tolist())]
    return nll.item(), int((labels != IGNORE).sum())


def perplexity(
    model: nn.Module,
    ids: torch.Tensor,
    *,
    seq_len: int,
    stride: int,
    batch_size: int = 8,
    dataset: str = "",
    split: str = "",
    device: torch.device | str | None = None,
) -> Metric:
    """Sliding-window perplexity of a causal LM on one token stream.

    Args:
        model: a causal LM (returns `.logits`); put in eval mode, run under torch.inference_mode.
        ids: LongTensor[N], the token stream (documents already joined).
        seq_len: window length in tokens (at most the model's max positions).
        stride: tokens between window starts, in (0, seq_len]; stride < seq_len gives every scored
            token at least seq_len - stride tokens of context.
        batch_size: windows per forward pass (full windows are batched; the shorter tail runs alone).
        dataset, split: recorded in the protocol.
        device: where to run; default the model's device.
    Returns:
        Metric("perplexity", exp(total NLL / predicted tokens), higher_is_better=False) with protocol
        {dataset, split, seq_len, stride, tokens, windows}.
    """
    _validate(model, ids, seq_len, stride)
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} must be >= 1")
    device = torch.device(device) if device is not None else model_device(model)
    spans = windows(ids.numel(), seq_len, stride)
    # windows of the same length share a forward pass; only the tail may be shorter
    by_length: dict[int, list[Window]] = {}
    for span in spans:
        by_length.setdefault(span.length, []).append(span)
    total_nll, total_tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for group in by_length.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                inputs = torch.stack([ids[w.begin : w.end] for w in chunk]).to(device)  # [B, T]
                nll, count = _nll_sum(model, inputs, _labels(inputs, [w.trg_len for w in chunk]))
                total_nll, total_tokens = total_nll + nll, total_tokens + count
    # exp(total NLL / tokens), not the mean of per-batch perplexities
    value = float(torch.tensor(total_nll / total_tokens, dtype=torch.float64).exp())
    protocol = {
        "dataset": dataset,
        "split": split,
        "seq_len": seq_len,
        "stride": stride,
        "tokens": total_tokens,
        "windows": len(spans),
    }
    return Metric(name="perplexity", value=value, higher_is_better=False, protocol=protocol, scale="log")


def window_perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int = 8,
    dataset: str = "",
    split: str = "",
    extra: dict | None = None,
    device: torch.device | str | None = None,
) -> Metric:
    """Perplexity over separate windows (rows of `windows`, each scored on its own: its first token is context,
    a BOS token when the caller put one there, every later token is predicted). Used for windows spread over a
    split, where a sliding stream would join unrelated text.

    Args:
        windows: LongTensor[k, T], T at most the model's max positions.
        extra: more protocol fields (placement, documents).
    Returns:
        Metric("perplexity", exp(total NLL / predicted tokens)) with protocol {dataset, split, seq_len, tokens,
        windows, **extra} and units: each window's [summed NLL, predicted tokens].
    """
    if windows.ndim != 2 or windows.shape[1] < 2 or windows.shape[0] < 1:
        raise ValueError(f"windows: expected [k >= 1, T >= 2] token ids, got shape {tuple(windows.shape)}")
    limit = max_positions(model)
    if limit is not None and windows.shape[1] > limit:
        raise ValueError(f"seq_len: {windows.shape[1]} exceeds the model's max positions {limit}")
    device = torch.device(device) if device is not None else model_device(model)
    total_nll, total_tokens, units = 0.0, 0, []
    model.eval()
    with torch.inference_mode():
        for start in range(0, windows.shape[0], batch_size):
            inputs = windows[start: start + batch_size].to(device)
            nll, count = _nll_sum(model, inputs, inputs.clone(), units)
            total_nll, total_tokens = total_nll + nll, total_tokens + count
    value = float(torch.tensor(total_nll / total_tokens, dtype=torch.float64).exp())
    protocol = {"dataset": dataset, "split": split, "seq_len": int(windows.shape[1]), "tokens": total_tokens,
                "windows": int(windows.shape[0]), **(extra or {})}
    return Metric(name="perplexity", value=value, higher_is_better=False, protocol=protocol, scale="log", units=units)
