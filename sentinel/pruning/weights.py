"""Each head's slice of the attention weights, read through the architecture adapter.

One convention for every family: a projection's weight is seen as Linear's [out, in]. GPT-2's Conv1D
stores [in, out] (outputs are COLUMNS), so it is transposed first; its fused c_attn is split into
[q | k | v] along the outputs. Only weights are returned: biases are not per-head for the output
projection, and the strategies here score weights only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from sentinel.models import get_adapter, head_layout
from sentinel.models.heads import blocks


@dataclass(frozen=True)
class LayerHeadWeights:
    """One layer's attention weights split by head (views, no copies)."""

    q: torch.Tensor  # [heads, head_dim, in]: query head h's output rows
    k: torch.Tensor  # [kv_heads, head_dim, in]
    v: torch.Tensor  # [kv_heads, head_dim, in]
    o: torch.Tensor  # [heads, out, head_dim]: the output-projection columns that read head h

    @property
    def group_size(self) -> int:
        return self.q.shape[0] // self.k.shape[0]


def _module(block: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        block = getattr(block, name)
    return block


def out_in_weight(module: nn.Module) -> torch.Tensor:
    """The weight as [out, in] whatever the layer type (Conv1D keeps [in, out])."""
    weight = module.weight.detach()
    return weight.t() if isinstance(module, Conv1D) else weight


def layer_head_weights(model: nn.Module, layer: int) -> LayerHeadWeights:
    """Splits layer `layer`'s q/k/v rows and o columns by head, for any family in the adapter registry.

    Args:
        model: a transformers model with a head adapter.
        layer: layer index.
    Returns:
        LayerHeadWeights with q, k, v as [heads, head_dim, in] and o as [heads, out, head_dim].
    """
    adapter = get_adapter(model)
    layout = head_layout(model)
    block = blocks(model, adapter)[layer]
    d = layout.head_dim
    if adapter.qkv:
        q, k, v = out_in_weight(_module(block, adapter.qkv)).chunk(3, dim=0)  # each [E, in]
    else:
        q, k, v = (out_in_weight(_module(block, path)) for path in (adapter.q, adapter.k, adapter.v))
    o = out_in_weight(_module(block, adapter.o))  # [out, heads * d]
    return LayerHeadWeights(
        q=q.unflatten(0, (-1, d)),
        k=k.unflatten(0, (-1, d)),
        v=v.unflatten(0, (-1, d)),
        o=o.unflatten(1, (-1, d)).permute(1, 0, 2),
    )
