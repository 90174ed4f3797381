"""The random baseline: scores drawn from the strategy's seeded generator (ShrinkBench's `random`)."""
from __future__ import annotations

import torch
from torch import nn

from sentinel.models import head_layout
from sentinel.pruning.base import Batch, HeadScores, register_strategy, score_grid


@register_strategy("random", uses_seed=True, uses_data=False)
def random_scores(model: nn.Module, batches: list[Batch], *, generator: torch.Generator) -> HeadScores:
    """Uniform [0, 1) scores from the seeded generator, one per head (layer-major order); no data."""
    heads = head_layout(model).heads
    draws = torch.rand(sum(heads), generator=generator)  # one draw, so the order of layers is fixed
    return HeadScores(
        scores=score_grid(list(draws.split(list(heads)))),
        strategy="random",
        meta={"forward_passes": 0, "backward_passes": 0},
    )
