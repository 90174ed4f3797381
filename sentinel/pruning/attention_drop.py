"""attention_drop: whole attention sublayers, ranked by how little they change the residual stream.

He et al. 2024 ("What Matters in Transformers? Not All Attention Is Needed", Attention Drop): an attention sublayer
with input X (the residual stream entering the decoder layer) and output Y = X + Attn(LN(X)) matters by
1 - cos(X, Y), averaged over the calibration tokens; the sublayers that turn the stream least go first, removed
whole (every head, its projections and its KV cache; sentinel.models.removal's empty attention).

Every head of a layer gets its layer's score and `select_heads` takes whole layers (the strategy's `unit` is
"layer"), so a level removes round-half-up(level x layers) sublayers. Layer 0 keeps its attention (score +inf): the
KV cache and llama.cpp read the sequence length and the head size from it. Llama-family models only (the families
whose attention can be removed whole: sentinel.models.removal.EMPTY_LAYER_FAMILIES).

Data: one forward pass per calibration batch; no backward.
"""
from __future__ import annotations

import torch
from torch import nn

from sentinel.models import head_layout
from sentinel.models.activations import forward_with_hooks
from sentinel.models.layout import attention_modules, blocks
from sentinel.models.removal import EMPTY_LAYER_FAMILIES
from sentinel.pruning.base import Batch, HeadScores, register_strategy


def sublayer_turns(model: nn.Module, batches: list[Batch]) -> torch.Tensor:
    """Per layer, float64: the mean over non-padding tokens of 1 - cos(X, X + attention output)."""
    layers = blocks(model)
    totals = torch.zeros(len(layers), dtype=torch.float64)
    inputs: dict[int, torch.Tensor] = {}
    keep: list[torch.Tensor] = []

    def entering(layer: int):
        def hook(module, args, kwargs):
            inputs[layer] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    def leaving(layer: int):
        def hook(module, args, output):
            x = inputs.pop(layer)
            y = x + (output[0] if isinstance(output, tuple) else output).detach()
            cos = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1)  # [B, T]
            totals[layer] += (1 - cos)[keep[0]].sum().cpu()
        return hook

    handles = [block.register_forward_pre_hook(entering(l), with_kwargs=True) for l, block in enumerate(layers)]
    handles += [attention.register_forward_hook(leaving(l)) for l, attention in enumerate(attention_modules(model))]
    return totals / forward_with_hooks(model, batches, handles, keep)


@register_strategy("attention_drop", unit="layer")
def attention_drop(model: nn.Module, batches: list[Batch], *, generator: torch.Generator) -> HeadScores:
    """He et al. 2024: whole attention sublayers by 1 - cos(input, output) of the residual stream; layer 0 kept."""
    if model.config.model_type not in EMPTY_LAYER_FAMILIES:
        raise ValueError(f"strategy: 'attention_drop' removes whole attention sublayers, which only "
                         f"{', '.join(EMPTY_LAYER_FAMILIES)} can lose; {model.config.model_type!r} cannot")
    layout = head_layout(model)
    turns = sublayer_turns(model, batches)
    turns[0] = float("inf")  # layer 0 keeps its attention
    grid = turns.float()[:, None].expand(layout.num_layers, max(layout.heads)).clone()
    for layer, heads in enumerate(layout.heads):
        grid[layer, heads:] = float("nan")
    return HeadScores(grid, "attention_drop", meta={"sublayer_turn": turns.tolist()})
