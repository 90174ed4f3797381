"""Ablation: a unit's importance is what removing it alone costs on the calibration data.

Michel, Levy & Neubig (2019) ablated heads one at a time before approximating that with gradients; SlimLLM (2025)
scores each head by the change its removal makes. It is the ground truth of single-unit importance the cheaper
criteria approximate (the analysis reports each data-reading criterion's rank correlation with it), not the best
layout: removal errors do not add up.

- Unit: a head, or a whole KV group where the model groups them (GQA), the unit selection removes; every query
  head of a group gets the group's score.
- Loss, the one recovery trains on: for a causal LM the next-token cross-entropy over non-padding targets,
  token-weighted over the calibration batches; for an encoder 1 - cos(sentence embedding, the dense model's), the
  mean over the calibration sentences (the dense model's loss is 0).
- Score: loss with the unit masked minus the dense loss; higher = more important (a negative score: the model did
  better without it). Masking is exact removal (masked and pruned models agree, tests/unit/models).
- Cost: one forward pass over the calibration batches per unit, plus one dense: SmolLM2-135M has 90 units (30
  layers x 3 KV groups), MiniLM 72 heads (docs/STRATEGIES.md has the seconds).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from sentinel.models import head_layout, is_causal_lm, mask_heads
from sentinel.models.device import mean_pool
from sentinel.pruning.base import Batch, HeadScores, eval_mode, model_device, register_strategy, score_grid, to_device
from sentinel.pruning.gradient import lm_loss, lm_targets


def _lm_loss(model: nn.Module, batches: list[Batch]) -> float:
    """Next-token cross-entropy per target over every batch (each batch's mean weighted by its targets)."""
    total, targets = 0.0, 0
    for batch in batches:
        count = lm_targets(batch)
        if count:
            total += float(lm_loss(model, batch)) * count
            targets += count
    return total / targets


def _embeddings(model: nn.Module, batches: list[Batch]) -> list[torch.Tensor]:
    return [mean_pool(model.base_model(**batch).last_hidden_state.float(), batch["attention_mask"]) for batch in batches]


@register_strategy("ablation")
def ablation_scores(model: nn.Module, batches: list[Batch], *, generator: torch.Generator) -> HeadScores:
    """The calibration loss increase when each unit (head, or KV group) alone is removed (Michel et al. 2019)."""
    layout = head_layout(model)
    lm = is_causal_lm(model)
    if lm and not any(lm_targets(b) for b in batches):
        raise ValueError("batches: no non-padding token after the first position; the next-token loss has no targets")
    device = model_device(model)
    batches = [to_device(b, device) for b in batches]
    passes = 0
    with eval_mode(model), torch.inference_mode(), mask_heads(model, None, ids="current") as mask:
        dense_embeddings = None if lm else _embeddings(model, batches)

        def loss() -> float:
            if lm:
                return _lm_loss(model, batches)
            embeddings = _embeddings(model, batches)
            distances = [1 - F.cosine_similarity(e, d, dim=-1) for e, d in zip(embeddings, dense_embeddings)]
            return float(torch.cat(distances).mean())

        dense = loss()
        per_layer = []
        for layer in range(layout.num_layers):
            group, scores = layout.group_size(layer), torch.zeros(layout.heads[layer], dtype=torch.float64)
            for first in range(0, layout.heads[layer], group):
                unit = slice(first, first + group)
                mask.gates[layer][unit] = 0
                scores[unit] = loss() - dense
                mask.gates[layer][unit] = 1
                passes += 1
            per_layer.append(scores)
    meta = {"loss": "next-token" if lm else "1 - cos to the dense embedding", "dense_loss": dense,
            "units": passes, "forward_passes": (passes + 1 + (0 if lm else 1)) * len(batches), "backward_passes": 0}
    return HeadScores(scores=score_grid(per_layer), strategy="ablation", meta=meta)
