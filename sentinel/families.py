"""What code outside a family's attention adapter needs to know about the family, declared once per family: which
adapter reads its heads, whether its attention can be removed whole, whether llama.cpp runs its GGUF export, whether
plain transformers loads a uniformly pruned copy. Plain data, no torch: the command line checks an export request
against it before anything heavy is imported. Adding a family of the Llama layout is one line here.
"""
from __future__ import annotations

from dataclasses import dataclass

from sentinel.registry import Registry


@dataclass(frozen=True)
class FamilyFacts:
    adapter: str  # the AttentionAdapter that reads its heads (sentinel.models.adapters)
    empty_layers: bool = False  # its attention module can lose every head: forward returns (output, weights) and
    # the output projection is its own o_proj, so an empty one adds the projection's bias or nothing
    gguf: bool = False  # export_gguf writes it for llama.cpp (its llama / deci architectures)
    plain_config: bool = False  # its config reads an explicit head_dim: a config with fewer heads describes a model
    # pruned the same way in every layer (sentinel.models.io.plain_config)


FAMILY_FACTS: Registry[FamilyFacts] = Registry("model family")
for _name in ("llama", "mistral", "qwen2"):
    FAMILY_FACTS.add(_name, FamilyFacts(adapter="llama", empty_layers=True, gguf=True, plain_config=True))


def families(fact: str) -> tuple[str, ...]:
    """The families, in registration order, for which `fact` holds (a FamilyFacts field: empty_layers, gguf,
    plain_config), or whose adapter is `fact` ("adapter:llama")."""
    if fact.startswith("adapter:"):
        return tuple(n for n in FAMILY_FACTS.in_order() if FAMILY_FACTS.get(n).adapter == fact.split(":", 1)[1])
    return tuple(n for n in FAMILY_FACTS.in_order() if getattr(FAMILY_FACTS.get(n), fact))
