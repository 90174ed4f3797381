"""Architecture adapters: where each model family keeps its attention heads.

An adapter is data, not code. It names the dotted paths (relative to one transformer block) of the
q/k/v projections (or the fused qkv projection), the output projection, the attribute that holds
head_dim, and the attributes the forward pass reads that must change when heads are removed.
One generic piece of code (`sentinel.models.layout`, `masking`, `removal`) masks and slices every family from this.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from torch import nn

from sentinel.families import families
from sentinel.registry import Registry

# f(heads, kv_heads, head_dim) -> new value of an attribute of the attention module
AttrRule = Callable[[int, int, int], int]


@dataclass(frozen=True)
class AttentionAdapter:
    """Where one family keeps its heads. All paths are relative to one block of `layers`."""

    name: str
    layers: str  # from `model.base_model` to the ModuleList of blocks
    attention: str  # the module whose attributes describe the heads (num_heads, head_dim, ...)
    o: str  # output projection; its input is [..., heads * head_dim]: the mask seam
    head_dim_attr: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # fused [q | k | v] along the output features (GPT-2's c_attn)
    qkv_per_head: bool = False  # the fused qkv is [q_0 k_0 v_0 | q_1 k_1 v_1 | ...] (GPT-NeoX's query_key_value)
    attrs: Mapping[str, AttrRule] = field(default_factory=dict)
    causal: bool = False
    gqa: bool = False  # K/V heads may be fewer than query heads (repeat_kv semantics)
    # encoder-decoders: (ModuleList path, block suffix) per stack, indexed in turn (then `layers` is unused)
    stacks: tuple[tuple[str, str], ...] = ()
    # called at the end of every prune_heads (idempotent): for what slicing alone cannot fix (T5's shared bias)
    after_prune: Callable[[nn.Module], None] | None = None

    def projections(self) -> tuple[str, ...]:
        return (self.qkv,) if self.qkv else (self.q, self.k, self.v)  # type: ignore[return-value]


ADAPTERS: Registry[AttentionAdapter] = Registry("model_type")


ADAPTERS.register("gpt2")(
    AttentionAdapter(
        name="gpt2",
        layers="h",
        attention="attn",
        qkv="attn.c_attn",
        o="attn.c_proj",
        head_dim_attr="head_dim",
        attrs={"num_heads": lambda h, kv, d: h, "split_size": lambda h, kv, d: h * d},
        causal=True,
    )
)

_BERT = AttentionAdapter(
    name="bert",
    layers="encoder.layer",
    attention="attention.self",
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    head_dim_attr="attention_head_size",
    attrs={"num_attention_heads": lambda h, kv, d: h, "all_head_size": lambda h, kv, d: h * d},
)
ADAPTERS.register("bert", "roberta", "xlm-roberta")(_BERT)

ADAPTERS.register("distilbert")(
    AttentionAdapter(
        name="distilbert",
        layers="transformer.layer",
        attention="attention",
        q="attention.q_lin",
        k="attention.k_lin",
        v="attention.v_lin",
        o="attention.out_lin",
        head_dim_attr="attention_head_size",
        attrs={"n_heads": lambda h, kv, d: h},
    )
)

ADAPTERS.register(*families("adapter:llama"))(
    AttentionAdapter(
        name="llama",
        layers="layers",
        attention="self_attn",
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        o="self_attn.o_proj",
        head_dim_attr="head_dim",
        # SDPA and eager attention repeat each KV head num_key_value_groups times
        attrs={"num_key_value_groups": lambda h, kv, d: h // kv},
        causal=True,
        gqa=True,
    )
)

ADAPTERS.register("opt")(
    AttentionAdapter(
        name="opt",
        layers="decoder.layers",
        attention="self_attn",
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        o="self_attn.out_proj",
        head_dim_attr="head_dim",
        attrs={"num_heads": lambda h, kv, d: h},  # OPT's forward views q/k/v with self.num_heads
        causal=True,
    )
)


# GPT-NeoX (Pythia): one fused query_key_value whose outputs are grouped per head, [q_h | k_h | v_h] for each head
# h in turn (the forward views them as [..., heads, 3 * head_size]); the head count is inferred from the shape.
ADAPTERS.register("gpt_neox")(
    AttentionAdapter(
        name="gpt_neox",
        layers="layers",
        attention="attention",
        qkv="attention.query_key_value",
        qkv_per_head=True,
        o="attention.dense",
        head_dim_attr="head_size",
        causal=True,
    )
)


def is_causal_lm(model: nn.Module) -> bool:
    """A causal family with an LM head: what has a next-token loss, a perplexity and generates text."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return get_adapter(model).causal and head is not None


def get_adapter(model: nn.Module) -> AttentionAdapter:
    """The registered adapter for `model.config.model_type`; for another type, the generic fallback's adapter
    once verified on this model's class (sentinel/models/fallback.py), or a one-line ValueError."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        raise ValueError(
            f"model: {type(model).__name__} has no config.model_type; "
            f"supported model types are {', '.join(ADAPTERS.names())}"
        )
    if model_type in ADAPTERS:
        return ADAPTERS.get(model_type)
    if _FALLBACK is None:
        raise ValueError(f"model_type: {model_type!r} has no adapter; registered: {', '.join(ADAPTERS.names())}")
    try:
        return _FALLBACK(model)
    except ValueError as exc:
        raise ValueError(f"{exc}; registered: {', '.join(ADAPTERS.names())}") from None


# model -> the generic adapter verified on its class (a one-line ValueError if none): installed by
# sentinel.models.fallback, which builds and runs models with masking and removal, so this module never imports it
_FALLBACK: Callable[[nn.Module], AttentionAdapter] | None = None


def set_fallback(resolve: Callable[[nn.Module], AttentionAdapter]) -> None:
    """Installs the resolver get_adapter asks for a model_type no adapter is registered for."""
    global _FALLBACK
    _FALLBACK = resolve


def supported_model_types() -> list[str]:
    return ADAPTERS.names()
