"""The generic fallback: an adapter found from a model's module structure, used only once it is verified.

For a `model_type` with no registered adapter, `infer_adapter` reads the config (hidden size, heads, KV heads,
head_dim) and looks in the first block of the model's layer list for:
- the projections, by shape: q [hidden -> heads*d], k and v [hidden -> kv*d], o [heads*d -> hidden], or a fused
  [q | k | v] projection; where shapes alone are ambiguous (q, k and v have the same shape without GQA), by the
  usual names (q_proj/query/q_lin/..., o_proj/out_proj/dense/...);
- the attention module: the one holding head_dim (attributes named head_dim, attention_head_size, head_size);
- the attributes the forward pass reads that change with the head count, by the usual names (num_heads,
  num_attention_heads, n_heads, num_key_value_heads, num_key_value_groups, all_head_size).
`verified_adapter` then checks it before anything uses it: on a 2-layer random-init model of the same class
and config, masking heads (whole KV groups under GQA) and removing them must give the same logits (to 1e-4),
and masking must change them (the mask seam is live). Otherwise the model is refused with one line saying
what was found and what failed. The result is cached per (class, model_type).

GPT-NeoX is an example of a refusal: its fused query_key_value interleaves q, k and v per head, which is not
the [q | k | v] layout the fallback knows, so removal slices the wrong rows and verification fails.
"""
from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from sentinel.models.layout import head_layout
from sentinel.models.masking import mask_heads
from sentinel.models.removal import prune_heads
from sentinel.models.adapters import AttentionAdapter, set_fallback

NAMES = {
    "q": r"q|q_proj|query|q_lin|wq",
    "k": r"k|k_proj|key|k_lin|wk",
    "v": r"v|v_proj|value|v_lin|wv",
    "o": r"o|o_proj|out_proj|dense|c_proj|out_lin|wo|output\.dense",
    "qkv": r"qkv|qkv_proj|c_attn|query_key_value|wqkv",
}
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size")
HEAD_COUNT_ATTRS = {
    "num_heads": lambda h, kv, d: h, "num_attention_heads": lambda h, kv, d: h, "n_heads": lambda h, kv, d: h,
    "n_head": lambda h, kv, d: h, "num_key_value_heads": lambda h, kv, d: kv, "num_kv_heads": lambda h, kv, d: kv,
    "num_key_value_groups": lambda h, kv, d: h // kv, "all_head_size": lambda h, kv, d: h * d,
}
_VERIFIED: dict[tuple[str, str], AttentionAdapter] = {}


class FallbackError(ValueError):
    pass


def _features(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a Linear or GPT-2 style Conv1D; None for anything else."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.nf
    return None


def _sizes(config: Any) -> tuple[int, int, int, int, int]:
    """(layers, hidden, heads, kv heads, head_dim) from the config's standard attributes."""
    try:
        layers, hidden, heads = config.num_hidden_layers, config.hidden_size, config.num_attention_heads
    except AttributeError as exc:
        raise FallbackError(f"config lacks {exc.name}") from None
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return layers, hidden, heads, kv, head_dim


def _layer_list(model: nn.Module, layers: int) -> str:
    for name, module in model.base_model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == layers and len({type(m) for m in module}) == 1:
            return name
    raise FallbackError(f"no ModuleList of {layers} identical blocks under {type(model.base_model).__name__}")


def _pick(candidates: list[str], role: str) -> str | None:
    named = [c for c in candidates if re.fullmatch(rf"(.*\.)?({NAMES[role]})", c)]
    pool = named or (candidates if len(candidates) == 1 else [])
    return min(pool, key=len) if len(pool) == 1 or named else None


def infer_adapter(model: nn.Module) -> AttentionAdapter:
    """An adapter found from `model`'s structure (not yet verified); FallbackError saying what is missing."""
    config = model.config
    layers, hidden, heads, kv, d = _sizes(config)
    layers_path = _layer_list(model, layers)
    block = model.base_model.get_submodule(layers_path)[0]
    linear = {name: f for name, m in block.named_modules() if (f := _features(m)) is not None}
    q = k = v = None
    qkv = _pick([n for n, f in linear.items() if f == (hidden, (heads + 2 * kv) * d)], "qkv")
    if qkv is None:  # separate projections
        q = _pick([n for n, f in linear.items() if f == (hidden, heads * d)], "q")
        k = _pick([n for n, f in linear.items() if f == (hidden, kv * d) and n != q], "k")
        v = _pick([n for n, f in linear.items() if f == (hidden, kv * d) and n not in (q, k)], "v")
    o = _pick([n for n, f in linear.items() if f == (heads * d, hidden) and n not in (q, k, v)], "o")
    if o is None or not (qkv or (q and k and v)):
        found = {role: path for role, path in (("q", q), ("k", k), ("v", v), ("qkv", qkv), ("o", o))}
        raise FallbackError(f"projections not all found in {layers_path}[0]: {found}")
    attention = _attention_path(block, q or qkv, d)
    module = block.get_submodule(attention) if attention else block
    head_dim_attr = next(a for a in HEAD_DIM_ATTRS if getattr(module, a, None) == d)
    attrs = {a: rule for a, rule in HEAD_COUNT_ATTRS.items() if isinstance(getattr(module, a, None), int)}
    causal = "CausalLM" in type(model).__name__
    return AttentionAdapter(
        name=f"fallback:{config.model_type}", layers=layers_path, attention=attention, o=o,
        head_dim_attr=head_dim_attr, q=q, k=k, v=v, qkv=qkv, attrs=attrs, causal=causal, gqa=kv != heads,
    )


def _attention_path(block: nn.Module, projection: str, head_dim: int) -> str:
    """The closest ancestor of `projection` (inside the block) that holds head_dim under a known name."""
    parts = projection.split(".")[:-1]
    for end in range(len(parts), -1, -1):
        path = ".".join(parts[:end])
        module = block.get_submodule(path) if path else block
        if any(getattr(module, a, None) == head_dim for a in HEAD_DIM_ATTRS):
            return path
    raise FallbackError(f"no module above {projection} holds head_dim={head_dim} as one of {', '.join(HEAD_DIM_ATTRS)}")


def verified_adapter(model: nn.Module) -> AttentionAdapter:
    """The inferred adapter once masked == pruned holds on a 2-layer random model of `model`'s class and config;
    else a one-line FallbackError naming what was found and what failed."""
    return verified_for(type(model), model.config)


def verified_for(cls: type, config: Any) -> AttentionAdapter:
    """As verified_adapter, from a model class and its config (the spec checks a local folder this way)."""
    key = (cls.__name__, config.model_type)
    if key in _VERIFIED:
        return _VERIFIED[key]
    try:
        small = _small_model(cls, config)
    except Exception as exc:  # a config this code does not understand: refused, in one line
        raise FallbackError(f"model_type: {config.model_type!r} has no registered adapter and the generic fallback "
                            f"could not build a small {cls.__name__} to check ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    try:
        adapter = infer_adapter(small)
    except FallbackError as exc:
        raise FallbackError(f"model_type: {config.model_type!r} has no registered adapter and the generic "
                            f"fallback found no attention to adapt ({exc})") from None
    found = f"layers={adapter.layers}, q/k/v={adapter.qkv or (adapter.q, adapter.k, adapter.v)}, o={adapter.o}"
    failure = _verify(small, adapter)
    if failure:
        raise FallbackError(f"model_type: {config.model_type!r} has no registered adapter; the generic fallback "
                            f"found {found} but {failure}; register an adapter in sentinel/models/adapters.py")
    _VERIFIED[key] = adapter
    return adapter


def _small_model(cls: type, config: Any) -> nn.Module:
    """A 2-layer random-init model of the class: what the structure is read from and verified on (cheap)."""
    config = copy.deepcopy(config)
    config.num_hidden_layers = min(2, getattr(config, "num_hidden_layers", 2))
    if isinstance(getattr(config, "layer_types", None), list) and "layer_types" in vars(config):
        config.layer_types = config.layer_types[: config.num_hidden_layers]  # per-layer lists follow the count
    if hasattr(config, "pruned_heads"):  # the small model is dense whatever the full one is
        config.pruned_heads = {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return cls(config).eval()


def _verify(small: nn.Module, adapter: AttentionAdapter) -> str | None:
    """None if masking and removing heads through `adapter` agree on `small` (the candidate is passed to every
    heads function explicitly: it is not registered until it passes); else what went wrong, in one line."""
    config = small.config
    try:
        layout = head_layout(small, adapter)
        group = layout.group_size(0)
        remove = {0: list(range(group)), 1: list(range(layout.heads[1] - group, layout.heads[1]))}
        ids = torch.randint(0, min(int(config.vocab_size), 1000), (2, 8), generator=torch.Generator().manual_seed(0))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad():
            dense = _output(small, batch)
            with mask_heads(small, remove, adapter=adapter):
                masked = _output(small, batch)
            pruned_model = prune_heads(copy.deepcopy(small), remove, adapter=adapter)
            pruned = _output(pruned_model, batch)
    except Exception as exc:  # any failure of the inferred adapter is a refusal, in one line
        return f"{type(exc).__name__} while checking it: {str(exc).splitlines()[0] if str(exc) else ''}"
    if torch.allclose(masked, dense):
        return "masking heads did not change the output (the output projection is not where the heads meet)"
    diff = float((masked - pruned).abs().max())
    if diff > 1e-4 * max(1.0, float(masked.abs().max())):
        return f"masked and pruned outputs differ by {diff:.3g} on a random batch"
    return None


def _output(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


set_fallback(verified_adapter)  # get_adapter asks it for a model_type no adapter is registered for
