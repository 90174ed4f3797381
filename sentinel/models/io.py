"""Saving and loading pruned models: transformers' own files plus a small sidecar of kept heads.

`save_pruned` writes `config.json` with `pruned_heads` in transformers 4's format ({layer: [original head]}),
so transformers 4 loads the checkpoint as it loaded its own pruned models, and `sentinel_heads.json`, which
also records the kept KV heads of GQA models (which `pruned_heads` cannot say). `load_pruned` builds the
dense architecture from the config, removes the same heads, gives an output projection the bias that bias
compensation added where the family has none (`output_bias_added`), then loads the safetensors weights strictly; it
reads our folders and folders saved by transformers 4 after `prune_heads` (config.pruned_heads only).
Loading without sentinel: transformers 5's `per_layer_config` cannot give our families per-layer head counts
(scripts/probe_per_layer_config.py), but where every layer keeps the same number of heads and the family reads
an explicit `head_dim` (Llama, Mistral, Qwen2), a config with the pruned counts describes the model exactly:
`save_pruned` then writes that config, checked by building the architecture from it (on the meta device) and
comparing every parameter's shape, and a plain `AutoModel.from_pretrained` loads the folder. Otherwise the config
stays the dense one. docs/MIGRATION.md ("Loading without sentinel") has the table.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file
from torch import nn

from sentinel.files import regular_file_size
from sentinel.models.layout import attention_modules, head_layout, output_projections
from sentinel.models.removal import kept_heads, prune_heads, pruned_heads_v4

SIDECAR = "sentinel_heads.json"
SIDECAR_VERSION = 1


def save_pruned(model: nn.Module, path: str | Path, tokenizer=None) -> Path:
    """Writes the model (safetensors), its config, the kept-heads sidecar and optionally a tokenizer."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.pruned_heads = pruned_heads_v4(model)  # what transformers 4 reads (prune_heads keeps it current too)
    plain = plain_config(model)
    if plain is not None:  # a config plain transformers builds this very model from
        dense_config, model.config = model.config, plain
    try:
        model.save_pretrained(path, safe_serialization=True)
    finally:
        if plain is not None:
            model.config = dense_config
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    sidecar = {
        "format_version": SIDECAR_VERSION,
        "model_type": model.config.model_type,
        "layers": {str(layer): kept for layer, kept in kept_heads(model).items()},
        "dense": {"heads": int(model.config.num_attention_heads),
                  "kv_heads": int(getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads)},
        "output_bias_added": added_output_biases(model),
    }
    (path / SIDECAR).write_text(json.dumps(sidecar, indent=1))
    return path


def added_output_biases(model: nn.Module) -> list[int]:
    """Layers whose output projection has a bias the family's architecture lacks (created by bias compensation);
    found by building the architecture on the meta device."""
    with torch.device("meta"):
        fresh = type(model)(model.config)
    return [layer for layer, (o, built) in enumerate(zip(output_projections(model), output_projections(fresh)))
            if o.bias is not None and built.bias is None]


def plain_config(model: nn.Module) -> transformers.PretrainedConfig | None:
    """A config under which transformers itself builds `model`'s pruned shapes (every layer the same number of query
    and KV heads, an explicit head_dim), verified parameter by parameter; None if there is none."""
    layout = head_layout(model)
    pruned = layout.total_heads < layout.num_layers * int(getattr(model.config, "num_attention_heads", 0) or 0)
    if not pruned or len(set(layout.heads)) != 1 or len(set(layout.kv_heads)) != 1:
        return None
    values = {"num_attention_heads": layout.heads[0], "head_dim": layout.head_dim, "pruned_heads": {}}
    if "num_key_value_heads" in model.config.to_dict():
        values["num_key_value_heads"] = layout.kv_heads[0]
    try:  # transformers 5.24 validates hidden_size % num_attention_heads even with an explicit head_dim
        config = type(model.config).from_dict({**model.config.to_dict(), **values})
        with torch.device("meta"):
            built = type(model)(config)
    except Exception:  # the family rejects the combination
        return None
    shapes = {k: v.shape for k, v in built.state_dict().items()}
    return config if shapes == {k: v.shape for k, v in model.state_dict().items()} else None


def is_pruned_checkpoint(path: str | Path) -> bool:
    """A folder written by save_pruned, or by transformers 4's save_pretrained after prune_heads."""
    return (Path(path) / SIDECAR).is_file() or bool(_v4_pruned_heads(Path(path)))


def _v4_pruned_heads(path: Path) -> dict[int, list[int]]:
    """config.json's `pruned_heads` ({layer: [original head]}); {} when absent, empty or unreadable."""
    try:
        pruned = json.loads((path / "config.json").read_text(encoding="utf-8")).get("pruned_heads") or {}
        return {int(layer): [int(h) for h in heads] for layer, heads in pruned.items() if heads}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


MAX_JSON_BYTES = 16 * 2**20  # a sidecar or a shard index: a few KB in practice


def _regular(path: Path) -> Path:
    """`path` if it is a regular file (no FIFO that hangs a read, no device), else one ValueError line naming it."""
    try:
        regular_file_size(path)
    except ValueError as exc:
        raise ValueError(f"{path}: {str(exc).split(' ', 1)[1]}") from None
    return path


def _read_json(path: Path) -> Any:
    """A small JSON file of a model folder (untrusted): regular, bounded, parsed, or one ValueError line."""
    if os.stat(_regular(path)).st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path}: over {MAX_JSON_BYTES // 2**20} MiB, not a sidecar or an index")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not valid JSON ({str(exc).splitlines()[0][:120]})") from None


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.is_file():  # sharded checkpoint
        parsed = _read_json(index)
        weight_map = parsed.get("weight_map") if isinstance(parsed, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index}: weight_map is not a mapping of tensor names to shard files")
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            # a shard is a file of this folder by its bare name: never an absolute path, `..` or a link out of it
            if Path(shard).name != shard or shard in (".", "..") or (path / shard).resolve().parent != path.resolve():
                raise ValueError(f"{index}: shard {shard[:100]!r} is not a file name inside the checkpoint folder")
            state.update(load_file(_regular(path / shard)))
        return state
    return load_file(_regular(path / "model.safetensors"))


def _check_sidecar(sidecar: Any, where: Path, layers: int, heads: int, kv_heads: int) -> None:
    """The sidecar (untrusted) against the config it came with: every layer id a layer of the model, every head and
    KV-head id one of the dense model's, each list unique and non-empty; a one-line ValueError naming the field."""
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("layers", {}), dict):
        raise ValueError(f"{where}: not a mapping with a `layers` mapping")
    dense = sidecar.get("dense")
    if dense is not None and not (isinstance(dense, dict) and all(
            isinstance(dense.get(k), int) and not isinstance(dense.get(k), bool) and dense.get(k) > 0
            for k in ("heads", "kv_heads") if k in dense) and "heads" in dense):
        raise ValueError(f"{where}: dense must be a mapping of positive head counts (heads, kv_heads)")
    for key, kept in sidecar.get("layers", {}).items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < layers):
            raise ValueError(f"{where}: layers[{key!r}] is not a layer of this model (0-{layers - 1})")
        if not isinstance(kept, dict):
            raise ValueError(f"{where}: layers[{key!r}] is not a mapping with heads and kv_heads")
        if kept.get("heads") == [] or kept.get("kv_heads") == []:  # a whole attention sublayer removed
            if kept.get("heads") != kept.get("kv_heads"):
                raise ValueError(f"{where}: layers[{key!r}] keeps no query heads or no KV heads, but not neither")
            continue
        for name, limit in (("heads", heads), ("kv_heads", kv_heads)):
            ids = kept.get(name)
            if (not isinstance(ids, list) or not ids or len(set(map(repr, ids))) != len(ids)
                    or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < limit for i in ids)):
                raise ValueError(f"{where}: layers[{key!r}].{name} must be distinct {name.replace('_', ' ')} ids in "
                                 f"0-{limit - 1}, got {str(ids)[:80]}")


def _check_sidecar_against(sidecar: dict, where: Path, model: nn.Module) -> None:
    """The sidecar against the architecture its folder's config builds (on any device, the meta device included)."""
    dense = sidecar.get("dense") if isinstance(sidecar.get("dense"), dict) else {}
    heads = dense.get("heads") if isinstance(dense.get("heads"), int) else model.config.num_attention_heads
    kv_heads = dense.get("kv_heads") if isinstance(dense.get("kv_heads"), int) else heads
    _check_sidecar(sidecar, where, head_layout(model).num_layers, heads, kv_heads)


def check_pruned_folder(path: str | Path, model: nn.Module) -> None:
    """A pruned folder's sidecar (untrusted) checked against `model`, its config's architecture (the meta device will
    do), before any weight is read: one ValueError line naming the field, as load_pruned would say it later."""
    sidecar = _read_sidecar(Path(path))
    if sidecar is not None:
        _check_sidecar_against(sidecar, Path(path) / SIDECAR, model)


def _read_sidecar(path: Path) -> dict | None:
    """The folder's sidecar, a JSON object of the format this sentinel reads; None when the folder has none."""
    if not (path / SIDECAR).is_file():
        return None
    sidecar = _read_json(path / SIDECAR)
    if not isinstance(sidecar, dict):
        raise ValueError(f"{path / SIDECAR}: not a JSON object")
    if sidecar.get("format_version") != SIDECAR_VERSION:
        raise ValueError(f"{path / SIDECAR}: format_version {sidecar.get('format_version')!r} is not supported "
                         f"(this sentinel reads {SIDECAR_VERSION})")
    return sidecar


def load_pruned(path: str | Path, *, torch_dtype: torch.dtype | None = None) -> nn.Module:
    """Loads a pruned checkpoint: one written by `save_pruned`, or one transformers 4 saved after `prune_heads`.
    The model gives the same outputs as the model that was saved."""
    path = Path(path)
    if not is_pruned_checkpoint(path):
        raise ValueError(f"path: {str(path)!r} has neither {SIDECAR} nor config.pruned_heads; it is not a pruned "
                         "checkpoint (load it with load_model)")
    sidecar = _read_sidecar(path)
    try:  # never the folder's own code (auto_map), and never a prompt asking whether to run it
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path / 'config.json'}: {str(exc).splitlines()[0]}") from None
    architecture = (config.architectures or [None])[0]
    model_class = getattr(transformers, architecture, None) if isinstance(architecture, str) else None
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        # only a model class is built from a config: `architectures: ["pipeline"]` must not call transformers.pipeline
        raise ValueError(f"{path / 'config.json'}: architectures {config.architectures!r} is not a transformers model "
                         "class")
    model = model_class(config)

    layout = head_layout(model)  # freshly built: dense, or already pruned when saved with a plain config
    if sidecar is not None:
        _check_sidecar_against(sidecar, path / SIDECAR, model)
    kept = {int(layer): k for layer, k in (sidecar or {"layers": {}})["layers"].items()}
    if kept and all(layout.heads[layer] == len(k["heads"]) for layer, k in kept.items()):
        for layer, attention in enumerate(attention_modules(model)):  # shapes are right: only the provenance
            attention.sentinel_heads, attention.sentinel_kv_heads = kept[layer]["heads"], kept[layer]["kv_heads"]
        model.config = _dense_config(model.config, sidecar)
    else:
        removed = _v4_pruned_heads(path) if sidecar is None else {}
        for layer, k in kept.items():
            gone = [h for h in range(layout.heads[layer]) if h not in set(k["heads"])]
            if gone:
                removed[layer] = gone
        if removed:
            prune_heads(model, removed, ids="original")  # a fresh dense model: original ids are positions

    projections = output_projections(model)
    added = (sidecar or {}).get("output_bias_added", [])
    if not isinstance(added, list):
        raise ValueError(f"{path / SIDECAR}: output_bias_added is a {type(added).__name__}, not a list of layers")
    for layer in added:  # bias compensation gave these layers a bias
        if not isinstance(layer, int) or not 0 <= layer < len(projections) or not isinstance(projections[layer], nn.Linear):
            raise ValueError(f"{path / SIDECAR}: output_bias_added holds {layer!r}, not a layer whose nn.Linear output "
                             f"projection can take a bias (layers 0-{len(projections) - 1})")
        o = projections[layer]
        o.bias = nn.Parameter(torch.zeros(o.out_features, dtype=o.weight.dtype))
    state = _checkpoint_names(model, _state_dict(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    untied = [k for k in missing if not _is_tied(model, k)]
    if untied or unexpected:
        raise ValueError(f"{path}: weights do not match the pruned architecture (missing {untied}, unexpected {unexpected})")
    if torch_dtype is not None:
        model.to(torch_dtype)
    return model.eval()


def _checkpoint_names(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict under the model's own parameter names: transformers 5 saves some families under their
    original checkpoint names (GPT-NeoX's `embed_out` for `lm_head`) and renames them when it loads; its own
    renaming rules (transformers.conversion_mapping) are applied here to the keys the model does not have."""
    from transformers.conversion_mapping import get_model_conversion_mapping

    own = set(model.state_dict())
    rules = [(src, tgt) for rule in get_model_conversion_mapping(model) if hasattr(rule, "source_patterns")
             for src, tgt in zip(rule.source_patterns, rule.target_patterns)]
    out = {}
    for key, value in state.items():
        if key not in own:
            key = next((new for src, tgt in rules if (new := re.sub(src, tgt, key)) in own), key)
        out[key] = value
    return out


def _dense_config(config: transformers.PretrainedConfig, sidecar: dict) -> transformers.PretrainedConfig:
    """The dense model's config back from a plain (pruned-shape) one: the head counts the sidecar recorded."""
    values = {"num_attention_heads": sidecar["dense"]["heads"]}
    if "kv_heads" in sidecar["dense"] and "num_key_value_heads" in config.to_dict():
        values["num_key_value_heads"] = sidecar["dense"]["kv_heads"]
    return type(config).from_dict({**config.to_dict(), **values})


def _is_tied(model: nn.Module, key: str) -> bool:
    """A key left out by save_pretrained because it shares storage with another parameter."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    ptr = params[key].data_ptr()
    return any(p.data_ptr() == ptr for name, p in params.items() if name != key)
