"""Iterative gradient importance (Michel, Levy & Neubig 2019, section 5: "iterative pruning").

One-shot `gradient` scores every head once on the dense model. Michel et al. instead prune in steps:
score, remove the `step` fraction of heads with the lowest importance, rescore on the pruned model, and so
on; the heads' importance changes as others go (a head can become important once its neighbours are gone).

Here the removal is a zero gate (masking computes exactly what removal does: masked ≡ pruned is tested per family), so that scoring
needs no copy of the model. Steps go to `max_level`; each step's selection is `select_heads` at the cumulative
level with the heads already removed forced to the bottom, so GQA groups and the one-head-per-layer floor
are honoured exactly as the pipeline will. The result is a ranking, returned as scores:
- the heads removed at step k score below those removed at step k + 1; inside a step, by importance then;
- the heads never removed score above all removed ones, in the order of their last importance.
So `select_heads` at any level <= max_level picks exactly the heads the iterative procedure removed by then,
and one ranking (computed once per model and data) serves every level of a grid. Scores are ranks 0..n-1.

Cost: 1 + ceil(max_level / step) gradient passes over the scoring data (gradient: 1).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from sentinel.contract import boolean, fraction
from sentinel.models import head_layout, is_causal_lm
from sentinel.pruning.base import Batch, HeadScores, register_strategy, score_grid, uniform_group_size
from sentinel.pruning.gradient import gate_importance, l2_normalized
from sentinel.pruning.selection import select_heads


@register_strategy(
    "iterative", defaults={"step": 0.1, "max_level": 0.5, "normalize_per_layer": True},
    checks={"step": fraction(zero=False), "max_level": fraction(zero=False), "normalize_per_layer": boolean},
    uses_seed=lambda model: not is_causal_lm(model),
)
def iterative_scores(
    model: nn.Module, batches: list[Batch], *, generator: torch.Generator, step: float = 0.1,
    max_level: float = 0.5, normalize_per_layer: bool = True,
) -> HeadScores:
    """Prune `step` of the heads at a time by gradient importance, rescoring after each step (Michel et al.).

    Args:
        step: fraction of all heads removed per step (the paper: 10%).
        max_level: the last cumulative level; heads beyond it are ranked by the last importance.
        normalize_per_layer: L2-normalise each layer's importances before ranking (the paper's setting).
    """
    layout = head_layout(model)
    group = uniform_group_size(model, "iterative")
    removed: dict[int, list[int]] = {}
    order: list[tuple[int, int]] = []  # (layer, head), first removed first
    passes = 0
    levels = [min(k * step, max_level) for k in range(1, math.ceil(max_level / step - 1e-9) + 1)]
    for level in [*levels, None]:
        importance, used = gate_importance(model, batches, generator, masked=removed)
        passes += used
        if normalize_per_layer:
            importance = l2_normalized(importance, removed)
        grid = score_grid(importance).double()
        for layer, heads in removed.items():
            grid[layer, heads] = -math.inf  # already gone: selected first, never re-ranked
        if level is None:
            break
        chosen = select_heads(grid, level, min_heads_per_layer=1, group_size=group).heads
        new = [(l, h) for l, hs in chosen.items() for h in hs if h not in removed.get(l, [])]
        order += sorted(new, key=lambda lh: (float(grid[lh]), lh))
        for l, h in new:
            removed.setdefault(l, []).append(h)
    kept = [(l, h) for l, n in enumerate(layout.heads) for h in range(n) if h not in removed.get(l, [])]
    order += sorted(kept, key=lambda lh: (float(grid[lh]), lh))
    ranks = score_grid([torch.zeros(n) for n in layout.heads])
    for rank, (l, h) in enumerate(order):
        ranks[l, h] = float(rank)
    meta = {"steps": len(levels), "removal_order": [list(lh) for lh in order[: sum(len(v) for v in removed.values())]],
            "forward_passes": passes, "backward_passes": passes}
    return HeadScores(scores=ranks, strategy="iterative", meta=meta)
