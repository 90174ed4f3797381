"""A pruned (or dense) Llama-family model as a GGUF file that llama.cpp runs, written with the `gguf` package.

Which architecture: `llama` when every layer keeps the same number of query and KV heads (any llama.cpp build and
every tool built on it loads it as an ordinary Llama), `deci` otherwise: the architecture llama.cpp uses for
NVIDIA's Nemotron-NAS models reads per-layer query-head and KV-head counts from arrays in the metadata, and a head
count of 0 for a layer without attention (llama.cpp src/models/deci.cpp). Both take optional q/k/v biases (Qwen2)
and an optional attention-output bias, which is where bias compensation's bias goes.

Weights: llama.cpp's `llama` and `deci` graphs apply rotary embeddings to interleaved pairs, transformers to the two
halves of a head, so query and key rows are permuted per head on the way out (as llama.cpp's own converter does,
with each layer's own head counts). 1-D tensors (norms, biases) stay float32, as llama.cpp expects; a q8_0 tensor
whose rows are not a multiple of 32 is written as float16 instead (the converter's rule).

Limits, each refused in one line before anything is written: the families llama.cpp runs through these
architectures (llama, mistral, qwen2 and what they cover, e.g. SmolLM2); rotary embeddings of type default or
linear, over the whole head; layer 0 must keep attention (llama.cpp takes the head size from layer 0's head count);
a layer without heads cannot carry a compensation bias (llama.cpp skips an empty layer's attention entirely).
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from torch import nn

from sentinel.export.formats import DTYPES, FAMILIES
from sentinel.files import UnsafeTarget, atomic_output, check_target
from sentinel.export.gguf_tokenizer import write_tokenizer
from sentinel.models.layout import head_layout
from sentinel.models.removal import kept_heads

QUANT = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
         "q8_0": gguf.GGMLQuantizationType.Q8_0}
FILE_TYPE = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
ROPE_TYPES = ("default", "linear")

# transformers' per-layer parameter names -> llama.cpp's (gguf.TensorNameMap knows the reverse for many more)
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight", "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.gate_proj.bias": "ffn_gate.bias",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.up_proj.bias": "ffn_up.bias",
    "mlp.down_proj.weight": "ffn_down.weight", "mlp.down_proj.bias": "ffn_down.bias",
}
ATTENTION = ("input_layernorm.", "self_attn.")  # what a layer without heads does not have in llama.cpp


class ExportError(ValueError):
    """An export llama.cpp could not run, or a request this exporter does not take; one line."""


def export_architecture(heads: tuple[int, ...], kv_heads: tuple[int, ...]) -> str:
    """`llama` for one head count in every layer, `deci` (per-layer counts) otherwise."""
    return "llama" if len(set(heads)) == 1 and len(set(kv_heads)) == 1 else "deci"


def check_exportable(model: nn.Module, dtype: str) -> None:
    """Every reason this model cannot become a GGUF that llama.cpp runs, as one ExportError line (nothing written)."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    config = model.config
    if config.model_type not in FAMILIES:
        raise ExportError(f"model: model_type {config.model_type!r} cannot be exported to GGUF for llama.cpp; the "
                          f"exporter takes the Llama family ({', '.join(FAMILIES)})")
    if not hasattr(model, "lm_head"):
        raise ExportError("model: not a causal LM with its LM head (load it with load_model, which gives one)")
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") not in ROPE_TYPES:
        raise ExportError(f"model: rope_type {rope.get('rope_type')!r} is not exported (only {', '.join(ROPE_TYPES)})")
    if float(getattr(config, "partial_rotary_factor", 1.0) or 1.0) != 1.0:
        raise ExportError("model: partial rotary embeddings are not exported (llama.cpp's llama/deci rotate the whole head)")
    layout = head_layout(model)
    if layout.heads[0] == 0:
        raise ExportError("model: layer 0 has no attention heads left; llama.cpp takes the head size from layer 0 "
                          "and cannot load it")
    for name, tensor in model.state_dict().items():  # weights are untrusted: a GGUF of NaNs would load and babble
        if not tensor.is_floating_point():
            raise ExportError(f"model: weight {name} is {str(tensor.dtype).removeprefix('torch.')}; the exporter "
                              "takes floating-point weights (load the model with dtype float32, float16 or bfloat16)")
        if not bool(torch.isfinite(tensor).all()):
            raise ExportError(f"model: weight {name} holds NaN or infinite values; nothing is exported")
    for layer, (block, heads) in enumerate(zip(model.model.layers, layout.heads)):
        bias = getattr(block.self_attn.o_proj, "bias", None)
        if heads == 0 and bias is not None and bool(bias.detach().abs().max() > 0):
            raise ExportError(f"model: layer {layer} has no heads but an output bias (bias compensation); llama.cpp "
                              "skips an empty layer's attention, bias included")


def _permute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from transformers' half-split rotary layout to llama.cpp's interleaved pairs."""
    if heads == 0:
        return weight
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _add_tensor(writer: gguf.GGUFWriter, name: str, value: np.ndarray, dtype: str) -> None:
    value = np.ascontiguousarray(value, dtype=np.float32)
    qtype = QUANT[dtype] if value.ndim > 1 else gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0 and value.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = gguf.GGMLQuantizationType.F16  # rows that do not fill q8_0 blocks (llama.cpp's converter does this)
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, value)
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, value.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)


def _hyperparameters(writer: gguf.GGUFWriter, model: nn.Module, heads: list[int], kv_heads: list[int],
                     head_dim: int, per_layer: bool, dtype: str) -> None:
    config = model.config
    # the model's own name, never the folder it was loaded from (a file shared carries no local paths)
    writer.add_name(Path(str(getattr(config, "_name_or_path", "") or "")).name[:200] or config.model_type)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads if per_layer else heads[0])
    writer.add_head_count_kv(kv_heads if per_layer else kv_heads[0])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(FILE_TYPE[dtype])
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # provenance: which original heads each layer keeps (what sentinel_heads.json says of a pruned folder)
    writer.add_string("sentinel.kept_heads", json.dumps({str(k): v for k, v in kept_heads(model).items()}))


def export_gguf(model: nn.Module, tokenizer, path: str | Path, dtype: str = "f16", *,
                overwrite: bool = False) -> Path:
    """Writes `model` (dense or pruned, any per-layer head counts) and its tokenizer as a GGUF file for llama.cpp.

    Args:
        model: a Llama-family causal LM (llama, mistral, qwen2; SmolLM2 is llama), as load_model or load_pruned
            give it.
        tokenizer: its tokenizer; a model loaded from a GGUF file carries that file's tokenizer and chat template
            over verbatim, otherwise a byte-level BPE tokenizer is converted (gguf_tokenizer.py).
        path: the .gguf file to write (written beside it under a temporary name, then renamed).
        dtype: "f32", "f16" or "q8_0" for the 2-D weights (1-D tensors stay float32).
        overwrite: replace an existing file; otherwise an existing path is refused.
    Returns:
        The path written.
    """
    path = Path(path)
    check_exportable(model, dtype)
    if path.exists() and not overwrite:
        raise ExportError(f"out: {str(path)!r} exists; pass overwrite=True (--overwrite) to replace it")
    if path.is_dir():
        raise ExportError(f"out: {str(path)!r} is a folder, not a .gguf file")
    try:
        check_target(path)
    except UnsafeTarget as exc:
        raise ExportError(f"out: {exc}") from None
    layout = head_layout(model)
    heads, kv_heads = list(layout.heads), list(layout.kv_heads)
    kv_heads = [kv if h else 0 for h, kv in zip(heads, kv_heads)]
    architecture = export_architecture(tuple(heads), tuple(kv_heads))
    state = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in model.state_dict().items()}

    with atomic_output(path) as partial:  # an exclusive temp name: no planted link is followed, none left behind
        _write_gguf(partial, model, tokenizer, state, architecture, layout, heads, kv_heads, dtype)
    return path


def _write_gguf(partial: Path, model: nn.Module, tokenizer, state: dict, architecture: str, layout, heads: list,
                kv_heads: list, dtype: str) -> None:
    writer = gguf.GGUFWriter(partial, architecture)
    try:
        _hyperparameters(writer, model, heads, kv_heads, layout.head_dim, architecture == "deci", dtype)
        write_tokenizer(writer, model, tokenizer)
        _add_tensor(writer, "token_embd.weight", state["model.embed_tokens.weight"], dtype)
        _add_tensor(writer, "output_norm.weight", state["model.norm.weight"], dtype)
        if not model.config.tie_word_embeddings:
            _add_tensor(writer, "output.weight", state["lm_head.weight"], dtype)
        for layer in range(layout.num_layers):
            prefix = f"model.layers.{layer}."
            for name, target in LAYER_TENSORS.items():
                value = state.get(prefix + name)
                if value is None or (heads[layer] == 0 and name.startswith(ATTENTION)):
                    continue
                if name.startswith("self_attn.q_proj."):
                    value = _permute_rope(value, heads[layer])
                elif name.startswith("self_attn.k_proj."):
                    value = _permute_rope(value, kv_heads[layer])
                _add_tensor(writer, f"blk.{layer}.{target}", value, dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
