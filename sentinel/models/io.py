"""Saving and loading pruned models: transformers' own files plus a small sidecar of kept heads.

A pruned model cannot be described by `config.json` alone (layers may keep different numbers of
heads), so `save_pruned` writes `sentinel_heads.json` next to it. `load_pruned` builds the dense
architecture from the config, removes the same heads, then loads the safetensors weights strictly.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from torch import nn

from sentinel.models.heads import head_layout, kept_heads, prune_heads

SIDECAR = "sentinel_heads.json"
SIDECAR_VERSION = 1


def save_pruned(model: nn.Module, path: str | Path, tokenizer=None) -> Path:
    """Writes the model (safetensors), its config, the kept-heads sidecar and optionally a tokenizer."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    sidecar = {
        "format_version": SIDECAR_VERSION,
        "model_type": model.config.model_type,
        "layers": {str(layer): kept for layer, kept in kept_heads(model).items()},
    }
    (path / SIDECAR).write_text(json.dumps(sidecar, indent=1))
    return path


def is_pruned_checkpoint(path: str | Path) -> bool:
    return (Path(path) / SIDECAR).is_file()


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.is_file():  # sharded checkpoint
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(path / shard))
        return state
    return load_file(path / "model.safetensors")


def load_pruned(path: str | Path, *, torch_dtype: torch.dtype | None = None) -> nn.Module:
    """Loads a model written by `save_pruned`; it gives the same logits as the model that was saved."""
    path = Path(path)
    if not is_pruned_checkpoint(path):
        raise ValueError(f"path: {str(path)!r} has no {SIDECAR}; it was not written by sentinel.save_pruned")
    sidecar = json.loads((path / SIDECAR).read_text())
    if sidecar.get("format_version") != SIDECAR_VERSION:
        raise ValueError(
            f"{path / SIDECAR}: format_version {sidecar.get('format_version')!r} is not supported "
            f"(this sentinel reads {SIDECAR_VERSION})"
        )
    config = transformers.AutoConfig.from_pretrained(path)
    architecture = (config.architectures or [None])[0]
    model_class = getattr(transformers, architecture or "", None)
    if model_class is None:
        raise ValueError(f"{path / 'config.json'}: architectures {config.architectures!r} is not a transformers class")
    model = model_class(config)

    layout = head_layout(model)  # dense, freshly built
    removed = {}
    for layer, kept in sidecar["layers"].items():
        layer = int(layer)
        gone = [h for h in range(layout.heads[layer]) if h not in set(kept["heads"])]
        if gone:
            removed[layer] = gone
    if removed:
        prune_heads(model, removed)

    state = _state_dict(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    untied = [k for k in missing if not _is_tied(model, k)]
    if untied or unexpected:
        raise ValueError(f"{path}: weights do not match the pruned architecture (missing {untied}, unexpected {unexpected})")
    if torch_dtype is not None:
        model.to(torch_dtype)
    return model.eval()


def _is_tied(model: nn.Module, key: str) -> bool:
    """A key left out by save_pretrained because it shares storage with another parameter."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    ptr = params[key].data_ptr()
    return any(p.data_ptr() == ptr for name, p in params.items() if name != key)
