"""Physical removal of heads: the projections sliced to the kept heads' features (every family through
`head_slices`), whole attention sublayers of Llama-family layers, bias compensation (FLAP: the removed heads'
calibration means through W_O into its bias), and provenance (which original heads each layer still holds).

Heads are named by their original ids, and a GQA request must leave every kept KV group the same number of query
heads: both rules are sentinel.models.layout's (its docstring says them), as masking reads them too.
"""
from __future__ import annotations

import functools
import warnings
from typing import Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D, prune_linear_layer

from sentinel.families import families
from sentinel.models.activations import output_means
from sentinel.models.adapters import AttentionAdapter, get_adapter
from sentinel.models.layout import (Batch, HeadLayout, HeadRequest, HeadSlice, attention_modules, blocks,
                                    checked_request, feature_rows, head_layout, head_slices, kept_groups,
                                    original_head_count, output_projections, to_current, weight_dim)


# Families whose attention module can lose every head (sentinel.families: `empty_layers`)
EMPTY_LAYER_FAMILIES = families("empty_layers")


class _EmptyAttention:
    """An attention sublayer with every head removed (He et al. 2024's dropped attention): no projections left to
    compute, nothing read from or written to the KV cache; it adds its output projection's bias (bias
    compensation's) or zeros to the residual stream, which is what masking all its heads gives."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        nothing = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        return self.o_proj(nothing), None


@functools.lru_cache(maxsize=None)
def _empty_class(cls: type) -> type:
    return type(f"Empty{cls.__name__}", (_EmptyAttention, cls), {"__module__": __name__})


def _check_empty_layers(model: nn.Module, layout: HeadLayout, request: dict[int, list[int]]) -> None:
    """Removing every head of a layer: a family whose attention can be empty, and never layer 0 (transformers'
    cache and llama.cpp read the sequence length and the head size from layer 0)."""
    emptied = [layer for layer, removed in request.items() if len(removed) >= layout.heads[layer]]
    if not emptied:
        return
    if model.config.model_type not in EMPTY_LAYER_FAMILIES:
        n = layout.heads[emptied[0]]
        raise ValueError(f"layer {emptied[0]}: removing all {n} heads would empty the layer; at most {n - 1} may be "
                         f"removed (a whole attention sublayer goes only in {', '.join(EMPTY_LAYER_FAMILIES)})")
    if 0 in emptied:
        raise ValueError("layer 0: its attention cannot be removed whole (the KV cache and llama.cpp read the sequence "
                         "length and head size from layer 0); remove heads of later layers")


def _keep(module: nn.Module, index: torch.Tensor, outputs: bool) -> nn.Module:
    """The same layer with only the output (q/k/v rows and bias) or input (o columns; bias whole) features `index`."""
    if isinstance(module, Conv1D):  # weight is [in, out]
        dim = weight_dim(module, outputs)
        new = Conv1D(len(index) if outputs else module.nf, module.weight.shape[0] if outputs else len(index))
        new.weight = nn.Parameter(module.weight.detach().index_select(dim, index).clone())
        new.bias = nn.Parameter((module.bias.detach()[index] if outputs else module.bias.detach()).clone())
        return new.to(module.weight.device)
    with warnings.catch_warnings():  # no features left (a whole sublayer): torch warns that init of an empty weight is a no-op
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return prune_linear_layer(module, index.to(module.weight.device), dim=0 if outputs else 1).to(module.weight.dtype)


def _prune_block(block: nn.Module, adapter: AttentionAdapter, layout: HeadLayout, layer: int, kept: list[int],
                 kept_kv: list[int]) -> None:
    kept_features: dict[str, list[HeadSlice]] = {}
    for piece in head_slices(adapter, layout, layer, kept, kept_kv):  # a fused qkv gets its three slices at once
        kept_features.setdefault(piece.path, []).append(piece)
    for path, pieces in kept_features.items():  # in feature order: [q | k | v] or per head, as the layer holds them
        index = torch.cat([p.index for p in pieces]).sort().values
        block.set_submodule(path, _keep(block.get_submodule(path), index, pieces[0].outputs))

    attention = block.get_submodule(adapter.attention)
    if not kept:  # the whole sublayer: its forward becomes the empty one (state_dict names unchanged)
        attention.__class__ = _empty_class(type(attention))
    for attr, rule in adapter.attrs.items() if kept else ():
        setattr(attention, attr, rule(len(kept), len(kept_kv), layout.head_dim))
    # remember which original heads survive, so prunes compose and save_pruned can write them out
    attention.sentinel_heads = [attention.sentinel_heads[h] for h in kept]
    attention.sentinel_kv_heads = [attention.sentinel_kv_heads[g] for g in kept_kv]


def _compensate(block: nn.Module, adapter: AttentionAdapter, layout: HeadLayout, removed: list[int],
                mean: torch.Tensor) -> None:
    """Adds what the removed heads output on average, read through the output projection, to its bias:
    b += W_O[:, cols] @ mean[cols] (cols: the removed heads' channels). A bias is created where there is none."""
    o = block.get_submodule(adapter.o)
    cols = feature_rows(removed, layout.head_dim).to(o.weight.device)
    weight, mean = o.weight.detach().double(), mean.to(o.weight.device)[cols]
    shift = mean @ weight[cols, :] if isinstance(o, Conv1D) else weight[:, cols] @ mean  # [out]
    if o.bias is None:
        o.bias = nn.Parameter(torch.zeros(shift.shape[0], dtype=o.weight.dtype, device=o.weight.device))
    with torch.no_grad():
        o.bias += shift.to(o.bias.dtype)


def check_compensable(model: nn.Module) -> None:
    """A ValueError unless every output projection can take a bias (nn.Linear or GPT-2's Conv1D) and the model reads
    its calibration batches (input_ids and attention_mask) with every layer (not an encoder-decoder: T5's decoder
    layers read other tokens)."""
    if get_adapter(model).stacks:
        raise ValueError(f"compensate: {model.config.model_type} is an encoder-decoder; its decoder layers do not see "
                         "the calibration tokens, so their means are undefined here (encoders and decoders only)")
    for layer, o in enumerate(output_projections(model)):
        if not isinstance(o, (nn.Linear, Conv1D)):
            raise ValueError(f"compensate: layer {layer}'s output projection is a {type(o).__name__}, which cannot take "
                             "a bias; bias compensation needs nn.Linear or Conv1D")


def _ensure_provenance(model: nn.Module, layout: HeadLayout, adapter: AttentionAdapter) -> None:
    for layer, attention in enumerate(attention_modules(model, adapter)):
        if getattr(attention, "sentinel_heads", None) is None:
            attention.sentinel_heads = list(range(layout.heads[layer]))
            attention.sentinel_kv_heads = list(range(layout.kv_heads[layer]))


def prune_heads(model: nn.Module, heads: HeadRequest, *, ids: str = "original",
                compensate: Sequence[Batch] | None = None, adapter: AttentionAdapter | None = None) -> nn.Module:
    """Physically removes heads in place and returns the model.

    Slices q/k/v output rows (and biases) and the output projection's input columns, then updates the
    attributes the forward pass reads and `config.pruned_heads`. The whole request is validated before
    anything changes.

    Args:
        model: a transformers model whose `config.model_type` has an adapter.
        heads: {layer: [head, ...]}.
        ids: "original" (default: ids in the dense model, as transformers 4's prune_heads; heads already
            removed are ignored with a warning) or "current" (positions in the model as it is now).
        compensate: calibration batches for bias compensation (FLAP, An et al. 2024): each removed head's mean
            output over them, read through the output projection, is added to that projection's bias (created
            where the family has none, e.g. Llama's o_proj), so the layer's mean output on them is unchanged.
    Returns:
        The same model object, smaller.
    """
    adapter = adapter or get_adapter(model)
    layout = head_layout(model, adapter)
    request = checked_request(layout, heads, to_current(model, layout, heads, ids, adapter), True)
    _check_empty_layers(model, layout, request)
    if not request:
        return model  # every requested head was already gone (warned)
    plan = {layer: kept_groups(layout, layer, removed) for layer, removed in request.items()}
    means = None
    if compensate is not None:
        check_compensable(model)
        means = output_means(model, compensate)  # of the model as it is, before anything is removed
    _ensure_provenance(model, layout, adapter)
    layer_blocks = blocks(model, adapter)
    for layer, (kept, kept_kv) in plan.items():
        if means is not None:
            removed = [h for h in range(layout.heads[layer]) if h not in set(kept)]
            _compensate(layer_blocks[layer], adapter, layout, removed, means[layer])
        _prune_block(layer_blocks[layer], adapter, layout, layer, kept, kept_kv)
    model.config.pruned_heads = pruned_heads_v4(model, adapter)
    if adapter.after_prune is not None:
        adapter.after_prune(model)
    return model


def pruned_heads_v4(model: nn.Module, adapter: AttentionAdapter | None = None) -> dict[int, list[int]]:
    """{layer: [original head, ...]} removed so far: transformers 4's `config.pruned_heads`."""
    out = {}
    for layer, attention in enumerate(attention_modules(model, adapter)):
        kept = getattr(attention, "sentinel_heads", None)
        if kept is not None:
            n = original_head_count(model, layer, attention, len(kept))
            removed = sorted(set(range(n)) - set(kept))
            if removed:
                out[layer] = removed
    return out


def kept_heads(model: nn.Module) -> dict[int, dict[str, list[int]]]:
    """For each layer, the original indices of the query and KV heads the model still has."""
    layout = head_layout(model)
    out = {}
    for layer, attention in enumerate(attention_modules(model)):
        out[layer] = {
            "heads": list(getattr(attention, "sentinel_heads", None) or range(layout.heads[layer])),
            "kv_heads": list(getattr(attention, "sentinel_kv_heads", None) or range(layout.kv_heads[layer])),
        }
    return out
