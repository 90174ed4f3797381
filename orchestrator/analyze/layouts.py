"""A pruned layout as a key: the sorted (layer, head) pairs of a row's `pruned_heads`. Seeds that prune the same
heads are one layout to every test (orchestrator.analyze.reference) and every speed spread (stats): declared once,
below both.
"""
from __future__ import annotations

import json

import pandas as pd


def head_pairs(heads: object) -> tuple[tuple[int, int], ...]:
    """A row's `pruned_heads` as sorted (layer, head) pairs (load() has checked their shape)."""
    return () if heads is None else tuple(sorted((int(layer), int(head)) for layer, head in heads))


def layout_key(heads: object) -> str:
    """A pruned layout as a hashable key: its sorted (layer, head) pairs."""
    return json.dumps(head_pairs(heads))


def layout_keys(rows: pd.DataFrame) -> pd.Series:
    """Each row's layout key; rows of tables without `pruned_heads` (other tools) are each their own layout."""
    if "pruned_heads" not in rows:
        return pd.Series([f"row {i}" for i in rows.index], index=rows.index)
    return rows["pruned_heads"].map(layout_key)
