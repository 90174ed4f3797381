"""T5's relative position bias after head removal: the one thing slicing q/k/v/o cannot fix.

In a T5 stack only layer 0's attention owns `relative_attention_bias` (an Embedding [buckets, heads]); it
computes the bias [1, heads, q, k] and the stack hands that same tensor to every later layer, which adds it to
its scores. Once layers keep different heads, one tensor cannot serve them all (this is why transformers 4's
T5 `prune_heads` broke, issue #19625). So the bias embedding is never sliced (it keeps every original head),
and every attention module of a self-attention stack gets:
- a forward pre-hook that takes the full bias (computing it with layer 0's embedding when the stack has not yet)
  and gives the module only the rows of the original heads it still has (`sentinel_heads`);
- a forward hook that hands the FULL bias on to the next layer, instead of the module's slice.
Cross-attention has no position bias (zeros of the module's own head count), so its modules get a pre-hook
that drops the previous layer's zeros: each layer makes its own, of its own size.
Masking needs none of this (head counts do not change). The hooks are installed once per model.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sentinel.models.adapters import ADAPTERS, AttentionAdapter
from sentinel.models.layout import attention_modules


def keep_full_position_bias(model: nn.Module) -> None:
    if getattr(model, "sentinel_t5_bias_hooks", False):
        return
    modules = attention_modules(model)
    per_stack = len(modules) // 3  # encoder self, decoder self, decoder cross: same number of layers each
    for start in (0, per_stack):
        stack = modules[start:start + per_stack]
        owner = stack[0]  # has_relative_attention_bias: computes the bias for the whole stack
        for module in stack:
            # a tuple, not a module attribute (which would register the owner as a child); deepcopy maps it
            # to the copy's own owner, where a closure would keep pointing at the original model's
            module.sentinel_bias_owner = (owner,)
            module.register_forward_pre_hook(_select_rows, with_kwargs=True)
            module.register_forward_hook(_pass_full_bias)
    for module in modules[2 * per_stack:]:
        module.register_forward_pre_hook(_own_zeros, with_kwargs=True)
    model.sentinel_t5_bias_hooks = True


def _select_rows(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    full = kwargs.get("position_bias")
    if full is None:  # the stack's first call: the bias of every original head
        hidden = args[0] if args else kwargs["hidden_states"]
        cache = kwargs.get("cache")
        past = cache.get_seq_length(module.layer_idx) if cache is not None else 0
        (owner,) = module.sentinel_bias_owner
        full = owner.compute_bias(hidden.shape[1], past + hidden.shape[1], device=hidden.device, past_seen_tokens=past)
    module.sentinel_full_bias = full
    kept = getattr(module, "sentinel_heads", None)
    if kept is not None and len(kept) != full.shape[1]:
        full = full.index_select(1, torch.tensor(kept, device=full.device))
    return args, {**kwargs, "position_bias": full}


def _pass_full_bias(module: nn.Module, args: tuple, output: tuple) -> tuple:
    full = module.__dict__.pop("sentinel_full_bias", None)
    return output if full is None else (output[0], full, *output[2:])


def _own_zeros(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    return args, {**kwargs, "position_bias": None}


# T5: three stacks, indexed one after the other: encoder self-attention (layers 0..L-1), decoder
# self-attention (L..2L-1), decoder cross-attention (2L..3L-1); docs/MIGRATION.md ("T5") has the indexing.
ADAPTERS.register("t5")(
    AttentionAdapter(
        name="t5",
        layers="",
        stacks=(("encoder.block", "layer.0.SelfAttention"), ("decoder.block", "layer.0.SelfAttention"),
                ("decoder.block", "layer.1.EncDecAttention")),
        attention="",
        q="q",
        k="k",
        v="v",
        o="o",
        head_dim_attr="key_value_proj_dim",
        attrs={"n_heads": lambda h, kv, d: h, "inner_dim": lambda h, kv, d: h * d},
        after_prune=lambda model: keep_full_position_bias(model),
    )
)
