"""sentinel: attention-head scoring, masking and removal for transformers models (no Ray).

The public functions are imported on first use (PEP 562), so `import sentinel.contract` (the trial contract the
command line validates against) does not import torch and transformers: `sentinel-bench status` answers in a
second instead of eight.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "head_layout": "sentinel.models",
    "load_model": "sentinel.models",
    "load_pruned": "sentinel.models",
    "mask_heads": "sentinel.models",
    "prune_heads": "sentinel.models",
    "save_pruned": "sentinel.models",
    "score_heads": "sentinel.pruning",
    "select_heads": "sentinel.pruning",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once
        return value
    try:  # `import sentinel; sentinel.models.kept_heads(...)` worked before the lazy names
        return importlib.import_module(f"sentinel.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"sentinel.{name}":
            raise  # a submodule that exists but misses a dependency says so
    raise AttributeError(f"module 'sentinel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
