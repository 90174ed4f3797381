"""First-order Taylor importance of a head's weights, LLM-Pruner's criterion (Ma, Fang & Wang, NeurIPS 2023).

Removing a group of weights W_G changes the loss by dL = L(W with W_G = 0) - L(W) ~ -sum_{k in G} g_k w_k, with
g = dL/dW the gradient of the calibration loss (the mean over scoring batches of each batch's mean loss; the
gradients are averaged before any absolute value, as LLM-Pruner accumulates .grad over its samples). A head's group
is what `prune_heads` removes with it: its q rows, its o columns, and its KV group's k and v rows (with bias
entries of the sliced rows). Two forms, both LLM-Pruner's (its `--taylor` option):

- `element` (its `param_first`, the setting of its LLaMA results): every weight's own estimate, |g_k w_k|,
  summed over the group: score_h = sum_{k in G_h} |g_k w_k|.
- `vector` (its `vectorize`): one estimate per coupled matrix slice, |sum_{k in slice} g_k w_k|, summed over the
  head's slices (q, k, v, o): how much zeroing that slice as a whole changes the loss to first order.

GQA: k and v rows belong to a KV group shared by `group_size` query heads; each of them is credited
1/group_size of the group's k and v terms, so a whole group's score is the sum of its query heads' (what
`select_heads` compares when it removes whole groups). LLM-Pruner's second-order terms (`param_second`,
`param_mix`, a diagonal Fisher approximation) are not implemented.

Loss: the next-token loss for causal LMs, the seeded embedding projection for encoders (as `gradient`; see
pruning/gradient.py). Cost: one forward and one backward pass per scoring batch, with gradients kept for the
attention projections only (the rest of the model stays frozen).
"""
from __future__ import annotations

import torch
from torch import nn

from sentinel.contract import one_of
from sentinel.models import get_adapter, head_layout, is_causal_lm
from sentinel.models.layout import blocks, head_slices, slice_parameters
from sentinel.pruning.base import (Batch, HeadScores, eval_mode, model_device, register_strategy,
                                   score_grid, to_device)
from sentinel.pruning.gradient import embedding_projection_loss, frozen_parameters, lm_loss, lm_targets

FORMS = ("element", "vector")


def attention_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter a head's slices live in (q/k/v/o weights and q/k/v biases), once each, in layer order."""
    adapter, layout = get_adapter(model), head_layout(model)
    seen: dict[int, nn.Parameter] = {}
    for layer, block in enumerate(blocks(model, adapter)):
        every = list(range(layout.heads[layer]))
        for piece in head_slices(adapter, layout, layer, every, list(range(layout.kv_heads[layer]))):
            for param, _, _ in slice_parameters(block, piece):
                seen.setdefault(id(param), param)
    return list(seen.values())


def mean_gradients(model: nn.Module, batches: list[Batch], generator: torch.Generator,
                   params: list[nn.Parameter]) -> tuple[dict[int, torch.Tensor], int]:
    """{id(param): dL/dparam} averaged over the batches (float64, the parameter's device), and the batches used."""
    lm = is_causal_lm(model)
    if lm and not any(lm_targets(b) for b in batches):
        raise ValueError("batches: no non-padding token after the first position; the next-token loss has no targets")
    total = {id(p): torch.zeros_like(p, dtype=torch.float64) for p in params}
    used, device = 0, model_device(model)
    with eval_mode(model), frozen_parameters(model):
        for p in params:
            p.requires_grad_(True)
        for batch in batches:
            if lm and not lm_targets(batch):
                continue  # nothing to predict: its loss would be 0/0
            batch = to_device(batch, device)
            loss = lm_loss(model, batch) if lm else embedding_projection_loss(model, batch, generator)
            for p, grad in zip(params, torch.autograd.grad(loss, params)):  # no .grad is written
                total[id(p)] += grad.double()
            used += 1
    return {key: g / used for key, g in total.items()}, used


@register_strategy("taylor", defaults={"form": "element"}, checks={"form": one_of(FORMS)},
                   uses_seed=lambda model: not is_causal_lm(model))  # the encoder proxy loss draws seeded directions
def taylor_scores(model: nn.Module, batches: list[Batch], *, generator: torch.Generator,
                  form: str = "element") -> HeadScores:
    """First-order Taylor importance of each head's weights (LLM-Pruner), element-wise or per weight slice.

    Args:
        form: "element" (sum of |g w| over the head's weights, LLM-Pruner's param_first) or "vector" (sum over the
            head's q/k/v/o slices of |sum g w|, its vectorize).
    """
    adapter, layout = get_adapter(model), head_layout(model)
    params = attention_parameters(model)
    grads, used = mean_gradients(model, batches, generator, params)
    per_layer = []
    for layer, block in enumerate(blocks(model, adapter)):
        group = layout.group_size(layer)
        scores = torch.zeros(layout.heads[layer], dtype=torch.float64)
        for head in range(layout.heads[layer]):
            for piece in head_slices(adapter, layout, layer, [head], [head // group]):
                share = 1.0 / group if piece.role in ("k", "v") and not adapter.qkv else 1.0
                terms = [(grads[id(p)] * p.detach().double()).index_select(dim, index)
                         for p, dim, index in slice_parameters(block, piece)]
                first_order = (sum(t.abs().sum() for t in terms) if form == "element"
                               else abs(sum(t.sum() for t in terms)))
                scores[head] += share * float(first_order)
        per_layer.append(scores)
    meta = {"loss": "next-token" if is_causal_lm(model) else "embedding-projection", "form": form,
            "forward_passes": used, "backward_passes": used}
    return HeadScores(scores=score_grid(per_layer), strategy="taylor", meta=meta)
