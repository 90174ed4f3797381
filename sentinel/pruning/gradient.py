"""Gradient head importance (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?").

Every head h gets a gate xi_h (all ones, so the model is unchanged) on its output. The importance is
I_h = E_x |dL(x)/dxi_h|, estimated as the mean over scoring batches of |dL_batch/dxi_h|, where L_batch
is the batch's mean loss (as in the paper's code). Higher = more important.

Loss:
- causal LM with an LM head: next-token cross-entropy, padding ignored (labels = -100 there).
- anything else (encoders, bare decoders): a seeded random projection of the sentence embedding,
  L = (1/B) sum_b <e_b, r_b>, e_b the mean-pooled last hidden state of sequence b over its tokens and
  r_b ~ N(0, I) drawn from the strategy's generator (one [B, D] draw per batch, in batch order). Then
  |dL/dxi_h| estimates the size of the first-order change of the embedding when head h is removed
  (E_r <J, r>^2 = ||J||^2). A "distance to the dense output" loss would not do: its gradient is zero
  at xi = 1, where the gates sit. This makes encoder scores depend on the seed.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from sentinel.contract import boolean
from sentinel.models.device import mean_pool
from sentinel.models import head_layout, is_causal_lm, mask_heads
from sentinel.pruning.base import (
    Batch,
    HeadScores,
    eval_mode,
    model_device,
    register_strategy,
    score_grid,
    to_device,
)


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over non-padding targets (transformers shifts the labels)."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model(**batch, labels=labels).loss


def embedding_projection_loss(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """(1/B) sum_b <mean-pooled last hidden state_b, r_b>, r ~ N(0, I) [B, D] from `generator`."""
    hidden = model.base_model(**batch).last_hidden_state  # [B, T, D]
    pooled = mean_pool(hidden, batch["attention_mask"])  # [B, D]
    directions = torch.randn(pooled.shape, generator=generator).to(pooled)  # [B, D]
    return (pooled * directions).sum(-1).mean()


def lm_targets(batch: Batch) -> int:
    """Number of next-token targets in a batch as transformers counts them: non-padding positions t >= 1."""
    return int(batch["attention_mask"][:, 1:].sum())


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """requires_grad off for every parameter (only the gates need gradients, so no parameter .grad is
    created and weight gradients are never computed); each flag is restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def gate_importance(
    model: nn.Module, batches: list[Batch], generator: torch.Generator, masked: dict[int, list[int]] | None = None
) -> tuple[list[torch.Tensor], int]:
    """Per layer, float64 [heads] of mean |dL/dgate| over the batches, with the heads in `masked` (current ids)
    gated to 0 (the model as it would be after removing them: iterative and dynamic rescore that way).
    Returns (importances, batches used)."""
    lm = is_causal_lm(model)
    if lm and not any(lm_targets(b) for b in batches):
        raise ValueError("batches: no non-padding token after the first position; the next-token loss has no targets")
    heads = head_layout(model).heads
    total = [torch.zeros(h, dtype=torch.float64) for h in heads]
    used = 0
    device = model_device(model)
    with eval_mode(model), frozen_parameters(model):
        mask = mask_heads(model, masked or None, requires_grad=True, ids="current")
        gates = [mask.gates[layer] for layer in range(len(heads))]
        try:
            for batch in batches:
                if lm and not lm_targets(batch):
                    continue  # nothing to predict: its loss would be 0/0
                batch = to_device(batch, device)
                loss = lm_loss(model, batch) if lm else embedding_projection_loss(model, batch, generator)
                for layer, grad in enumerate(torch.autograd.grad(loss, gates)):  # no .grad is written
                    total[layer] += grad.detach().abs().double().cpu()
                used += 1
        finally:
            mask.remove()
    return [t / used for t in total], used


def l2_normalized(importance: list[torch.Tensor], removed: Mapping[int, Sequence[int]] | None = None) -> list[torch.Tensor]:
    """Each layer's importances divided by their L2 norm over the heads still present (Michel et al.'s per-layer
    normalisation). A removed head's gate still has a gradient, so leaving it in the norm would shrink the
    layer's present heads by what is already gone."""
    out = []
    for layer, t in enumerate(importance):
        present = torch.ones_like(t, dtype=torch.bool)
        present[list((removed or {}).get(layer, []))] = False
        out.append(t / t[present].norm().clamp(min=1e-20))
    return out


@register_strategy(
    "gradient", defaults={"normalize_per_layer": False}, checks={"normalize_per_layer": boolean},
    uses_seed=lambda model: not is_causal_lm(model),  # the encoder proxy loss draws seeded directions
)
def gradient_scores(
    model: nn.Module, batches: list[Batch], *, generator: torch.Generator, normalize_per_layer: bool = False
) -> HeadScores:
    """Mean |dL/dgate| per head over the scoring batches (Michel et al. 2019).

    Args:
        normalize_per_layer: divide each layer's importances by their L2 norm (the paper's setting).
    """
    importance, used = gate_importance(model, batches, generator)
    if normalize_per_layer:
        importance = l2_normalized(importance)
    meta = {"loss": "next-token" if is_causal_lm(model) else "embedding-projection", "forward_passes": used,
            "backward_passes": used}
    return HeadScores(scores=score_grid(importance), strategy="gradient", meta=meta)
