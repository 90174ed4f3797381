"""Entropy and magnitude combined by rank, so neither scale dominates.

hybrid_h = alpha * r_entropy(h) + (1 - alpha) * r_magnitude(h), where r_s(h) in [0, 1] is head h's rank
under strategy s among all N heads of the model, divided by N - 1 (0 = least important, 1 = most;
ties get their average rank). alpha = 0.5 by default; alpha = 1 is entropy's ranking, 0 magnitude's.
"""
from __future__ import annotations

import torch
from torch import nn

from sentinel.contract import boolean, number
from sentinel.pruning.base import Batch, HeadScores, register_strategy
from sentinel.pruning.entropy import collect_stats
from sentinel.pruning.magnitude import magnitude_matrix


def normalized_rank(scores: torch.Tensor) -> torch.Tensor:
    """Average rank of each finite entry among the finite entries, scaled to [0, 1]; NaN stays NaN."""
    flat = scores.flatten().double()
    present = ~flat.isnan()
    values = flat[present]
    # average rank for ties: (number strictly below) + (number equal - 1) / 2
    below = (values[None, :] < values[:, None]).sum(1).double()  # [N]
    equal = (values[None, :] == values[:, None]).sum(1).double()  # [N]
    rank = below + (equal - 1) / 2
    out = torch.full_like(flat, float("nan"))
    out[present] = rank / max(len(values) - 1, 1)
    return out.view_as(scores).float()


@register_strategy(
    "hybrid",
    defaults={"alpha": 0.5, "normalize": False},
    checks={"alpha": number(minimum=0, maximum=1), "normalize": boolean},
)
def hybrid_scores(
    model: nn.Module, batches: list[Batch], *, generator: torch.Generator, alpha: float = 0.5, normalize: bool = False
) -> HeadScores:
    """alpha * rank(entropy score) + (1 - alpha) * rank(magnitude score), ranks scaled to [0, 1].

    Args:
        alpha: weight of the entropy rank.
        normalize: the entropy component's `normalize` option.
    """
    stats = collect_stats(model, batches)
    entropy_rank = normalized_rank(-stats.mean_entropy(normalize))  # [L, H]
    magnitude_rank = normalized_rank(magnitude_matrix(model))  # [L, H]
    scores = float(alpha) * entropy_rank + (1 - float(alpha)) * magnitude_rank
    meta = {"forward_passes": stats.batches, "backward_passes": 0, "positions": stats.count[0]}
    return HeadScores(scores=scores, strategy="hybrid", meta=meta)
