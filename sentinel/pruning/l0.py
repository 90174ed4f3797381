"""L0-regularised head gates (Voita, Talbot, Moiseev, Sennrich & Titov 2019; Louizos, Welling & Kingma 2018).

Each head's output is multiplied by a stochastic gate z_h drawn from a Hard Concrete distribution with a
learnable location log_alpha_h (temperature beta = 2/3, stretch (gamma, zeta) = (-0.1, 1.1)):
    u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log_alpha) / beta),  z = clamp(s (zeta - gamma) + gamma, 0, 1),
so a gate is exactly 0 or 1 with non-zero probability. Training minimises
    L = task loss + penalty * sum_h P(z_h != 0),   P(z_h != 0) = sigmoid(log_alpha_h - beta log(-gamma / zeta)),
the expected number of open gates being the L0 norm. Task loss: next-token cross-entropy for causal LMs;
for encoders, distillation to the dense model, 1 - cos(mean-pooled output, dense mean-pooled output).

Differences from Voita et al., stated so results are read right:
- only the gates are trained (the model's weights are frozen, as in Michel-style scoring); recovery of
  the weights is the pipeline's fine-tune, as for every other strategy;
- a short budget (`steps` optimizer steps over the scoring batches, cycled) instead of training to
  convergence, and no sweep of the penalty to hit a head count: the ranking, not the gates' final
  open/closed state, is used, so every level of a grid shares one training run.
Heads are ranked by the probability that their gate stays open; the score is its logit,
log_alpha_h - beta log(-gamma / zeta), which orders heads like P(z_h != 0) without saturating at 1.

Seeded: the uniform noise u comes from the strategy's generator. Cost: `steps` forward + backward passes
(gradient: one per scoring batch), with memory as `gradient` (activations of one batch).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sentinel.contract import integer, number, optional
from sentinel.models import HeadMask, head_layout, is_causal_lm
from sentinel.models.device import mean_pool
from sentinel.pruning.base import (
    Batch, HeadScores, eval_mode, model_device, register_strategy, score_grid, to_device,
)
from sentinel.pruning.gradient import frozen_parameters, lm_loss, lm_targets

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1
LOGIT_SHIFT = BETA * math.log(-GAMMA / ZETA)  # P(open) = sigmoid(log_alpha - LOGIT_SHIFT)


def hard_concrete(log_alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One sample of the stretched, clamped Hard Concrete gates (differentiable w.r.t. log_alpha)."""
    u = torch.rand(log_alpha.shape, generator=generator, dtype=torch.float64).clamp(1e-6, 1 - 1e-6).to(log_alpha)
    s = torch.sigmoid((u.log() - (1 - u).log() + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def open_logit(log_alpha: torch.Tensor) -> torch.Tensor:
    """logit of P(gate != 0)."""
    return log_alpha - LOGIT_SHIFT


@register_strategy(
    "l0", defaults={"steps": 60, "lr": 0.1, "penalty": None, "init": 3.0},
    checks={"steps": integer(minimum=1), "lr": number(above=0), "penalty": optional(number(above=0)), "init": number()}, uses_seed=True,
)
def l0_scores(
    model: nn.Module, batches: list[Batch], *, generator: torch.Generator, steps: int = 60, lr: float = 0.1,
    penalty: float | None = None, init: float = 3.0,
) -> HeadScores:
    """Hard Concrete head gates trained with an L0 penalty; ranked by P(gate open) (Voita et al. 2019).

    Args:
        steps: Adam steps on the gates (batches cycled in order).
        lr: Adam learning rate of log_alpha.
        penalty: lambda, the cost of one expected open gate; None: 1e-3 with the next-token loss, 1e-5 with
            distillation (whose gradients near the dense model are about 100x smaller: 1 - cos is quadratic there).
        init: initial log_alpha of every gate (3.0: P(open) = 0.99).
    """
    lm = is_causal_lm(model)
    penalty = penalty if penalty is not None else (1e-3 if lm else 1e-5)
    usable = [b for b in batches if not lm or lm_targets(b)]
    if not usable:
        raise ValueError("batches: no non-padding token after the first position; the next-token loss has no targets")
    layout = head_layout(model)
    device = model_device(model)
    log_alpha = score_grid([torch.full((n,), float(init)) for n in layout.heads]).to(device)  # NaN pads
    log_alpha = torch.nan_to_num(log_alpha, nan=0.0).requires_grad_(True)
    optimizer = torch.optim.Adam([log_alpha], lr=lr)
    with eval_mode(model), frozen_parameters(model):
        targets = [] if lm else [_dense_embedding(model, to_device(b, device)) for b in usable]
        mask = HeadMask(model, {l: torch.ones(n, device=device) for l, n in enumerate(layout.heads)}, layout.head_dim)
        losses = []
        try:
            for step in range(steps):
                index = step % len(usable)
                batch = to_device(usable[index], device)
                z = hard_concrete(log_alpha, generator)
                for layer, n in enumerate(layout.heads):
                    mask.gates[layer] = z[layer, :n]
                task = lm_loss(model, batch) if lm else _distillation(model, batch, targets[index])
                expected_open = sum(torch.sigmoid(open_logit(log_alpha[l, :n])).sum() for l, n in enumerate(layout.heads))
                loss = task + penalty * expected_open
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(task.item())
        finally:
            mask.remove()
    logits = [open_logit(log_alpha[l, :n]).detach() for l, n in enumerate(layout.heads)]
    p_open = torch.sigmoid(torch.cat(logits))
    meta = {"loss": "next-token" if lm else "distillation", "forward_passes": steps, "backward_passes": steps,
            "task_loss_first_last": [losses[0], losses[-1]], "expected_open_heads": float(p_open.sum()), "penalty": penalty}
    return HeadScores(scores=score_grid(logits), strategy="l0", meta=meta)


def _dense_embedding(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return mean_pool(model.base_model(**batch).last_hidden_state, batch["attention_mask"])


def _distillation(model: nn.Module, batch: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    pooled = mean_pool(model.base_model(**batch).last_hidden_state, batch["attention_mask"])
    return (1.0 - F.cosine_similarity(pooled, target, dim=-1)).mean()
