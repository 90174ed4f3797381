"""Pruned models out of the project: GGUF files that llama.cpp (and every tool built on it) runs."""
from sentinel.export.gguf_export import FAMILIES, QUANT, ExportError, export_gguf, export_architecture

DTYPES = tuple(QUANT)

__all__ = ["DTYPES", "FAMILIES", "ExportError", "export_gguf", "export_architecture"]
