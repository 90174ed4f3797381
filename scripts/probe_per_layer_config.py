"""Which pruned layouts transformers 5's heterogeneous `per_layer_config` (PR #45333) can express, per family.

For each registered family: build a small model whose layer 0 asks, through `per_layer_config`, for fewer attention
heads (and, where the family has them, fewer KV heads), then check what was built: do layer 0's projections have
the per-layer shapes, and does a forward pass run? The answer decides whether a pruned checkpoint could be saved so
that a plain `AutoModel.from_pretrained` loads it without sentinel (docs/MIGRATION.md, "Loading without sentinel").

    python scripts/probe_per_layer_config.py        # prints a markdown table
"""
from __future__ import annotations

import torch
import transformers

from sentinel.models import head_layout
from tests.tiny_models import CONFIGS, tiny_model


def probe(model_type: str) -> tuple[str, str]:
    dense = tiny_model(model_type)
    config = dense.config.to_dict()
    heads = head_layout(dense).heads[0]
    override = {"num_attention_heads": heads // 2}
    if "num_key_value_heads" in config:
        override["num_key_value_heads"] = max(1, (config.get("num_key_value_heads") or heads) // 2)
    try:
        cfg = type(dense.config).from_dict({**config, "per_layer_config": {0: override}})
        model = type(dense)(cfg).eval()
    except Exception as exc:  # the config or the model refuses heterogeneity
        return "refused", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    built = head_layout(model).heads
    if built[0] == heads:
        return "ignored", f"layer 0 built with {built[0]} heads, not {heads // 2}: the layers read the global config"
    try:
        with torch.no_grad():
            model(input_ids=torch.randint(0, 50, (1, 8)))
    except Exception as exc:
        return "builds, forward fails", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return "expressible", f"layer 0 has {built[0]} heads and the forward pass runs"


if __name__ == "__main__":
    print(f"transformers {transformers.__version__}\n")
    print("| family | per_layer_config | what happened |\n|---|---|---|")
    for model_type in sorted(CONFIGS):
        verdict, detail = probe(model_type)
        print(f"| {model_type} | {verdict} | {detail} |")
