"""Which heads, how stable: how much a strategy's layouts overlap across seeds (calibration draws), beside what
chance gives under the same selection rule.

Random's expected Jaccard overlap depends on the rule a layout was selected under, so each strategy is compared with
random under its own rule (docs/ANALYZE.md, "Stability"):
- per-layer quotas (policy uniform or per_layer) and whole layers: every layer's count is fixed, so two random layouts
  share I = sum over layers of independent hypergeometric overlaps, and E[J] = E[I / (2K - I)] is computed exactly
  from I's distribution (scipy.stats.hypergeom, convolved over layers);
- global: counts vary with the draw and the min-heads-per-layer rule couples the layers, so no hypergeometric closed
  form holds; random's overlap is the mean over every pair of the reference's own layouts, drawn under that rule.

And how close a criterion's scores come to the ground truth of single-unit importance: where the run has the
`ablation` strategy, each other strategy's Spearman correlation with ablation's scores, seed by seed (the same seed
scores on the same calibration draw), and its mean over seeds with a 95% t interval through Fisher's z.
"""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats as sstats

from orchestrator.analyze.layouts import head_pairs, layout_key
from orchestrator.analyze.stats import CELL, interval, ok_trials


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def mean_jaccard(layouts: list[set]) -> float:
    """The mean pairwise Jaccard overlap of head sets (NaN below two)."""
    pairs = list(itertools.combinations(layouts, 2))
    return float(np.mean([_jaccard(a, b) for a, b in pairs])) if pairs else float("nan")


def expected_jaccard(units: list[int], chosen: list[int]) -> float:
    """E[|A n B| / |A u B|] for two independent layouts that each take `chosen[l]` of `units[l]` units uniformly at
    random in every layer l (a unit: a head, a KV group, or a whole layer)."""
    total = sum(chosen)
    if total == 0:
        return float("nan")
    pmf = np.array([1.0])
    for n, k in zip(units, chosen):
        if k:
            pmf = np.convolve(pmf, sstats.hypergeom(n, k, k).pmf(np.arange(k + 1)))
    overlap = np.arange(len(pmf))
    return float(np.sum(pmf * overlap / (2 * total - overlap)))


def _group_size(heads_per_layer: dict[int, int], layouts: list[set]) -> int:
    """The unit a selection took (heads per KV group): the largest divisor of the heads per layer such that every
    random layout's pruned heads come as whole aligned groups of it (many random layouts refute a unit a model does
    not have; a strategy's own few layouts could not, so they are not asked)."""
    if not any(layouts):
        return 1  # no random layouts to tell the unit by: heads
    size = math.gcd(*heads_per_layer.values())
    for g in sorted((d for d in range(1, size + 1) if size % d == 0), reverse=True):
        if all((layer, (head // g) * g + i) in layout for layout in layouts for layer, head in layout for i in range(g)):
            return g
    return 1


def _rule_overlap(sets: list[set], heads_per_layer: dict[int, int], group: int) -> tuple[float, str] | None:
    """Random's exact expected overlap when every layout of `sets` has fixed per-layer counts (whole layers, or the
    same quota per layer in every seed), else None."""
    if not sets or not heads_per_layer:
        return None
    counts = [tuple(sum(1 for l, _ in s if l == layer) for layer in sorted(heads_per_layer)) for s in sets]
    full = [heads_per_layer[layer] for layer in sorted(heads_per_layer)]
    if all(c in (0, f) for count in counts for c, f in zip(count, full)) and len({sum(c) for c in counts}) == 1:
        layers_pruned = sum(1 for c in counts[0] if c)
        return expected_jaccard([len(full)], [layers_pruned]), "whole layers (hypergeometric)"
    if len(set(counts)) == 1:
        units = [f // group for f in full]
        return expected_jaccard(units, [c // group for c in counts[0]]), "per-layer quotas (hypergeometric)"
    return None


def stability_table(trials: pd.DataFrame, heads: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per (model, label, level): distinct layouts, the mean pairwise Jaccard overlap of the pruned head sets across
    seeds, random's expected overlap under the strategy's own rule (`random_jaccard`, how: `random_rule`), and the
    mean pairwise Spearman correlation of the head scores across seeds."""
    ok = ok_trials(trials)
    reference = ok_trials(reference) if not reference.empty else reference
    layouts = {key: [set(head_pairs(h)) for h in rows["pruned_heads"]]  # (model, level) -> random's layouts
               for key, rows in (reference.groupby(["model", "level"]) if not reference.empty else [])}
    units = {}  # model -> ({layer: heads}, heads per unit): the same for every cell of a model
    for model in ok["model"].unique():
        per_layer = _heads_per_layer(heads, model)
        drawn = [s for (m, _), sets in layouts.items() if m == model for s in sets]
        units[model] = (per_layer, _group_size(per_layer, drawn) if per_layer else 1)
    rows = []
    for (model, label, level), group in ok.groupby(CELL, sort=True):
        sets = [set(head_pairs(h)) for h in (group["pruned_heads"] if "pruned_heads" in group else [])]
        random_sets = layouts.get((model, level), [])
        per_layer, unit = units[model]
        policy = str(group["policy"].iloc[0]) if "policy" in group and group["policy"].notna().any() else "global"
        rule = _rule_overlap(sets, per_layer, unit) if per_layer else None
        if rule is not None and (policy != "global" or rule[1].startswith("whole")):
            expected, how = rule
        else:
            expected, how = mean_jaccard(random_sets), f"global: every pair of {len(random_sets)} reference layouts"
        agreement = ablation_agreement(heads, group, ok[(ok["model"] == model) & (ok["label"] == ABLATION)
                                                        & (ok["level"] == level)])
        rows.append({"model": model, "label": label, "level": level, "n_seeds": len(sets),
                     "distinct_layouts": len({layout_key(sorted(s)) for s in sets}),
                     "jaccard": mean_jaccard(sets), "random_jaccard": expected, "random_rule": how,
                     "score_spearman": _score_spearman(heads, group["trial_id"]), **agreement})
    return pd.DataFrame(rows, columns=["model", "label", "level", "n_seeds", "distinct_layouts", "jaccard",
                                       "random_jaccard", "random_rule", "score_spearman", *AGREEMENT])


ABLATION = "ablation"  # the strategy whose scores are single-unit ground truth (sentinel/pruning/ablation.py)
AGREEMENT = ("ablation_spearman", "ablation_spearman_low", "ablation_spearman_high", "ablation_seeds")


def ablation_agreement(heads: pd.DataFrame, cell: pd.DataFrame, ablation: pd.DataFrame) -> dict[str, float]:
    """The Spearman correlation of a cell's head scores with ablation's at the same seed, as the mean over seeds
    [95% interval] (Fisher's z) and the number of seeds paired; NaN for ablation itself, for random (a draw, not a
    score of importance) and where either side lacks scores or they are constant."""
    empty = dict.fromkeys(AGREEMENT, float("nan")) | {"ablation_seeds": 0}
    label = str(cell["label"].iloc[0])
    if heads.empty or "score" not in heads or ablation.empty or label in (ABLATION, "random"):
        return empty
    truth = dict(zip(ablation["seed"], ablation["trial_id"]))
    rhos = []
    for seed, trial_id in zip(cell["seed"], cell["trial_id"]):
        if seed not in truth:
            continue
        rows = heads[heads["trial_id"].isin([trial_id, truth[seed]])]
        grid = rows.pivot_table(index=["layer", "head"], columns="trial_id", values="score").dropna()
        if grid.shape[1] == 2 and all(np.ptp(grid[c].to_numpy(float)) > 0 for c in grid.columns):
            rhos.append(sstats.spearmanr(grid[trial_id], grid[truth[seed]]).statistic)
    if not rhos:
        return empty
    mean, low, high = interval(np.array(rhos), "atanh")
    return {"ablation_spearman": mean, "ablation_spearman_low": low, "ablation_spearman_high": high,
            "ablation_seeds": len(rhos)}


def _heads_per_layer(heads: pd.DataFrame, model: str) -> dict[int, int]:
    """{layer: heads} of the dense model, from the heads table (every head of a trial is a row)."""
    if heads.empty or "model" not in heads:
        return {}
    rows = heads[heads["model"].eq(model)]
    if rows.empty:
        return {}
    first = rows[rows["trial_id"].eq(rows["trial_id"].iloc[0])]
    return {int(layer): int(g["head"].max()) + 1 for layer, g in first.groupby("layer")}


def _score_spearman(heads: pd.DataFrame, trial_ids: pd.Series) -> float:
    """Mean pairwise Spearman correlation of the trials' head scores (NaN when the scores are missing or constant)."""
    if heads.empty or "score" not in heads:
        return float("nan")
    rows = heads[heads["trial_id"].isin(set(trial_ids))]
    if rows.empty:
        return float("nan")
    grid = rows.pivot_table(index=["layer", "head"], columns="trial_id", values="score").dropna()
    vectors = [grid[c].to_numpy(float) for c in grid.columns if np.ptp(grid[c].to_numpy(float)) > 0]
    if len(vectors) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = [sstats.spearmanr(a, b).statistic for a, b in itertools.combinations(vectors, 2)]
    return float(np.nanmean(values))
