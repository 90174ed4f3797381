"""Where a model's heads are: its layout now (`head_layout`), the modules that hold them, which features of each
projection belong to which head (`head_slices`: the one geometry masking, removal, scoring and fine-tuning read),
and what a request of heads means (`validate_request`, `to_current`).

Head ids. `prune_heads` and `mask_heads` take *original* head ids by default, as transformers 4's
`prune_heads` did: head 3 of layer 0 is the head that was number 3 in the dense model, however many prunes
came before, so composed prunes cannot silently hit a different head. A head that is already gone is
ignored with a warning (v4's behaviour). `ids="current"` takes positions in the model as it is now (what
scores of an already-pruned model are indexed by). Each attention module remembers which original heads it
still holds (`sentinel_heads` / `sentinel_kv_heads`), and `config.pruned_heads` says which are gone, in v4's
format, so checkpoints load in either library.

GQA unit (Llama, Mistral, Qwen2): query head h reads KV head h // group_size (transformers'
`repeat_kv`). A removal request is honoured when every KV group that keeps any query head keeps the
*same number* of them; a group left with none is removed whole (its K/V rows go too). Removing whole
groups, or the same number of query heads from every group, both satisfy this. Anything else is a
ValueError naming the layer and the per-group counts it would leave.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from sentinel.models.adapters import AttentionAdapter, get_adapter

HeadRequest = Mapping[int, Iterable[int]]
Batch = Mapping[str, torch.Tensor]  # {"input_ids": [B, T], "attention_mask": [B, T]}


@dataclass(frozen=True)
class HeadLayout:
    """The heads of a model as it is now."""

    num_layers: int
    heads: tuple[int, ...]  # query heads per layer
    kv_heads: tuple[int, ...]  # key/value heads per layer (== heads unless GQA)
    head_dim: int

    @property
    def total_heads(self) -> int:
        return sum(self.heads)

    def group_size(self, layer: int) -> int:
        return self.heads[layer] // self.kv_heads[layer] if self.kv_heads[layer] else 1  # 1 for an empty layer


def blocks(model: nn.Module, adapter: AttentionAdapter | None = None) -> list[nn.Module]:
    """The model's layers in head-index order: one ModuleList, or (encoder-decoders) several stacks in turn,
    each block then being the submodule `suffix` of a stack's block."""
    adapter = adapter or get_adapter(model)
    if not adapter.stacks:
        return list(model.base_model.get_submodule(adapter.layers))
    return [block.get_submodule(suffix) for path, suffix in adapter.stacks for block in model.base_model.get_submodule(path)]


def attention_modules(model: nn.Module, adapter: AttentionAdapter | None = None) -> list[nn.Module]:
    """The per-layer attention modules (what returns attention probabilities under eager attention)."""
    adapter = adapter or get_adapter(model)
    return [block.get_submodule(adapter.attention) for block in blocks(model, adapter)]


def output_projections(model: nn.Module, adapter: AttentionAdapter | None = None) -> list[nn.Module]:
    adapter = adapter or get_adapter(model)
    return [block.get_submodule(adapter.o) for block in blocks(model, adapter)]


def _out_features(module: nn.Module) -> int:
    return module.nf if isinstance(module, Conv1D) else module.out_features


def _layer_layout(block: nn.Module, adapter: AttentionAdapter) -> tuple[int, int, int]:
    head_dim = int(getattr(block.get_submodule(adapter.attention), adapter.head_dim_attr))
    if adapter.qkv:
        heads = _out_features(block.get_submodule(adapter.qkv)) // (3 * head_dim)
        return heads, heads, head_dim
    heads = _out_features(block.get_submodule(adapter.q)) // head_dim
    kv_heads = _out_features(block.get_submodule(adapter.k)) // head_dim
    return heads, kv_heads, head_dim


def head_layout(model: nn.Module, adapter: AttentionAdapter | None = None) -> HeadLayout:
    """Number of layers, query heads and KV heads per layer (as the model is now), and head_dim. Every function here
    takes the model's adapter as an optional last argument (default: get_adapter(model)), as the fallback passes
    the candidate it verifies."""
    adapter = adapter or get_adapter(model)
    per_layer = [_layer_layout(block, adapter) for block in blocks(model, adapter)]
    return HeadLayout(
        num_layers=len(per_layer),
        heads=tuple(h for h, _, _ in per_layer),
        kv_heads=tuple(kv for _, kv, _ in per_layer),
        head_dim=per_layer[0][2],
    )


def validate_request(
    layout: HeadLayout, request: HeadRequest, *, allow_empty_layer: bool = False, allow_empty: bool = False
) -> dict[int, list[int]]:
    """Checks a {layer: [head, ...]} request and returns it normalised (sorted lists).

    Raises ValueError naming the layer/head and what is allowed; never changes anything.
    """
    if not isinstance(request, Mapping):
        raise ValueError(f"heads: expected a mapping {{layer: [head, ...]}}, got {type(request).__name__}")
    if not allow_empty and (
            not request or not any(list(v) if not isinstance(v, (str, bytes)) else [v] for v in request.values())):
        raise ValueError("heads: the request is empty; give at least one {layer: [head, ...]}")
    normalised: dict[int, list[int]] = {}
    for layer, heads in request.items():
        if not is_index(layer) or not 0 <= layer < layout.num_layers:
            raise ValueError(f"layer: {layer!r} is not a layer index in [0, {layout.num_layers - 1}]")
        if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
            raise ValueError(f"layer {layer}: expected a list of head indices, got {heads!r}")
        heads = list(heads)
        n = layout.heads[layer]
        for head in heads:
            if not is_index(head) or not 0 <= head < n:
                raise ValueError(f"layer {layer}: head {head!r} is not a head index in [0, {n - 1}]")
        if len(set(heads)) != len(heads):
            dupes = sorted({h for h in heads if heads.count(h) > 1})
            raise ValueError(f"layer {layer}: duplicate head indices {dupes}")
        if not allow_empty_layer and len(heads) >= n:
            raise ValueError(
                f"layer {layer}: removing all {n} heads would empty the layer; at most {n - 1} may be removed"
            )
        if heads:
            normalised[int(layer)] = sorted(int(h) for h in heads)
    return normalised


def is_index(value: object) -> bool:
    # bool is an int subclass; True as a head index is almost certainly a bug
    return isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point()
    )


def kept_groups(layout: HeadLayout, layer: int, removed: list[int]) -> tuple[list[int], list[int]]:
    """Kept query heads and kept KV heads of one layer, or a ValueError for an uneven GQA request."""
    group = layout.group_size(layer)
    kept = [h for h in range(layout.heads[layer]) if h not in set(removed)]
    per_group = [sum(1 for h in kept if h // group == g) for g in range(layout.kv_heads[layer])]
    nonzero = {c for c in per_group if c}
    if len(nonzero) > 1:
        raise ValueError(
            f"layer {layer}: GQA groups of {group} query heads would keep {per_group} heads; every kept group "
            f"must keep the same number (remove whole groups, or the same number of heads from each group)"
        )
    kept_kv = [g for g, c in enumerate(per_group) if c]
    return kept, kept_kv


def checked_request(layout: HeadLayout, asked: HeadRequest, current: HeadRequest, allow_empty_layer: bool) -> dict[int, list[int]]:
    """validate_request of the converted request; empty only when every head asked for was already gone."""
    emptied = bool(asked) and isinstance(current, Mapping) and not any(current.values()) and asked != current
    return validate_request(layout, current, allow_empty_layer=allow_empty_layer, allow_empty=emptied)


def original_head_count(model: nn.Module, layer: int, attention: nn.Module, current: int) -> int:
    provenance = getattr(attention, "sentinel_heads", None)
    if provenance is None:
        return current
    return max(int(getattr(model.config, "num_attention_heads", 0) or 0), max(provenance, default=-1) + 1)


def to_current(model: nn.Module, layout: HeadLayout, heads: HeadRequest, ids: str,
                adapter: AttentionAdapter) -> dict[int, list[int]]:
    """A request in original ids as positions in the current layout; already-removed heads are dropped with a
    warning (as transformers 4 did). Shape errors are left to validate_request, which names them."""
    if ids not in ("original", "current"):
        raise ValueError(f"ids: {ids!r} is not one of original, current")
    if ids == "current" or not isinstance(heads, Mapping):
        return heads  # type: ignore[return-value]
    modules = attention_modules(model, adapter)
    out, gone = {}, []
    for layer, wanted in heads.items():
        if not is_index(layer) or not 0 <= layer < layout.num_layers or isinstance(wanted, (str, bytes)) \
                or not isinstance(wanted, Iterable):
            out[layer] = wanted  # validate_request names the problem
            continue
        wanted = list(wanted)
        provenance = getattr(modules[layer], "sentinel_heads", None) or list(range(layout.heads[layer]))
        n = original_head_count(model, layer, modules[layer], layout.heads[layer])
        for head in wanted:
            if not is_index(head) or not 0 <= head < n:
                raise ValueError(f"layer {layer}: head {head!r} is not an original head index in [0, {n - 1}]")
        if len(set(map(int, wanted))) != len(wanted):
            raise ValueError(f"layer {layer}: duplicate head indices {sorted({h for h in wanted if wanted.count(h) > 1})}")
        position = {original: i for i, original in enumerate(provenance)}
        gone += [(int(layer), int(h)) for h in wanted if int(h) not in position]
        out[int(layer)] = [position[int(h)] for h in wanted if int(h) in position]
    if gone:
        warnings.warn(f"heads {gone} (layer, original head) were already pruned; ignored", stacklevel=3)
    return out


@dataclass(frozen=True)
class HeadSlice:
    """The features of one projection that belong to some heads of one layer: the one geometry that masking
    (weights frozen under a mask), removal, weight-magnitude scoring and fine-tuning all read."""

    path: str  # the projection, relative to the block
    role: str  # "q", "k", "v" or "o"
    outputs: bool  # True: output features (q/k/v rows and their bias); False: input features (o columns)
    index: torch.Tensor  # feature indices, ascending


def feature_rows(units: list[int], unit_size: int, offset: int = 0) -> torch.Tensor:
    return torch.tensor([offset + u * unit_size + i for u in units for i in range(unit_size)], dtype=torch.long)


def head_slices(adapter: AttentionAdapter, layout: HeadLayout, layer: int, heads: list[int],
                kv_heads: list[int]) -> list[HeadSlice]:
    """Where query heads `heads` and KV heads `kv_heads` of `layer` live: head h is features
    [h * head_dim, (h + 1) * head_dim) of q (and of o's inputs), KV head g the same rows of k and v. A fused
    qkv (GPT-2's c_attn) holds [q | k | v] along its outputs, without GQA; one grouped per head (GPT-NeoX)
    holds [q_h | k_h | v_h] for each head in turn."""
    d = layout.head_dim
    o = HeadSlice(adapter.o, "o", False, feature_rows(heads, d))
    if adapter.qkv and adapter.qkv_per_head:
        return [HeadSlice(adapter.qkv, role, True,
                          torch.tensor([h * 3 * d + offset + i for h in heads for i in range(d)], dtype=torch.long))
                for role, offset in (("q", 0), ("k", d), ("v", 2 * d))] + [o]
    if adapter.qkv:
        width = layout.heads[layer] * d
        return [HeadSlice(adapter.qkv, role, True, feature_rows(heads, d, offset))
                for role, offset in (("q", 0), ("k", width), ("v", 2 * width))] + [o]
    return [HeadSlice(adapter.q, "q", True, feature_rows(heads, d)), HeadSlice(adapter.k, "k", True, feature_rows(kv_heads, d)),
            HeadSlice(adapter.v, "v", True, feature_rows(kv_heads, d)), o]


def weight_dim(module: nn.Module, outputs: bool) -> int:
    """The weight dimension that indexes output (or input) features: Linear is [out, in], Conv1D [in, out]."""
    return (1 if outputs else 0) if isinstance(module, Conv1D) else (0 if outputs else 1)


def slice_parameters(block: nn.Module, piece: HeadSlice) -> list[tuple[nn.Parameter, int, torch.Tensor]]:
    """(parameter, dim, index) of a slice: the weight, and the bias for output features (o's bias is not per head)."""
    module = block.get_submodule(piece.path)
    index = piece.index.to(module.weight.device)
    out = [(module.weight, weight_dim(module, piece.outputs), index)]
    if piece.outputs and module.bias is not None:
        out.append((module.bias, 0, index))
    return out


def find_pruneable_heads_and_indices(heads: Iterable[int], n_heads: int, head_size: int,
                                     already_pruned_heads: Iterable[int]) -> tuple[set[int], torch.Tensor]:
    """transformers 4's helper of that name, for code written against it (docs/MIGRATION.md).

    Args:
        heads: original ids of the heads to prune.
        n_heads: heads the layer has now; head_size: features per head.
        already_pruned_heads: original ids removed earlier.
    Returns:
        (the original ids still present, to prune now; the indices of the features to keep, in the current layout).
    """
    gone = set(already_pruned_heads)
    heads = set(heads) - gone
    position = {h: h - sum(1 for g in gone if g < h) for h in heads}  # where an original head sits now
    kept = [p for p in range(n_heads) if p not in set(position.values())]
    return heads, feature_rows(kept, head_size)
