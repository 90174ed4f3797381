"""Pruned models out of the project: GGUF files that llama.cpp (and every tool built on it) runs.

`sentinel.export.formats` holds the plain facts (families, weight types, runtimes) and imports nothing heavy; the
writer (gguf, torch) is imported on first use of its names (PEP 562), so the command line answers bad input fast.
"""
from __future__ import annotations

import importlib
from typing import Any

from sentinel.export.formats import DTYPES, FAMILIES, RUNTIMES, servable_by

_LAZY = {"ExportError": "sentinel.export.gguf_export", "export_architecture": "sentinel.export.gguf_export",
         "export_gguf": "sentinel.export.gguf_export"}

__all__ = ["DTYPES", "FAMILIES", "RUNTIMES", "servable_by", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sentinel.export' has no attribute {name!r}")
