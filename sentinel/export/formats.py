"""What leaves the project in which format, as plain facts (no torch, no gguf): the command line and the trial
contract validate against them before anything heavy is imported."""
from __future__ import annotations

from typing import Sequence

from sentinel.families import families

FAMILIES = families("gguf")  # what export_gguf writes for llama.cpp (its llama / deci architectures)
DTYPES = ("f32", "f16", "q8_0")  # weight types of an export
# families whose transformers config reads an explicit head_dim, so a config with fewer heads describes a model
# pruned the same way in every layer (sentinel.models.io.plain_config builds and verifies it)
PLAIN_CONFIG_FAMILIES = families("plain_config")
RUNTIMES = ("transformers", "llama.cpp")


def servable_by(model_type: str, heads: Sequence[int], kv_heads: Sequence[int], pruned: bool,
                hidden_size: int) -> list[str]:
    """The runtimes that load a layout as it is, without sentinel: plain transformers (`from_pretrained`) takes a
    dense model or one layout in every layer of a family that reads head_dim, when the hidden size is a multiple of
    the head count (transformers 5.24 checks that even with head_dim given); llama.cpp takes the Llama family with
    any per-layer counts (GGUF export), as long as layer 0 keeps attention (it reads the head size there)."""
    runtimes = []
    uniform = len(set(heads)) == 1 and len(set(kv_heads)) == 1 and heads[0] > 0
    if not pruned or (uniform and model_type in PLAIN_CONFIG_FAMILIES and hidden_size % heads[0] == 0):
        runtimes.append("transformers")
    if model_type in FAMILIES and heads and heads[0] > 0:
        runtimes.append("llama.cpp")
    return runtimes
