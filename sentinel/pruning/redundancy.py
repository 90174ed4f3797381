"""Redundancy: a head matters by what it adds that the other heads of its layer do not already provide.

The seed's planned "head interactions and redundancy". Michel et al. (2019, section 6) show that heads
interact: removing one head changes how much the others matter; Bian et al. ("On Attention Redundancy",
NAACL 2021) find many heads of a layer redundant by the similarity of their outputs. This strategy turns
that into a ranking by greedy backward elimination over the heads' output contributions:

- Head h's contribution at token n is what it adds to the residual stream, c_h(n) = W_O^h x_h(n): its
  output x_h [head_dim] read by its own columns of the output projection. Over the scoring data's
  non-padding tokens, each layer gets the Gram matrix G[h, g] = sum_n <c_h(n), c_g(n)>.
- Head h's unique part, given the set S of other heads still kept in its layer, is the squared residual
  of the best least-squares fit of c_h by the c_g (g in S) with one coefficient per head:
  u(h | S) = G_hh - G_hS G_SS^+ G_Sh (column-subset selection, Boutsidis et al. 2009, run backwards).
- Repeatedly remove, across all layers, the head with the smallest unique part (ties: the smaller
  ||c_h||^2 = G_hh, then lower (layer, head)); then update its layer's remaining heads. A layer's last
  head is never removed. Heads removed first are the least important.

Scores are ranks 0..n-1 (higher = more important). An exactly useless head (c_h = 0) has u = 0 and goes
first; of an exactly duplicated pair, u = 0 for both until one is removed, after which its twin's unique
part is its whole contribution. The ranking ignores what later layers do with the contributions (see
`gradient` for a loss-based view) and compares unique parts across layers in absolute size.

Data: one forward pass per scoring batch; no backward. Memory: one layer's contributions
[tokens, heads, hidden] at a time, in the output projection's pre-hook.
"""
from __future__ import annotations

import torch
from torch import nn

from sentinel.models import head_layout
from sentinel.pruning.base import Batch, HeadScores, register_strategy, score_grid, visit_output_inputs
from sentinel.pruning.weights import layer_head_weights


def contribution_grams(model: nn.Module, batches: list[Batch]) -> list[torch.Tensor]:
    """Per layer, float64 [heads, heads]: G[h, g] = sum over non-padding tokens of <c_h, c_g>."""
    layout = head_layout(model)
    o_weights = [layer_head_weights(model, l).o.double() for l in range(layout.num_layers)]  # [heads, out, d]
    grams = [torch.zeros(n, n, dtype=torch.float64) for n in layout.heads]

    def accumulate(layer: int, x: torch.Tensor) -> None:
        x = x.double().unflatten(-1, (-1, layout.head_dim))  # [N, heads, d]
        c = torch.einsum("nhd,hod->nho", x, o_weights[layer].to(x.device))  # [N, heads, out]
        grams[layer] += torch.einsum("nho,ngo->hg", c, c).cpu()

    visit_output_inputs(model, batches, accumulate)
    return grams


def unique_part(gram: torch.Tensor, head: int, others: list[int]) -> float:
    """G_hh - G_hS G_SS^+ G_Sh: the squared residual of head `head`'s contribution fitted by `others`."""
    if not others:
        return float(gram[head, head])
    s = torch.tensor(others)
    g_hs = gram[head, s]
    fit = g_hs @ torch.linalg.pinv(gram[s][:, s], hermitian=True) @ g_hs
    return max(float(gram[head, head] - fit), 0.0)


def elimination_order(grams: list[torch.Tensor]) -> list[tuple[int, int]]:
    """(layer, head) in greedy removal order: smallest unique part first; each layer's last head at the end."""
    kept = [list(range(g.shape[0])) for g in grams]
    unique = [{h: unique_part(g, h, [o for o in kept[l] if o != h]) for h in kept[l]} for l, g in enumerate(grams)]
    order = []
    while True:
        candidates = [(unique[l][h], float(grams[l][h, h]), l, h) for l in range(len(grams)) if len(kept[l]) > 1
                      for h in kept[l]]
        if not candidates:
            break
        _, _, layer, head = min(candidates)
        order.append((layer, head))
        kept[layer].remove(head)
        g = grams[layer]
        unique[layer] = {h: unique_part(g, h, [o for o in kept[layer] if o != h]) for h in kept[layer]}
    last = sorted((float(grams[l][h, h]), l, h) for l in range(len(grams)) for h in kept[l])
    return order + [(l, h) for _, l, h in last]


@register_strategy("redundancy")
def redundancy_scores(model: nn.Module, batches: list[Batch], *, generator: torch.Generator) -> HeadScores:
    """Greedy removal of the head whose output the rest of its layer best reproduces (rank; high = unique)."""
    grams = contribution_grams(model, batches)
    order = elimination_order(grams)
    ranks = score_grid([torch.zeros(g.shape[0]) for g in grams])
    for rank, (layer, head) in enumerate(order):
        ranks[layer, head] = float(rank)
    meta = {"forward_passes": len(batches), "backward_passes": 0}
    return HeadScores(scores=ranks, strategy="redundancy", meta=meta)
