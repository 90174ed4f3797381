"""Activation-aware structured criteria of today's LLM pruning papers, at head granularity: FLAP and Wanda-sp.

Both read the input of each layer's output projection over the calibration tokens: head h owns its channels
j in [h * d, (h + 1) * d) (d = head_dim), the columns W_O[:, j] those channels are read by. With x_nj the value of
channel j at non-padding token n (N tokens):

- `wanda_sp` (structured Wanda, as FLAP's code prunes attention with it):
      S_j = mean_i |W_O[i, j]| * sqrt(mean_n x_nj^2),   score_h = sum_{j in h} S_j
  (Wanda's |W_ij| * ||X_j||_2 averaged over a column; the norm divided by sqrt(N) so batches do not matter).
- `flap` (An et al., "Fluctuation-based Adaptive Structured Pruning", AAAI 2024), its WIFV metric:
      S_j = (1/N) sum_n (x_nj - mean_n x_nj)^2 * ||W_O[:, j]||_2^2,   score_h = sum_{j in h} S_j
  A channel that barely fluctuates can be replaced by its mean (FLAP's bias compensation), so what removing it
  costs is its fluctuation, weighted by how strongly the projection reads it. `standardize` (default True, FLAP's
  adaptive structure): each layer's head scores are standardised, (s - mean_layer) / std_layer, before the global
  ranking, so layers compete on a common scale and pruning ratios differ by layer.

Higher = more important, as for every strategy. GQA: query heads own o's channels, so the scores are per query
head and `select_heads` removes whole KV groups. Data: one forward pass per scoring batch, no backward. Memory:
two float64 vectors per layer (channel sums and sums of squares).
"""
from __future__ import annotations

import torch
from torch import nn

from sentinel.contract import boolean
from sentinel.models import head_layout
from sentinel.pruning.base import Batch, HeadScores, register_strategy, score_grid, visit_output_inputs
from sentinel.pruning.weights import layer_head_weights


def channel_moments(model: nn.Module, batches: list[Batch]) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """Per layer, float64 [heads * head_dim]: the sum and the sum of squares of each input channel of the output
    projection over the non-padding tokens of `batches`, and the number of those tokens."""
    layout = head_layout(model)
    sums = [torch.zeros(n * layout.head_dim, dtype=torch.float64) for n in layout.heads]
    squares = [torch.zeros(n * layout.head_dim, dtype=torch.float64) for n in layout.heads]

    def accumulate(layer: int, x: torch.Tensor) -> None:
        x = x.double()  # [N, heads * d]
        sums[layer] += x.sum(0).cpu()
        squares[layer] += x.square().sum(0).cpu()

    tokens = visit_output_inputs(model, batches, accumulate)
    return sums, squares, tokens


def _columns(model: nn.Module, layer: int) -> torch.Tensor:
    """W_O's columns grouped by head: [heads, out, d] (float64)."""
    return layer_head_weights(model, layer).o.double()


@register_strategy("wanda_sp", uses_seed=False)
def wanda_sp_scores(model: nn.Module, batches: list[Batch], *, generator: torch.Generator) -> HeadScores:
    """Structured Wanda: per channel mean |W_O column| x RMS of the channel's activation, summed per head."""
    layout = head_layout(model)
    _, squares, tokens = channel_moments(model, batches)
    per_layer = []
    for layer, n in enumerate(layout.heads):
        rms = (squares[layer] / tokens).sqrt().view(n, layout.head_dim)  # [heads, d]
        weight = _columns(model, layer).abs().mean(1)  # [heads, d]: mean over output rows
        per_layer.append((weight * rms).sum(-1))
    return HeadScores(scores=score_grid(per_layer), strategy="wanda_sp",
                      meta={"forward_passes": len(batches), "backward_passes": 0, "tokens_seen": tokens})


@register_strategy("flap", defaults={"standardize": True}, checks={"standardize": boolean}, uses_seed=False)
def flap_scores(model: nn.Module, batches: list[Batch], *, generator: torch.Generator,
                standardize: bool = True) -> HeadScores:
    """FLAP: fluctuation (variance over tokens) of each channel x squared norm of its W_O column, summed per head;
    with `standardize`, each layer's head scores are standardised before the global ranking (adaptive structure).

    Args:
        standardize: per-layer (s - mean) / std of the head scores (FLAP's AL-AM); False keeps raw magnitudes.
    """
    layout = head_layout(model)
    sums, squares, tokens = channel_moments(model, batches)
    per_layer = []
    for layer, n in enumerate(layout.heads):
        mean = sums[layer] / tokens
        fluctuation = (squares[layer] / tokens - mean.square()).clamp(min=0).view(n, layout.head_dim)  # [heads, d]
        weight = _columns(model, layer).square().sum(1)  # [heads, d]: squared column norms
        score = (fluctuation * weight).sum(-1)
        if standardize:
            spread = score.std() if n > 1 else torch.tensor(0.0, dtype=score.dtype)
            score = (score - score.mean()) / spread.clamp(min=1e-30)
        per_layer.append(score)
    return HeadScores(scores=score_grid(per_layer), strategy="flap",
                      meta={"forward_passes": len(batches), "backward_passes": 0, "tokens_seen": tokens,
                            "standardize": standardize})
