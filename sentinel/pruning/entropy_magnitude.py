"""The seed's entropy / magnitude pruning API, kept by name, rebuilt on the strategy library.

Seed semantics: heads are ranked globally (across layers); the highest mean attention entropy, or the
lowest weight magnitude, goes first. Pruning masks heads through `sentinel.models.mask_heads`, so the
model's output really changes; the HeadMask stays on the model as `model.sentinel_mask`, and repeated
calls compose by zeroing more gates in it (`update_mask`). Two refinements over the seed:
- `prune_ratio` is a fraction of the heads still active, chosen among them (already-masked heads are not
  counted or chosen again); the count is round-half-up(prune_ratio * active heads).
- no layer loses its last active head (`select_heads(..., min_heads_per_layer=1)`).
The mask is tied to the current layout: call `model.sentinel_mask.remove()` before `prune_heads`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from sentinel.models import HeadMask, mask_heads
from sentinel.pruning.base import validate_batches, validate_model
from sentinel.pruning.entropy import AttentionStats, collect_stats
from sentinel.pruning.magnitude import magnitude_matrix
from sentinel.pruning.selection import select_heads

UpdateFn = Callable[[torch.Tensor, torch.Tensor], Any]  # (gate tensor, new value) -> None


def _as_batch(item: Any) -> dict[str, torch.Tensor]:
    """A dataloader item (dict, (input_ids, attention_mask) tuple, or input_ids tensor) as a batch dict."""
    if isinstance(item, Mapping):
        ids = item["input_ids"]
        mask = item.get("attention_mask")
    elif isinstance(item, (tuple, list)):
        ids, mask = item[0], item[1] if len(item) > 1 else None
    else:
        ids, mask = item, None
    if isinstance(ids, torch.Tensor) and ids.ndim == 1:
        ids = ids[None]  # a single sequence [T] -> [1, T]
        mask = None if mask is None else mask[None]
    if mask is None and isinstance(ids, torch.Tensor):
        mask = torch.ones_like(ids)
    return {"input_ids": ids, "attention_mask": mask}


def collect_attention_distributions(model: nn.Module, dataloader: Iterable, num_batches: int = 5) -> AttentionStats:
    """Streams up to `num_batches` batches through the model under eager attention and keeps per-head
    entropy sums (an AttentionStats), never the attention maps themselves.

    Args:
        model: a transformers model with a head adapter.
        dataloader: yields dicts, (input_ids, attention_mask) tuples, or input_ids tensors [B, T].
        num_batches: how many batches to use (>= 1).
    Returns:
        AttentionStats: per-layer, per-head entropy sums and counts.
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches: {num_batches!r} is not an integer >= 1")
    validate_model(model)
    batches = []
    for item in dataloader:
        if len(batches) == num_batches:
            break
        batches.append(_as_batch(item))
    validate_batches(batches)
    return collect_stats(model, batches)


def compute_attention_entropy(distributions: AttentionStats, normalize: bool = False) -> torch.Tensor:
    """Mean attention entropy per head (nats), float32 [layers, heads].

    Args:
        distributions: what `collect_attention_distributions` returned.
        normalize: divide each position's entropy by log(number of keys it may attend to).
    """
    if not isinstance(distributions, AttentionStats):
        raise ValueError(f"distributions: expected AttentionStats, got {type(distributions).__name__}")
    return distributions.mean_entropy(normalize)


def entropy_based_pruning(
    model: nn.Module,
    distributions: AttentionStats,
    prune_ratio: float = 0.3,
    safe_update_tensor_fn: UpdateFn | None = None,
) -> list[tuple[int, int]]:
    """Masks the `prune_ratio` of active heads with the HIGHEST mean attention entropy.

    Returns:
        The newly masked [(layer, head), ...], in pruning order (most diffuse first).
    """
    entropy = compute_attention_entropy(distributions)
    return _prune_lowest(model, -entropy, prune_ratio, safe_update_tensor_fn)


def magnitude_based_pruning(
    model: nn.Module, prune_ratio: float = 0.3, safe_update_tensor_fn: UpdateFn | None = None
) -> list[tuple[int, int]]:
    """Masks the `prune_ratio` of active heads with the LOWEST summed Q/K/V/O weight norms.

    Returns:
        The newly masked [(layer, head), ...], in pruning order (smallest first).
    """
    validate_model(model)
    return _prune_lowest(model, magnitude_matrix(model), prune_ratio, safe_update_tensor_fn)


def _prune_lowest(
    model: nn.Module, scores: torch.Tensor, prune_ratio: float, update_fn: UpdateFn | None
) -> list[tuple[int, int]]:
    """Global selection of the lowest `scores` among the active (unmasked) heads, then masking."""
    if isinstance(prune_ratio, bool) or not isinstance(prune_ratio, (int, float)) or not 0 <= prune_ratio < 1:
        raise ValueError(f"prune_ratio: {prune_ratio!r} is not a fraction in [0, 1)")
    mask = _model_mask(model)
    active = [(mask.gates[layer].detach().cpu() != 0).nonzero().flatten().tolist() for layer in sorted(mask.gates)]
    if scores.shape[0] != len(active) or scores.shape[1] < max(len(mask.gates[l]) for l in mask.gates):
        raise ValueError(f"distributions: scores of shape {list(scores.shape)} do not match the model's heads")
    # the active heads of each layer packed to the left, NaN after: select_heads' layout for uneven layers
    packed = torch.full((len(active), scores.shape[1]), float("nan"))
    for layer, heads in enumerate(active):
        packed[layer, : len(heads)] = scores[layer, heads]
    selection = select_heads(packed, prune_ratio, policy="global", min_heads_per_layer=1)
    pruned = [(layer, active[layer][slot]) for layer, slots in selection.heads.items() for slot in slots]
    pruned.sort(key=lambda lh: (float(scores[lh]), lh))  # pruning order: least important first
    _apply_pruning(model, pruned, update_fn)
    return pruned


def _model_mask(model: nn.Module) -> HeadMask:
    """The HeadMask kept on the model (`model.sentinel_mask`), installed with all gates at 1 the first time."""
    mask = getattr(model, "sentinel_mask", None)
    if mask is None:
        mask = mask_heads(model, None)
        model.sentinel_mask = mask  # a plain attribute: HeadMask is not an nn.Module
    return mask


def update_mask(
    mask: HeadMask, heads: Iterable[tuple[int, int]], value: float = 0.0, safe_update_tensor_fn: UpdateFn | None = None
) -> HeadMask:
    """Sets the gates of `heads` [(layer, head), ...] to `value` (0 masks, 1 restores).

    Args:
        mask: a HeadMask (e.g. `model.sentinel_mask`).
        heads: (layer, head) pairs in the model's current layout.
        value: the new gate value.
        safe_update_tensor_fn: if given, called as fn(gate, new_gate) to write each changed layer's gate
            tensor; otherwise the gate is written in place under no_grad.
    Returns:
        The same mask.
    """
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if layer not in mask.gates or not 0 <= head < mask.gates[layer].numel():
            raise ValueError(f"heads: ({layer}, {head}) is not a (layer, head) of this mask")
        by_layer.setdefault(layer, []).append(head)
    for layer, layer_heads in by_layer.items():
        gate = mask.gates[layer]
        new = gate.detach().clone()
        new[layer_heads] = value
        if safe_update_tensor_fn is not None:
            safe_update_tensor_fn(gate, new)
        else:
            with torch.no_grad():
                gate.copy_(new)
    return mask


def _apply_pruning(
    model: nn.Module, heads: list[tuple[int, int]], safe_update_tensor_fn: UpdateFn | None = None
) -> list[tuple[int, int]]:
    """Masks `heads` [(layer, head), ...] in the model's kept HeadMask; returns `heads`."""
    update_mask(_model_mask(model), heads, 0.0, safe_update_tensor_fn)
    return list(heads)
