"""Which heads to prune, given scores (higher = more important) and a pruning level.

- Count: requested = round-half-up(level * total heads) (2.5 -> 3; Python's round() would give 2).
- Order: lowest score first; ties broken by (layer, head), so the choice is deterministic.
- Never empties a layer: each layer keeps at least `min_heads_per_layer` heads.
- GQA (`group_size` > 1; by default read from HeadScores.group_sizes): the unit is a whole KV group of `group_size` consecutive query heads, its score
  the mean of its heads' scores, and the count is round-half-up(level * total groups) groups; when that
  is not `requested` heads, a note says so.
- policy "global" ranks all units of the model together; "per_layer" gives every layer a quota of
  level * its units, floors them, and hands the remaining units (to reach the total) to the layers with
  the largest remainders (ties: lower layer first), so the quotas sum to the global count; "uniform" removes
  the same number of units from every layer (round-half-up of the global count over the layers), so every layer
  keeps the same head count and the model loads in any runtime (plain transformers, every llama.cpp
  architecture); when that number times the layers is not the global count, a note says so.
Whatever cannot be honoured is written to `notes`, and then `selected` differs from `requested`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from sentinel.contract import LEVEL
from sentinel.pruning.base import HeadScores, round_half_up

POLICIES = ("global", "per_layer", "uniform")


@dataclass
class Selection:
    """Heads to prune, {layer: [head, ...]} (sorted; layers with none left out), and what was not honoured."""

    heads: dict[int, list[int]]
    requested: int
    selected: int
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Unit:
    score: float
    layer: int
    index: int  # unit index inside the layer (a head, or a KV group)

    @property
    def key(self) -> tuple[float, int, int]:
        return (self.score, self.layer, self.index)


def select_heads(
    scores: HeadScores | torch.Tensor,
    level: float,
    policy: str = "global",
    min_heads_per_layer: int = 1,
    group_size: int | None = None,
) -> Selection:
    """Chooses the `level` fraction of heads with the lowest scores.

    Args:
        scores: HeadScores or a [layers, heads] tensor, higher = more important; trailing NaN in a row
            marks heads a (pruned) layer does not have.
        level: fraction of all heads to prune, in [0, 1).
        policy: "global" (rank across layers), "per_layer" (same fraction in every layer) or "uniform" (the same
            number of heads from every layer).
        min_heads_per_layer: heads every layer keeps (>= 1 for head strategies; 0 lets a layer-unit strategy such as
            attention_drop remove a whole attention sublayer).
        group_size: prune whole groups of this many consecutive heads (a GQA model's query heads per KV head).
            None: the scored model's group size (HeadScores.group_sizes), so that `prune_heads` accepts the
            selection on GQA models; 1 for a plain tensor.
    Returns:
        Selection(heads, requested, selected, notes).
    """
    grid = _as_grid(scores)
    if group_size is None:
        group_size = _scored_group_size(scores)
    _check_arguments(level, policy, min_heads_per_layer, group_size)
    counts = _heads_per_layer(grid)
    units = _layer_units(grid, counts, group_size)
    total = sum(counts)
    requested = round_half_up(level * total)
    target, notes = _target_units(level, total, requested, group_size)
    keep = math.ceil(min_heads_per_layer / group_size)  # units a layer must keep
    capacity = [max(len(u) - keep, 0) for u in units]
    if policy == "global":
        chosen = _select_global(units, capacity, target)
    elif policy == "uniform":
        each = min(round_half_up(target / len(units)), min(capacity))
        if each * len(units) != target:
            notes.append(f"uniform policy: {each * group_size} heads from each of {len(units)} layers, "
                         f"{each * len(units) * group_size} in all (level {level} asks for {target * group_size})")
        target = each * len(units)
        chosen = _select_per_layer(units, capacity, [each] * len(units), notes, group_size)
    else:
        chosen = _select_per_layer(units, capacity, _quotas(level, units, target), notes, group_size)
    if len(chosen) < target:
        notes.append(
            f"level {level} asks for {target * group_size} heads but min_heads_per_layer={min_heads_per_layer} "
            f"allows {len(chosen) * group_size} ({policy} policy); selected {len(chosen) * group_size}"
        )
    heads: dict[int, list[int]] = {}
    for unit in chosen:
        heads.setdefault(unit.layer, []).extend(range(unit.index * group_size, (unit.index + 1) * group_size))
    heads = {layer: sorted(heads[layer]) for layer in sorted(heads)}
    return Selection(heads=heads, requested=requested, selected=len(chosen) * group_size, notes=notes)


# ---------------------------------------------------------------------------- checks


def _as_grid(scores: HeadScores | torch.Tensor) -> torch.Tensor:
    grid = scores.scores if isinstance(scores, HeadScores) else scores
    if not isinstance(grid, torch.Tensor) or grid.ndim != 2 or grid.numel() == 0:
        raise ValueError(f"scores: expected HeadScores or a non-empty [layers, heads] tensor, got {_describe(grid)}")
    return grid.detach().to(device="cpu", dtype=torch.float64)


def _scored_group_size(scores: HeadScores | torch.Tensor) -> int:
    sizes = set(scores.group_sizes) if isinstance(scores, HeadScores) else set()
    if len(sizes) > 1:
        raise ValueError(f"group_size: the scored model's layers have different GQA group sizes "
                         f"{list(scores.group_sizes)}; pass group_size explicitly")
    return sizes.pop() if sizes else 1


def _describe(value: object) -> str:
    return f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def _check_arguments(level: float, policy: str, min_heads_per_layer: int, group_size: int) -> None:
    LEVEL(level, "level")  # the trial contract's rule: a SpecError, a ValueError
    if policy not in POLICIES:
        raise ValueError(f"policy: {policy!r} is not one of {', '.join(POLICIES)}")
    for name, value, least in (("min_heads_per_layer", min_heads_per_layer, 0), ("group_size", group_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}: {value!r} is not an integer >= {least}")


def _heads_per_layer(grid: torch.Tensor) -> list[int]:
    counts = []
    for layer, row in enumerate(grid):
        present = ~row.isnan()
        n = int(present.sum())
        if not bool(present[:n].all()):
            raise ValueError(f"scores: layer {layer} has NaN before its last head; NaN may only pad the end of a row")
        counts.append(n)
    return counts


def _layer_units(grid: torch.Tensor, counts: list[int], group_size: int) -> list[list[_Unit]]:
    """Per layer, its pruning units: heads, or KV groups scored by the mean of their heads."""
    units = []
    for layer, n in enumerate(counts):
        if n % group_size:
            raise ValueError(f"group_size: {group_size} does not divide layer {layer}'s {n} heads")
        means = grid[layer, :n].view(-1, group_size).mean(1)  # [n / group_size]
        units.append([_Unit(float(s), layer, i) for i, s in enumerate(means)])
    return units


# ---------------------------------------------------------------------------- counting


def _target_units(level: float, total: int, requested: int, group_size: int) -> tuple[int, list[str]]:
    notes = []
    target = round_half_up(level * total / group_size)
    if level > 0 and requested == 0:
        notes.append(f"level {level} x {total} heads = {level * total:.3g} rounds to 0 heads; nothing selected")
    elif target * group_size != requested:
        notes.append(
            f"rounded to whole KV groups of {group_size}: {requested} heads requested, "
            f"{target} groups = {target * group_size} heads targeted"
        )
    return target, notes


def _quotas(level: float, units: list[list[_Unit]], target: int) -> list[int]:
    """Per-layer unit counts summing to `target`: floors of level * units, then largest remainders."""
    exact = [level * len(u) for u in units]
    quotas = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(units)), key=lambda l: (-(exact[l] - quotas[l]), l))
    for layer in by_remainder[: max(target - sum(quotas), 0)]:
        quotas[layer] += 1
    return quotas


# ---------------------------------------------------------------------------- policies


def _select_global(units: list[list[_Unit]], capacity: list[int], target: int) -> list[_Unit]:
    taken = [0] * len(units)
    chosen = []
    for unit in sorted((u for layer in units for u in layer), key=lambda u: u.key):
        if len(chosen) == target:
            break
        if taken[unit.layer] < capacity[unit.layer]:
            taken[unit.layer] += 1
            chosen.append(unit)
    return chosen


def _select_per_layer(
    units: list[list[_Unit]], capacity: list[int], quotas: list[int], notes: list[str], group_size: int
) -> list[_Unit]:
    chosen = []
    for layer, layer_units in enumerate(units):
        take = min(quotas[layer], capacity[layer])
        if take < quotas[layer]:
            notes.append(
                f"layer {layer}: quota {quotas[layer] * group_size} heads capped at {take * group_size} "
                f"by min_heads_per_layer"
            )
        chosen.extend(sorted(layer_units, key=lambda u: u.key)[:take])
    return chosen
