"""What the heads output on calibration text, read by hooks on each layer's output projection: the input of the
projection at non-padding tokens (`visit_output_inputs`), its mean (`output_means`, what bias compensation puts in
place of removed heads), and the hooked forward loop they share."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from sentinel.models.device import eval_mode, model_device, to_device
from sentinel.models.layout import Batch, head_layout, output_projections


def visit_output_inputs(model: nn.Module, batches: Sequence[Batch], visit: Callable[[int, torch.Tensor], None]) -> int:
    """Runs the model over `batches` (eval mode, no gradients) and calls `visit(layer, x)` with each layer's output
    projection input at the batch's non-padding tokens, x = [N, heads * head_dim] (the heads' concatenated outputs:
    what redundancy, flap and wanda_sp read, and what bias compensation averages). Returns the number of
    non-padding tokens seen."""
    keep: list[torch.Tensor] = []  # the current batch's non-padding positions, [B, T] bool

    def capture(layer: int):
        return lambda module, args: visit(layer, args[0].detach()[keep[0]])

    handles = [proj.register_forward_pre_hook(capture(l)) for l, proj in enumerate(output_projections(model))]
    return forward_with_hooks(model, batches, handles, keep)


def forward_with_hooks(model: nn.Module, batches: Sequence[Batch], handles: list, keep: list[torch.Tensor]) -> int:
    """Runs the model over `batches` (eval mode, no gradients) with hooks already registered (`handles`, removed at
    the end, whatever happens); before each forward pass `keep[0]` is set to the batch's non-padding positions
    [B, T] for the hooks to read. Returns the number of non-padding tokens seen."""
    device, tokens = model_device(model), 0
    try:
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                batch = to_device(batch, device)
                keep[:] = [batch["attention_mask"].bool()]
                tokens += int(keep[0].sum())
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return tokens


def output_means(model: nn.Module, batches: Sequence[Batch]) -> list[torch.Tensor]:
    """Per layer, float64 [heads * head_dim] on CPU: the mean over the non-padding tokens of `batches` of the output
    projection's input, i.e. of every head's output channels (what bias compensation puts in place of the heads
    it removes)."""
    if not batches or not any(int(b["attention_mask"].sum()) for b in batches):
        raise ValueError("compensate: the calibration batches hold no non-padding token; there is no mean to compensate with")
    layout = head_layout(model)
    sums = [torch.zeros(n * layout.head_dim, dtype=torch.float64) for n in layout.heads]

    def accumulate(layer: int, x: torch.Tensor) -> None:
        sums[layer] += x.double().sum(0).cpu()

    tokens = visit_output_inputs(model, batches, accumulate)
    return [s / tokens for s in sums]
