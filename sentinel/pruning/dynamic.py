"""Dynamic pruning: heads are removed progressively while the model fine-tunes (the seed's "dynamic pruning
during training"), on the cubic schedule of Zhu & Gupta ("To prune, or not to prune", 2018), rescoring by
gradient importance (Michel et al. 2019) on the model as it is at each pruning step.

Schedule, for a trial at `level` with T fine-tuning steps: pruning events at steps t_k = round(k * end * T /
updates), k = 1..updates; at t_k the cumulative level is level * (1 - (1 - k / updates)^3), so most heads go
early, while the model is still close to the dense one, and the last event (k = updates) reaches `level`
exactly, leaving the last (1 - end) of the steps to recover from it. At each event: gradient importance
(optionally L2-normalised per layer) with the heads already removed gated to 0, then `select_heads` at the
cumulative level (policy and min_heads_per_layer as the trial's) with the removed heads forced to the bottom,
so heads never come back and GQA groups stay whole. Removal during training is a zero gate whose heads'
weights are frozen (exactly what physical removal computes); the pipeline removes them physically at the end
when the trial's method is "remove".

What the trial's columns mean for `dynamic` (docs/STRATEGIES.md):
- `scores`: gradient importance on the dense model (what the first event starts from);
- `pruned_heads`: the heads removed by the end of the schedule;
- `pruned`: the metric of the DENSE weights with those heads removed, no training: what that head set costs
  one-shot, comparable with every other strategy's `pruned`;
- `recovered`: the metric after the fine-tune during which the heads were removed (same steps, learning rate
  and data as every other strategy's recovery), heads removed.
Cost: the fine-tune, plus `updates` gradient passes over the scoring data.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sentinel.contract import boolean, fraction, integer
from sentinel.models import HeadMask, is_causal_lm
from sentinel.pruning.base import (
    Batch, HeadScores, register_strategy, round_half_up, score_grid, uniform_group_size,
)
from sentinel.pruning.gradient import gate_importance, l2_normalized
from sentinel.pruning.selection import select_heads


def schedule(level: float, steps: int, updates: int = 5, end: float = 0.75) -> dict[int, float]:
    """{fine-tuning step: cumulative level} of the pruning events (cubic, reaching `level` at the last)."""
    events: dict[int, float] = {}
    for k in range(1, updates + 1):
        step = max(1, min(steps, round_half_up(k * end * steps / updates)))
        events[step] = level * (1 - (1 - k / updates) ** 3)  # a later k on the same step wins: levels grow
    return events


class DynamicPruner:
    """Called after every optimizer step of `finetune` (its `on_step`); at scheduled steps it rescores and zeroes
    more gates of `mask`. Returns True when the mask changed (finetune then freezes the new heads' weights)."""

    def __init__(self, model: nn.Module, mask: HeadMask, batches: list[Batch], *, level: float, steps: int,
                 policy: str, min_heads_per_layer: int, generator: torch.Generator, updates: int = 5,
                 end: float = 0.75, normalize_per_layer: bool = True) -> None:
        self.model, self.mask, self.batches, self.generator = model, mask, batches, generator
        self.policy, self.min_heads, self.normalize = policy, min_heads_per_layer, normalize_per_layer
        self.events = schedule(level, steps, updates, end)
        self.history: list[dict[str, Any]] = []  # one row per event: step, level, heads removed so far
        self.notes: list[str] = []
        self.requested = round_half_up(level * sum(len(g) for g in mask.gates.values()))

    def __call__(self, step: int) -> bool:
        if step not in self.events:
            return False
        removed = self.mask.masked()
        importance, _ = gate_importance(self.model, self.batches, self.generator, masked=removed)
        if self.normalize:
            importance = l2_normalized(importance, removed)
        grid = score_grid(importance).double()
        for layer, heads in removed.items():
            grid[layer, heads] = -math.inf
        selection = select_heads(grid, self.events[step], policy=self.policy, min_heads_per_layer=self.min_heads,
                                 group_size=uniform_group_size(self.model, "dynamic"))
        self.notes = selection.notes
        with torch.no_grad():
            for layer, heads in selection.heads.items():
                self.mask.gates[layer][heads] = 0.0
        self.history.append({"step": step, "level": self.events[step], "heads_removed": selection.selected})
        return True


@register_strategy(
    "dynamic", defaults={"updates": 5, "end": 0.75, "normalize_per_layer": True},
    checks={"updates": integer(minimum=1), "end": fraction(zero=False), "normalize_per_layer": boolean},
    uses_seed=lambda model: not is_causal_lm(model), during_finetune=DynamicPruner,
)
def dynamic_scores(
    model: nn.Module, batches: list[Batch], *, generator: torch.Generator, updates: int = 5, end: float = 0.75,
    normalize_per_layer: bool = True,
) -> HeadScores:
    """Heads removed during fine-tuning on a cubic schedule, rescored by gradient importance at each event.

    Args:
        updates: pruning events during the fine-tune.
        end: fraction of the fine-tuning steps by which the level is reached.
        normalize_per_layer: L2-normalise each layer's importances (as `iterative`).
    The scores returned here are the starting point (gradient importance on the dense model); the heads are
    chosen by `DynamicPruner` while the model trains.
    """
    importance, used = gate_importance(model, batches, generator)
    if normalize_per_layer:
        importance = l2_normalized(importance)
    return HeadScores(scores=score_grid(importance), strategy="dynamic",
                      meta={"forward_passes": used, "backward_passes": used})
