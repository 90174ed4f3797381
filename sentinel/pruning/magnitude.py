"""Weight magnitude per head: ||W_Q^h||_F + ||W_K^h||_F + ||W_V^h||_F + ||W_O^h||_F.

GQA (Llama, Mistral, Qwen2): query head h reads KV head h // group_size. Each query head is charged the
FULL norm of its group's K and V rows, not a 1/group_size share: the score is the size of every weight
the head reads, and those K/V rows are all read by it (and all disappear only when the whole group is
removed). Within a group the K/V term is then the same for every head, so the ranking inside a group
comes from Q and O alone, while groups differ by their K/V.
"""
from __future__ import annotations

import torch
from torch import nn

from sentinel.models import head_layout
from sentinel.pruning.base import Batch, HeadScores, register_strategy, score_grid
from sentinel.pruning.weights import layer_head_weights


def layer_magnitudes(model: nn.Module, layer: int) -> torch.Tensor:
    """[heads] float32: summed Frobenius norms of each head's Q, K, V rows and O columns."""
    w = layer_head_weights(model, layer)
    norm = lambda t: torch.linalg.vector_norm(t.float(), dim=(1, 2))  # [n] one Frobenius norm per slice
    kv = (norm(w.k) + norm(w.v)).repeat_interleave(w.group_size)  # [heads] group's K/V norm, in full
    return norm(w.q) + kv + norm(w.o)


def magnitude_matrix(model: nn.Module) -> torch.Tensor:
    """Float32 CPU [layers, max heads] of per-head weight norms (NaN for missing heads)."""
    return score_grid([layer_magnitudes(model, layer) for layer in range(head_layout(model).num_layers)])


@register_strategy("magnitude", uses_data=False)
def magnitude_scores(model: nn.Module, batches: list[Batch], *, generator: torch.Generator) -> HeadScores:
    """Summed Frobenius norms of the head's W_Q, W_K, W_V rows and W_O columns (large = important); no data."""
    return HeadScores(scores=magnitude_matrix(model), strategy="magnitude", meta={"forward_passes": 0, "backward_passes": 0})
