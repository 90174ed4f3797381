"""Attention entropy per head, streamed: each layer's probabilities are reduced to per-head sums as
soon as they are produced, and no attention map outlives its layer's forward call.

Entropy of one query position's attention row p over keys k: H(p) = -sum_k p_k log p_k (nats).
A head's score is minus its mean entropy over the non-padding query positions of the scoring data:
a diffuse (high-entropy) head is taken to be LESS important than a sharp one.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from sentinel.contract import boolean
from sentinel.models import attention_modules, get_adapter, head_layout
from sentinel.pruning.base import (
    Batch,
    HeadScores,
    eval_mode,
    model_device,
    register_strategy,
    score_grid,
    to_device,
)


class AttentionStats:
    """Per-layer, per-head running sums of attention entropy and the number of positions they cover.

    `entropy_sum[l]` [heads_l] sums H(p) over every non-padding query position; `count[l]` counts
    those positions. The `normalized_*` pair does the same for H(p) / log(n_keys), over positions that
    attend to more than one key. Float64 sums, so long runs do not lose precision.
    """

    def __init__(self, heads: tuple[int, ...]) -> None:
        self.heads = tuple(heads)
        self.entropy_sum = [torch.zeros(h, dtype=torch.float64) for h in heads]
        self.normalized_sum = [torch.zeros(h, dtype=torch.float64) for h in heads]
        self.count = [0] * len(heads)
        self.normalized_count = [0] * len(heads)
        self.batches = 0

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    def add(self, layer: int, probs: torch.Tensor, query: torch.Tensor, log_keys: torch.Tensor) -> None:
        """Folds one layer's attention probabilities into the sums.

        Args:
            layer: layer index.
            probs: [B, H, Tq, Tk] attention probabilities (rows sum to 1).
            query: [B, Tq] bool, True on non-padding query positions.
            log_keys: [B, Tq] log(number of keys the position may attend to); <= 0 where it has one key.
        """
        spread = query & (log_keys > 0)  # [B, Tq] positions whose normalised entropy is defined
        safe_log = torch.where(spread, log_keys, torch.ones_like(log_keys))
        for head in range(probs.shape[1]):  # one head at a time: temporaries stay 1/H of a map
            p = probs[:, head].float()  # [B, Tq, Tk]
            entropy = -torch.xlogy(p, p).sum(-1)  # [B, Tq]; xlogy(0, 0) = 0
            # masked_fill, not multiply: padded rows may hold NaN (all keys masked) and NaN * 0 is NaN
            self.entropy_sum[layer][head] += entropy.masked_fill(~query, 0).sum().double().cpu()
            self.normalized_sum[layer][head] += (entropy / safe_log).masked_fill(~spread, 0).sum().double().cpu()
        self.count[layer] += int(query.sum())
        self.normalized_count[layer] += int(spread.sum())

    def mean_entropy(self, normalize: bool = False) -> torch.Tensor:
        """Mean entropy per head, float32 CPU [layers, max heads] (NaN for missing heads or no positions)."""
        sums, counts = (self.normalized_sum, self.normalized_count) if normalize else (self.entropy_sum, self.count)
        per_layer = [s / c if c else torch.full_like(s, float("nan")) for s, c in zip(sums, counts)]
        return score_grid(per_layer)


def position_masks(attention_mask: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Which query positions count, and log of how many keys each may attend to.

    Args:
        attention_mask: [B, T], 1 on tokens, 0 on padding.
        causal: keys are limited to positions <= the query (decoders).
    Returns:
        query [B, T] bool, log_keys [B, T] float32.
    """
    mask = attention_mask.long()
    if causal:
        keys = mask.cumsum(-1)  # [B, T] non-padding keys at or before each position
    else:
        keys = mask.sum(-1, keepdim=True).expand_as(mask)  # [B, T] every non-padding key
    return mask.bool(), keys.clamp(min=1).float().log()


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Eager attention (the only backend that returns probabilities) for the duration; the exact previous
    setting of every config in the model is restored afterwards, even on error."""
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")}
    saved = {key: config._attn_implementation for key, config in configs.items()}
    try:
        model.set_attn_implementation("eager")  # transformers' public switch: every sub-config at once
        yield model
    finally:
        for key, config in configs.items():  # each config back to exactly what it said (sub-configs may differ)
            config._attn_implementation = saved[key]


def collect_stats(model: nn.Module, batches: list[Batch]) -> AttentionStats:
    """One eager forward pass per batch through the base model (no LM head: logits are not needed),
    with forward hooks that reduce each layer's probabilities to per-head sums on the spot."""
    causal = get_adapter(model).causal
    stats = AttentionStats(head_layout(model).heads)
    device = model_device(model)
    current: dict[str, torch.Tensor] = {}  # the masks of the batch in flight, read by the hooks

    def hook(layer: int):
        def reduce(module: nn.Module, args: tuple, output: tuple) -> None:
            probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None  # [B, H, Tq, Tk]
            if probs is None:
                raise ValueError(f"layer {layer}: the attention module returned no probabilities under eager attention")
            stats.add(layer, probs, current["query"], current["log_keys"])

        return reduce

    with eval_mode(model), eager_attention(model), torch.no_grad():
        handles = [m.register_forward_hook(hook(l)) for l, m in enumerate(attention_modules(model))]
        try:
            for batch in batches:
                batch = to_device(batch, device)
                current["query"], current["log_keys"] = position_masks(batch["attention_mask"], causal)
                model.base_model(**batch)
                stats.batches += 1
        finally:
            for handle in handles:
                handle.remove()
    return stats


@register_strategy("entropy", defaults={"normalize": False}, checks={"normalize": boolean})
def entropy_scores(model: nn.Module, batches: list[Batch], *, generator: torch.Generator, normalize: bool = False) -> HeadScores:
    """Minus the mean attention entropy per head (sharp heads score high).

    Args:
        normalize: divide each position's entropy by log(number of keys it may attend to), so that early
            positions of a causal model (few keys, low entropy by construction) do not look sharp.
    """
    stats = collect_stats(model, batches)
    mean = stats.mean_entropy(normalize)  # [L, H]
    meta = {"forward_passes": stats.batches, "backward_passes": 0, "positions": stats.count[0]}
    return HeadScores(scores=-mean, strategy="entropy", meta=meta)
