"""Masking heads: per-head gates applied by a forward pre-hook on each layer's output projection (its input is
[..., heads * head_dim], so one multiply masks heads for every family and works with SDPA). Reversible, and the
same heads and ids as physical removal (sentinel.models.removal)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from sentinel.models.activations import output_means
from sentinel.models.adapters import AttentionAdapter, get_adapter
from sentinel.models.layout import (Batch, HeadLayout, HeadRequest, checked_request, head_layout, output_projections,
                                    to_current)
from sentinel.models.removal import check_compensable


class HeadMask:
    """Per-head gates applied by a forward pre-hook on each layer's output projection.

    `gates[layer]` is a float tensor [heads]: 1 keeps a head, 0 masks it. With requires_grad=True the
    gates are leaves that gradients reach (gradient head importance reads `gates[layer].grad`).
    `fills[layer]` (bias compensation, optional) is [heads * head_dim]: what a masked head outputs instead of 0,
    x * gate + (1 - gate) * fill, so a masked model computes what the compensated pruned one does.
    """

    def __init__(self, model: nn.Module, gates: dict[int, torch.Tensor], head_dim: int,
                 fills: Sequence[torch.Tensor] | None = None, adapter: AttentionAdapter | None = None) -> None:
        self.gates = gates
        self.fills = fills
        self._handles = []
        for layer, proj in enumerate(output_projections(model, adapter)):
            self._handles.append(proj.register_forward_pre_hook(self._hook(layer, head_dim)))

    def _hook(self, layer: int, head_dim: int):
        def apply_gate(module: nn.Module, args: tuple):
            x = args[0].unflatten(-1, (-1, head_dim))  # [..., heads, head_dim], the head outputs
            gate = self.gates[layer].to(device=x.device, dtype=x.dtype)[:, None]
            x = x * gate
            if self.fills is not None:
                x = x + (1 - gate) * self.fills[layer].to(device=x.device, dtype=x.dtype).view(-1, head_dim)
            return (x.flatten(-2), *args[1:])

        return apply_gate

    def remove(self) -> None:
        """Detaches the hooks: the model computes exactly what it did before masking."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def masked(self) -> dict[int, list[int]]:
        return {l: torch.nonzero(g == 0).flatten().tolist() for l, g in self.gates.items() if (g == 0).any()}

    def __enter__(self) -> "HeadMask":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def mask_heads(model: nn.Module, heads: HeadRequest | torch.Tensor | None = None, *, requires_grad: bool = False,
               ids: str = "original", compensate: Sequence[Batch] | None = None,
               adapter: AttentionAdapter | None = None) -> HeadMask:
    """Masks heads without changing any weight. `heads=None` installs all-ones gates (for gradients).

    Args:
        model: a transformers model with a head adapter.
        heads: {layer: [head, ...]} to mask (ids per `ids`); or a float tensor [layers, heads] (or [heads], for
            every layer) of gates in the current layout, v4's `head_mask`: head h's output is multiplied by its
            gate, values other than 0 and 1 included, and gradients reach the tensor (its rows are the gates).
        requires_grad: make the gates leaves that gradients reach (for a mapping or None).
        ids: "original" (default) or "current"; see the module docstring.
        compensate: calibration batches: a masked head outputs its mean over them instead of 0 (bias compensation,
            as `prune_heads(..., compensate=)`; masked and pruned then agree).
    Masking every head of a layer is allowed here (it ablates the attention block); removal is not.
    """
    adapter = adapter or get_adapter(model)
    layout = head_layout(model, adapter)
    if compensate is not None:
        check_compensable(model)
    fills = None if compensate is None else output_means(model, compensate)
    if isinstance(heads, torch.Tensor):
        return HeadMask(model, _tensor_gates(layout, heads), layout.head_dim, fills, adapter)
    request = {} if heads is None else checked_request(layout, heads, to_current(model, layout, heads, ids, adapter), True)
    device = next(model.parameters()).device
    gates = {}
    for layer, n in enumerate(layout.heads):
        gate = torch.ones(n, device=device)
        gate[request.get(layer, [])] = 0.0
        gates[layer] = gate.requires_grad_(requires_grad)
    return HeadMask(model, gates, layout.head_dim, fills, adapter)


def _tensor_gates(layout: HeadLayout, gates: torch.Tensor) -> dict[int, torch.Tensor]:
    if not gates.is_floating_point() or gates.ndim not in (1, 2):
        raise ValueError(f"heads: a head_mask tensor must be float [layers, heads] or [heads], got {gates.dtype} "
                         f"{tuple(gates.shape)}")
    rows = gates.expand(layout.num_layers, -1) if gates.ndim == 1 else gates
    if rows.shape[0] != layout.num_layers or any(rows.shape[1] != n for n in layout.heads):
        raise ValueError(f"heads: head_mask shape {tuple(gates.shape)} does not match the model's heads per layer "
                         f"{list(layout.heads)}; pass {{layer: [head, ...]}} for uneven layouts")
    return {layer: rows[layer] for layer in range(layout.num_layers)}
