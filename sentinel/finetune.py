"""Recovery fine-tuning after pruning: AdamW, linear warm-up then cosine decay, gradient clipping.

Objectives (`objective`; "auto" chooses by the kind of model):
- causal LMs (an adapter with `causal=True` and an LM head): next-token cross-entropy ("cross_entropy", auto's
  choice), labels = input_ids with padding set to -100; or "distill": the KL divergence from the dense model's
  next-token distribution to the student's at temperature T, KL(softmax(t/T) || softmax(s/T)) * T^2 (Hinton et al.
  2015), the mean over real tokens (Minitron and Puzzletron recover pruned LMs this way);
- encoders (no LM head): distillation to the dense model's sentence embeddings (auto and "distill"),
  loss = mean over the batch of 1 - cos(mean_pool(student), mean_pool(teacher)).
A teacher is frozen, in eval mode, and runs without gradients.

Pruned heads stay pruned. Physically removed heads no longer exist. Masked heads (a `HeadMask`
with zeros) get exactly zero gradient, because their outputs are multiplied by a zero gate before
the output projection; AdamW's decoupled weight decay would still shrink their weights, so when
the mask is passed in, their q/k/v rows and o columns are put back after every step: removing the
mask afterwards gives back the original heads. Gates are plain tensors, never optimised.

The recipe is written down in docs/METRICS.md ("Recovery fine-tuning").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from sentinel.contract import Contract, SpecError, checked, integer, number, one_of
from sentinel.models import HeadMask, get_adapter, head_layout, is_causal_lm
from sentinel.models.device import autocast, mean_pool, model_device
from sentinel.models.layout import blocks, head_slices, slice_parameters

Batch = dict[str, torch.Tensor]
OBJECTIVES = ("auto", "cross_entropy", "distill")
Curve = list[dict[str, Any]]  # rows {step, train_loss, eval_metric, lr}: sentinel.result.CURVE_COLUMNS
IGNORE = -100


@dataclass(frozen=True)
class FinetuneConfig(Contract):
    """Hyper-parameters of one recovery run; every field checks itself (sentinel.contract).

    `batch_size` is the most sequences per optimizer step: larger `train_batches` are split.
    """

    steps: int = checked(100, integer(minimum=1))
    lr: float = checked(5e-4, number(above=0))
    warmup_steps: int = checked(10, integer(minimum=0))
    weight_decay: float = checked(0.01, number(minimum=0))
    max_grad_norm: float = checked(1.0, number(above=0))
    batch_size: int = checked(8, integer(minimum=1))
    eval_every: int = checked(50, integer(minimum=1))
    # "full": every parameter trains; "lora": low-rank adapters (peft, the extra `lora`) on `lora_targets`, merged
    # into the weights after the last step, so the result is a plain model of the same shape
    method: str = checked("full", one_of(("full", "lora")))
    lora_rank: int = checked(8, integer(minimum=1, maximum=4096))
    lora_alpha: float = checked(16.0, number(above=0))
    # module names (suffixes of full names, peft's rule); empty: the attention projections of the family's adapter
    lora_targets: tuple[str, ...] = checked((), lambda value, name: _names(value, name))
    # what recovery minimises: "auto" (next-token cross-entropy for causal LMs, embedding distillation for encoders),
    # "cross_entropy" (causal LMs) or "distill" (to the dense model: its next-token distribution at `temperature`
    # for causal LMs, its sentence embeddings for encoders)
    objective: str = checked("auto", one_of(OBJECTIVES))
    temperature: float = checked(1.0, number(above=0))

    # fields added after results were published: left out of a trial's id while at their default
    LATE_DEFAULTS = {"method": "full", "lora_rank": 8, "lora_alpha": 16.0, "lora_targets": [], "objective": "auto",
                     "temperature": 1.0}
    # `seed` was a field the trial's seed always overwrote: gone, and kept in ids at the value every cell held
    RETIRED = {"seed": 0}

    def check_together(self) -> None:
        if self.warmup_steps > self.steps:
            default = next(f.default for f in fields(self) if f.name == "warmup_steps")
            said = f" ({default} is the default when it is not set)" if self.warmup_steps == default else ""
            raise SpecError(f"warmup_steps: {self.warmup_steps}{said} must be in [0, steps={self.steps}]")
        if self.method == "full" and self.lora_targets:
            raise SpecError("lora_targets: set with method 'full'; LoRA targets apply to method 'lora'")
        if self.temperature != 1.0 and self.objective != "distill":
            raise SpecError(f"temperature: {self.temperature:g} is set with objective {self.objective!r}; a "
                            "temperature applies to objective 'distill'")


def _names(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or \
            not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{name}: {value!r} is not a list of module names")
    return tuple(value)


def lr_factor(step: int, config: FinetuneConfig) -> float:
    """Multiplier of config.lr for optimizer step `step` (0-based): linear warm-up, then cosine to 0.

    Warm-up reaches the full rate at step warmup_steps - 1 (the first step is not wasted at lr 0);
    the cosine goes from 1 at step warmup_steps to 0 at step `steps` (one past the last step).
    """
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases and norm weights (1-D) are not decayed (nanoGPT's rule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


# ---------------------------------------------------------------------------- objectives


def lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over real tokens (transformers shifts the labels)."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)  # [B, T]
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss


def distillation_loss(model: nn.Module, teacher: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean over the batch of 1 - cos(student embedding, teacher embedding), mean-pooled on real tokens."""
    mask = batch["attention_mask"]
    with torch.no_grad():
        target = mean_pool(teacher(**batch).last_hidden_state.float(), mask)  # [B, D]
    student = mean_pool(model(**batch).last_hidden_state.float(), mask)  # [B, D]
    return (1.0 - F.cosine_similarity(student, target, dim=-1)).mean()


def lm_distillation_loss(model: nn.Module, teacher: nn.Module, batch: Batch, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions at `temperature`, times temperature^2 (so gradients
    keep their size across temperatures), the mean over real tokens."""
    mask = batch["attention_mask"].bool()  # [B, T]
    with torch.no_grad():
        target = F.log_softmax(teacher(**batch).logits.float() / temperature, dim=-1)  # [B, T, V]
    student = F.log_softmax(model(**batch).logits.float() / temperature, dim=-1)
    kl = F.kl_div(student, target, log_target=True, reduction="none").sum(-1)  # [B, T]
    return kl[mask].mean() * temperature ** 2


def _objective(model: nn.Module, teacher: nn.Module | None, config: FinetuneConfig) -> Callable[[Batch], torch.Tensor]:
    causal = is_causal_lm(model)
    objective = config.objective if config.objective != "auto" else ("cross_entropy" if causal else "distill")
    if objective == "cross_entropy":
        if not causal:
            raise ValueError(f"finetune.objective: 'cross_entropy' needs an LM head, which {type(model).__name__} has "
                             "not; encoders recover with 'distill' (or 'auto')")
        if teacher is not None:
            raise ValueError("teacher: given with objective 'cross_entropy'; a teacher is for objective 'distill'")
        return lambda batch: lm_loss(model, batch)
    if teacher is None:
        raise ValueError(f"teacher: objective 'distill' distils {type(model).__name__} to the dense model; pass the "
                         "dense model as teacher")
    if causal:
        return lambda batch: lm_distillation_loss(model, teacher, batch, config.temperature)
    return lambda batch: distillation_loss(model, teacher, batch)


# ---------------------------------------------------------------------------- LoRA


def lora_targets(model: nn.Module, config: FinetuneConfig) -> list[str]:
    """The modules LoRA adapts: config.lora_targets, or the family's attention projections (q/k/v or the fused qkv,
    and o), as module-name suffixes; a ValueError naming a target that matches no module."""
    adapter = get_adapter(model)
    targets = list(config.lora_targets) or [*adapter.projections(), adapter.o]
    names = [name for name, _ in model.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            examples = sorted({name.split(".")[-1] for name in names if name and not name.split(".")[-1].isdigit()})[:12]
            raise ValueError(f"finetune.lora_targets: {target!r} matches no module of this "
                             f"{model.config.model_type} model (module names end in e.g. {', '.join(examples)})")
    return targets


def attach_lora(model: nn.Module, config: FinetuneConfig):
    """LoRA adapters (peft) injected into `model` on its targets; every other parameter frozen. Returns the peft
    wrapper, whose merge_and_unload() folds the adapters into the weights."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("finetune.method: 'lora' needs peft; install the extra: pip install 'sentinel-bench[lora]'") from None
    targets = lora_targets(model, config)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=targets, lora_dropout=0.0,
                      bias="none")
    return get_peft_model(model, lora)


# ---------------------------------------------------------------------------- masked heads


def masked_slices(model: nn.Module, mask: HeadMask) -> list[tuple[nn.Parameter, int, torch.Tensor]]:
    """The weights that belong only to masked heads: their q rows, o columns, and the k/v rows of
    KV groups whose query heads are all masked (a KV head shared with a kept head is not frozen)."""
    adapter, layout = get_adapter(model), head_layout(model)
    out = []
    for layer, block in enumerate(blocks(model, adapter)):
        heads = torch.nonzero(mask.gates[layer] == 0).flatten().tolist()
        if not heads:
            continue
        group = layout.group_size(layer)
        kv = [g for g in range(layout.kv_heads[layer]) if all(h in heads for h in range(g * group, (g + 1) * group))]
        for piece in head_slices(adapter, layout, layer, heads, kv):
            if len(piece.index):
                out += slice_parameters(block, piece)
    return out


def _snapshot(slices):
    return [(p, dim, index, p.detach().index_select(dim, index).clone()) for p, dim, index in slices]


def _restore(snapshot) -> None:
    with torch.no_grad():
        for p, dim, index, values in snapshot:
            p.index_copy_(dim, index, values)


# ---------------------------------------------------------------------------- the loop


def _batch_order(n_batches: int, steps: int, generator: torch.Generator) -> list[int]:
    """Which batch each step uses: a fresh permutation of all batches per pass, from `generator`."""
    order: list[int] = []
    while len(order) < steps:
        order += torch.randperm(n_batches, generator=generator).tolist()
    return order[:steps]


def _evaluate(model: nn.Module, evaluate: Callable[[nn.Module], float] | None) -> float | None:
    if evaluate is None:
        return None
    model.eval()
    value = float(evaluate(model))
    model.train()
    return value


def _rebatch(train_batches: list[Batch], batch_size: int) -> list[Batch]:
    """The batches, each split into consecutive pieces of at most `batch_size` sequences."""
    if not train_batches:
        raise ValueError("train_batches: empty; give at least one {'input_ids', 'attention_mask'} batch")
    out = []
    for i, batch in enumerate(train_batches):
        if "input_ids" not in batch or "attention_mask" not in batch:
            raise ValueError(f"train_batches[{i}]: keys {sorted(batch)}; need 'input_ids' and 'attention_mask'")
        for start in range(0, batch["input_ids"].shape[0], batch_size):
            out.append({k: v[start : start + batch_size] for k, v in batch.items()})
    return out


def finetune(
    model: nn.Module,
    train_batches: list[Batch],
    config: FinetuneConfig,
    *,
    seed: int = 0,
    evaluate: Callable[[nn.Module], float] | None = None,
    teacher: nn.Module | None = None,
    mask: HeadMask | None = None,
    device: torch.device | str | None = None,
    bf16: bool = False,
    initial_metric: float | None = None,
    on_step: Callable[[int], bool] | None = None,
) -> Curve:
    """Fine-tunes `model` in place to recover from pruning, and returns its learning curve.

    Args:
        model: a pruned (or masked) causal LM or encoder; trained in train mode, returned in eval mode.
        train_batches: {"input_ids", "attention_mask"} [B, T] batches (any larger than
            config.batch_size are split), cycled in an order drawn from a torch.Generator seeded
            with `seed` (a new permutation per pass).
        config: the hyper-parameters.
        seed: the batch order and any randomness of training (the pipeline passes the trial's seed).
        evaluate: model -> float, called in eval mode before training (step 0), every
            config.eval_every steps, and after the last step.
        teacher: the dense model, for objective "distill" (an encoder's "auto"); none for "cross_entropy".
        mask: the HeadMask installed on `model`, if any (default `model.sentinel_mask`, where the
            pipeline and the pruning strategies keep it): its masked heads' weights are kept unchanged.
        device: where to train; default the model's device (the model and teacher are moved there).
        bf16: bfloat16 autocast on CUDA (ignored on CPU).
        initial_metric: the metric of `model` as it is now, if the caller already measured it
            (the pipeline's "pruned" value); step 0 then reuses it instead of evaluating again.
        on_step: called with the step number after every optimizer step, before that step's evaluation;
            it returns True when it masked more heads in `mask` (dynamic pruning), whose weights are then
            frozen from that step on.
    Returns:
        One row per step: {"step", "train_loss", "eval_metric" (None where not evaluated), "lr"};
        step 0 is the evaluation before training (train_loss and lr None).
    """
    train_batches = _rebatch(train_batches, config.batch_size)
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    if teacher is not None:
        # the teacher may be shared (the pipeline's cached dense model): only read it, under no_grad,
        # never flip its requires_grad flags, or every later copy of it would be frozen
        teacher.to(device).eval()
    loss_fn = _objective(model, teacher, config)
    mask = mask if mask is not None else getattr(model, "sentinel_mask", None)
    if config.method == "lora" and mask is not None:
        raise ValueError("finetune.method: 'lora' on a masked model would train adapters that read the masked heads; "
                         "use method 'remove' (physical removal) with LoRA")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    peft_model = attach_lora(model, config) if config.method == "lora" else None
    frozen = _snapshot(masked_slices(model, mask)) if mask is not None else []
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    order = _batch_order(len(train_batches), config.steps, torch.Generator().manual_seed(seed))

    # dropout draws from torch's global RNG; fork it (the caller's state is restored afterwards) and
    # seed the fork, so two runs with the same seed are identical
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        model.train()
        start = initial_metric if initial_metric is not None else _evaluate(model, evaluate)
        curve: Curve = [{"step": 0, "train_loss": None, "eval_metric": start, "lr": None}]
        for step, index in enumerate(order, start=1):
            batch = {k: v.to(device) for k, v in train_batches[index].items()}
            lr = scheduler.get_last_lr()[0]
            with autocast(device, bf16):
                loss = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            _restore(frozen)  # undo weight decay on masked heads (their gradient is exactly zero)
            if on_step is not None and on_step(step):
                frozen = _snapshot(masked_slices(model, mask))
            due = step % config.eval_every == 0 or step == config.steps
            metric = _evaluate(model, evaluate) if due else None
            curve.append({"step": step, "train_loss": loss.item(), "eval_metric": metric, "lr": lr})
    optimizer.zero_grad(set_to_none=True)
    if peft_model is not None:  # the adapters folded into the weights: `model` is a plain model again
        peft_model.merge_and_unload()
        for p, flag in flags:
            p.requires_grad_(flag)
    model.eval()
    return curve
