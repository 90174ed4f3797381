"""A model's size read from its config before anything is built. A config is untrusted: 1 KB of JSON can claim
100,000 layers, and transformers would build them (on the meta device too: the module objects alone fill memory).

`check_config_size(config, name)` refuses, in one line naming the field, a dimension past what any published
transformer has by a wide margin, or weights whose float32 estimate exceeds this machine's memory.
"""
from __future__ import annotations

import os
from typing import Any

CONFIG_MAX_BYTES = 4 * 1024 * 1024  # a config.json; the largest public ones are a few tens of KB
# dimension -> the most it may be: several times the largest published transformer's (hundreds of layers, hidden
# sizes of 16-25k, vocabularies of 256k)
LIMITS = {"num_hidden_layers": 1_024, "hidden_size": 65_536, "num_attention_heads": 1_024, "vocab_size": 4_194_304,
          "intermediate_size": 262_144}
FLOAT32_BYTES = 4


def _dimension(config: Any, name: str, default: int | None = None) -> int | None:
    value = getattr(config, name, None)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config: {name} is {value!r}; allowed: a positive integer")
    return value


def estimated_parameters(config: Any) -> int:
    """A lower bound on the parameter count: per layer the query and output projections (keys and values may be
    grouped, so they are not counted) and two MLP matrices, plus the embedding."""
    layers, hidden = _dimension(config, "num_hidden_layers", 0), _dimension(config, "hidden_size", 0)
    inner = _dimension(config, "intermediate_size") or _dimension(config, "n_inner") or 4 * hidden
    return layers * (2 * hidden * hidden + 2 * hidden * inner) + (_dimension(config, "vocab_size", 0) or 0) * hidden


def memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_config_size(config: Any, name: str) -> None:
    """ValueError (one line) when `config` (a transformers PretrainedConfig) claims a dimension past LIMITS or
    float32 weights larger than this machine's memory."""
    for field, limit in LIMITS.items():
        value = _dimension(config, field)
        if value is not None and value > limit:
            raise ValueError(f"model: {name!r}: config {field} is {value:,}; allowed: at most {limit:,}")
    need, have = FLOAT32_BYTES * estimated_parameters(config), memory_bytes()
    if need > have:
        raise ValueError(f"model: {name!r}: its config describes at least {need / 2**30:,.1f} GiB of float32 weights, "
                         f"more than this machine's {have / 2**30:,.1f} GiB of memory")
