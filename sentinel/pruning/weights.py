"""Each head's slice of the attention weights, read through the architecture adapter.

One convention for every family: a projection's weight is seen as Linear's [out, in]. GPT-2's Conv1D
stores [in, out] (outputs are COLUMNS), so it is transposed first. Which features belong to which head is
`sentinel.models.layout.head_slices`, the geometry masking and removal use too. Only weights are returned: biases are not per-head for the output
projection, and the strategies here score weights only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from sentinel.models import get_adapter, head_layout
from sentinel.models.layout import blocks, head_slices


@dataclass(frozen=True)
class LayerHeadWeights:
    """One layer's attention weights split by head (copies)."""

    q: torch.Tensor  # [heads, head_dim, in]: query head h's output rows
    k: torch.Tensor  # [kv_heads, head_dim, in]
    v: torch.Tensor  # [kv_heads, head_dim, in]
    o: torch.Tensor  # [heads, out, head_dim]: the output-projection columns that read head h

    @property
    def group_size(self) -> int:
        return self.q.shape[0] // self.k.shape[0]


def out_in_weight(module: nn.Module) -> torch.Tensor:
    """The weight as [out, in] whatever the layer type (Conv1D keeps [in, out])."""
    weight = module.weight.detach()
    return weight.t() if isinstance(module, Conv1D) else weight


def layer_head_weights(model: nn.Module, layer: int) -> LayerHeadWeights:
    """Splits layer `layer`'s q/k/v rows and o columns by head, for any family in the adapter registry, through
    the same per-head geometry that masking and removal use (sentinel.models.layout.head_slices).

    Args:
        model: a transformers model with a head adapter.
        layer: layer index.
    Returns:
        LayerHeadWeights with q, k, v as [heads, head_dim, in] and o as [heads, out, head_dim].
    """
    adapter, layout = get_adapter(model), head_layout(model)
    block = blocks(model, adapter)[layer]
    d = layout.head_dim
    split = {}
    for piece in head_slices(adapter, layout, layer, list(range(layout.heads[layer])), list(range(layout.kv_heads[layer]))):
        weight = out_in_weight(block.get_submodule(piece.path))  # [out, in]
        index = piece.index.to(weight.device)
        if piece.outputs:  # rows of head h: [heads, head_dim, in]
            split[piece.role] = weight.index_select(0, index).unflatten(0, (-1, d))
        else:  # columns of head h: [heads, out, head_dim]
            split[piece.role] = weight.index_select(1, index).unflatten(1, (-1, d)).permute(1, 0, 2)
    return LayerHeadWeights(**split)
