"""What every head-scoring strategy shares: the result type, the registry, and input checks.

A strategy is `score(model, batches, *, generator, **options) -> HeadScores`. For every strategy a
HIGHER score means a MORE important head, so selection always prunes the lowest scores first.

Each strategy also says whether its scores depend on the seed (`uses_seed`) and on the calibration data
(`uses_data`). Scores are computed once per (model, strategy, options, seed if used, calibration draw if used)
and shared: with calibration resampled per seed (the default) every data-driven strategy is scored per seed;
magnitude, which reads no data, is scored once for the whole grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import torch
from torch import nn

from sentinel.models.device import eval_mode, model_device, to_device  # noqa: F401  (re-exported for the strategies)
from sentinel.models.activations import visit_output_inputs  # noqa: F401  (re-exported for the strategies)
from sentinel.models import get_adapter, head_layout
from sentinel.contract import SEED, Rule, SpecError
from sentinel.registry import Registry

Batch = Mapping[str, torch.Tensor]  # {"input_ids": [B, T], "attention_mask": [B, T]}
ScoreFn = Callable[..., "HeadScores"]
OptionRule = Rule  # the trial contract's rules (sentinel.contract): (value, field path) -> value, or a SpecError
SeedUse = Callable[[nn.Module], bool]  # model -> whether the strategy's scores on it depend on the seed


class FinetunePruner(Protocol):
    """A strategy's hook into fine-tuning (`on_step` of sentinel.finetune.finetune): called after every optimizer step,
    it zeroes more gates of the trial's mask on its schedule and says whether it did."""

    requested: int  # heads the trial asked for
    notes: list[str]  # what selection said about the heads it took (Selection.notes)

    def __call__(self, step: int) -> bool: ...


# (model, mask, calibration batches, *, level, steps, policy, min_heads_per_layer, generator, **strategy options)
PrunerFactory = Callable[..., FinetunePruner]


@dataclass
class HeadScores:
    """Per-head importance.

    `scores` is float32 on CPU, [layers, max heads]; higher = more important. In a model whose layers
    hold different numbers of heads (after physical pruning), missing heads are NaN.
    """

    scores: torch.Tensor
    strategy: str
    meta: dict = field(default_factory=dict)
    # query heads per KV head in each layer of the scored model (all 1 without GQA): what select_heads
    # needs to pick whole KV groups, so that prune_heads accepts its selection without being told
    group_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Strategy:
    """A registered scorer with the options it accepts (name -> default) and their checks."""

    name: str
    fn: ScoreFn
    defaults: Mapping[str, Any]
    checks: Mapping[str, OptionRule] = field(default_factory=dict)
    summary: str = ""
    uses_seed: bool | SeedUse = False
    # the strategy removes heads while the model fine-tunes: what builds its per-step hook (it owns the schedule; see
    # pruning/dynamic.py), and its scores are those it starts from; None for a strategy that prunes at once
    during_finetune: PrunerFactory | None = None
    uses_data: bool = True  # False: scores ignore the calibration batches (magnitude, random), shared across draws
    # "layer": every head of a layer has the layer's score and selection takes whole layers (attention_drop)
    unit: str = "head"

    def depends_on_seed(self, model: nn.Module) -> bool:
        """Whether scores of `model` change with the seed (if not, one scoring serves every seed)."""
        return self.uses_seed(model) if callable(self.uses_seed) else bool(self.uses_seed)

    def __call__(self, model: nn.Module, batches: list[Batch], *, generator: torch.Generator, **options) -> HeadScores:
        return self.fn(model, batches, generator=generator, **options)

    def resolve(self, options: Mapping[str, Any], where: str = "options") -> dict[str, Any]:
        """Defaults overlaid with `options`, each checked by its rule; a SpecError (a ValueError) naming the field
        (`<where>.<option>`) for an unknown name or a bad value."""
        resolved = dict(self.defaults)
        for name, value in options.items():
            if name not in self.defaults:
                allowed = ", ".join(sorted(self.defaults)) or "none"
                raise SpecError(f"{where}.{name}: not an option of strategy {self.name!r}; allowed: {allowed}")
            resolved[name] = self.checks[name](value, f"{where}.{name}") if name in self.checks else value
        return resolved


STRATEGIES: Registry[Strategy] = Registry("strategy")


def register_strategy(
    name: str, *, defaults: Mapping[str, Any] | None = None, checks: Mapping[str, OptionRule] | None = None,
    uses_seed: bool | SeedUse = False, during_finetune: PrunerFactory | None = None, uses_data: bool = True,
    unit: str = "head",
) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator: registers `fn` as strategy `name` accepting the options in `defaults`.

    `uses_seed`: whether the scores depend on the seed (a bool, or model -> bool when it depends on the model).
    `during_finetune`: the strategy prunes during fine-tuning: the factory of its hook (PrunerFactory), which the
        pipeline builds and fine-tuning calls after every step.
    `uses_data`: whether the scores read the calibration batches (if not, one scoring serves every draw).
    `unit`: "head", or "layer" for a strategy that scores and removes whole attention sublayers.
    """

    def decorate(fn: ScoreFn) -> ScoreFn:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        STRATEGIES.add(name, Strategy(name, fn, dict(defaults or {}), dict(checks or {}), summary, uses_seed,
                                      during_finetune, uses_data, unit))
        return fn

    return decorate


# ---------------------------------------------------------------------------- input checks


def validate_batches(batches: Any) -> int:
    """Checks the scoring data before any work; returns the number of non-padding tokens.

    Args:
        batches: a non-empty list of dicts with integer `input_ids` and `attention_mask`, both [B, T].
    Returns:
        The number of positions whose attention_mask is 1, over all batches (at least 1).
    """
    if isinstance(batches, Mapping) or not isinstance(batches, (list, tuple)) or not batches:
        raise ValueError(f"batches: expected a non-empty list of dicts with input_ids and attention_mask, got {_kind(batches)}")
    tokens = 0
    for i, batch in enumerate(batches):
        if not isinstance(batch, Mapping) or "input_ids" not in batch or "attention_mask" not in batch:
            raise ValueError(f"batches[{i}]: expected a dict with input_ids and attention_mask, got {_kind(batch)}")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if not (isinstance(ids, torch.Tensor) and isinstance(mask, torch.Tensor)) or ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(
                f"batches[{i}]: input_ids and attention_mask must be tensors of the same shape [B, T], got "
                f"{_shape(ids)} and {_shape(mask)}"
            )
        tokens += int(mask.sum())
    if tokens == 0:
        raise ValueError("batches: every attention_mask is 0; scoring needs at least one non-padding token")
    return tokens


def validate_model(model: Any) -> None:
    """A ValueError (listing supported model types) unless `model` has a head adapter."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a transformers nn.Module, got {type(model).__name__}")
    get_adapter(model)


def _kind(value: Any) -> str:
    return f"an empty {type(value).__name__}" if isinstance(value, (list, tuple)) and not value else type(value).__name__


def _shape(value: Any) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


# ---------------------------------------------------------------------------- shared helpers


def round_half_up(x: float) -> int:
    """Nearest integer, halves rounded up (2.5 -> 3). Python's round() would give 2 (banker's rounding)."""
    return int(math.floor(x + 0.5))


def score_grid(per_layer: list[torch.Tensor]) -> torch.Tensor:
    """Stacks per-layer score vectors into float32 CPU [layers, max heads], NaN where a layer has fewer heads."""
    width = max(len(s) for s in per_layer)
    grid = torch.full((len(per_layer), width), float("nan"), dtype=torch.float32)
    for layer, s in enumerate(per_layer):
        grid[layer, : len(s)] = s.detach().to(device="cpu", dtype=torch.float32)
    return grid


def layer_heads(model: nn.Module) -> tuple[int, ...]:
    return head_layout(model).heads


def uniform_group_size(model: nn.Module, strategy: str) -> int:
    """The GQA group size shared by every layer (strategies that select heads themselves need one)."""
    layout = head_layout(model)
    sizes = {layout.group_size(layer) for layer in range(layout.num_layers)}
    if len(sizes) != 1:
        raise ValueError(f"model: {strategy} needs one GQA group size in every layer, got {sorted(sizes)}")
    return sizes.pop()


def score_heads(strategy: str, model: nn.Module, batches: list[Batch], *, seed: int = 0, **options) -> HeadScores:
    """Scores every attention head of `model` with a registered strategy.

    Everything is checked before any forward pass: the strategy name (the error lists the registered
    names), its options, the model type, and that `batches` hold at least one non-padding token.

    Args:
        strategy: a name in `STRATEGIES` (see STRATEGIES.names() and docs/STRATEGIES.md).
        model: a transformers model whose `config.model_type` has a head adapter.
        batches: list of {"input_ids": [B, T], "attention_mask": [B, T]}.
        seed: seeds the `torch.Generator` handed to the strategy (global RNGs are never touched).
        **options: strategy options (see docs/STRATEGIES.md).
    Returns:
        HeadScores with `scores` float32 CPU [layers, heads], higher = more important.
    """
    scorer = STRATEGIES.get(strategy)
    resolved = scorer.resolve(options)
    SEED(seed, "seed")  # the trial contract's rule: a SpecError, a ValueError
    validate_model(model)
    tokens = validate_batches(batches)
    generator = torch.Generator().manual_seed(seed)
    result = scorer(model, list(batches), generator=generator, **resolved)
    layout = head_layout(model)
    _check_returned(strategy, result, (layout.num_layers, max(layout.heads)))
    # the unit select_heads takes whole: a KV group (GQA), or every head of a layer (layer-unit strategies)
    result.group_sizes = (tuple(layout.heads) if scorer.unit == "layer"
                          else tuple(layout.group_size(layer) for layer in range(layout.num_layers)))
    result.meta.setdefault("options", resolved)
    result.meta.setdefault("tokens", tokens)
    result.meta["seed"] = seed
    return result


def _check_returned(strategy: str, result: Any, shape: tuple[int, int]) -> None:
    """A strategy's return value, checked where an extender's mistake would otherwise surface as an AttributeError
    deep in selection: one line naming the strategy, what it returned and what it must return."""
    must = f"must return HeadScores with float scores of shape [layers, heads] = {list(shape)}"
    if not isinstance(result, HeadScores):
        raise TypeError(f"strategy {strategy!r} returned {type(result).__name__}; it {must}")
    scores = result.scores
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point() or tuple(scores.shape) != shape:
        found = (f"a {scores.dtype} tensor of shape {list(scores.shape)}" if isinstance(scores, torch.Tensor)
                 else type(scores).__name__)
        raise TypeError(f"strategy {strategy!r} returned scores as {found}; it {must}")
