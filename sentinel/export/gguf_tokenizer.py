"""The tokenizer of an exported GGUF: copied verbatim from the GGUF the model was loaded from, or converted from a
transformers byte-level BPE tokenizer (GPT-2 style: SmolLM2, the shipped tiny-llama).

Copying is exact (vocabulary, token types, merges, special ids, the pre-tokenizer llama.cpp names, the chat
template), so llama.cpp tokenizes the export as it tokenized the source. Conversion writes what llama.cpp's own
converter writes for such a tokenizer; the pre-tokenizer name comes from the tokenizer's own pre-tokenizer
(`gpt-2` for a plain byte-level one, `smollm` for digits then byte-level), and any other shape is refused in one
line rather than exported with a split llama.cpp would do differently.
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf
from torch import nn

TOKENIZER_PREFIX = "tokenizer."
BYTE_LEVEL = {"type": "ByteLevel", "use_regex": True}
DIGITS = {"type": "Digits", "individual_digits": True}


class TokenizerExportError(ValueError):
    """A tokenizer this exporter cannot write for llama.cpp; one line."""


def write_tokenizer(writer: gguf.GGUFWriter, model: nn.Module, tokenizer) -> None:
    """Adds the tokenizer's metadata to `writer` (before the tensors)."""
    source = getattr(model, "sentinel_gguf", None)
    if source and Path(source).is_file():
        _copy_from_gguf(writer, Path(source), int(model.config.vocab_size))
    else:
        _convert(writer, tokenizer, int(model.config.vocab_size))


def _copy_from_gguf(writer: gguf.GGUFWriter, source: Path, vocab_size: int) -> None:
    reader = gguf.GGUFReader(source)
    fields = {name: field for name, field in reader.fields.items() if name.startswith(TOKENIZER_PREFIX)}
    tokens = fields.get(gguf.Keys.Tokenizer.LIST)
    if tokens is None or len(tokens.data) != vocab_size:
        raise TokenizerExportError(f"tokenizer: {source.name} holds {0 if tokens is None else len(tokens.data)} tokens, "
                                   f"the model {vocab_size}")
    for name, field in fields.items():
        kind = field.types[0]
        sub = field.types[1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub)


def _pre_tokenizer(spec: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, from its tokenizer.json shape."""
    def shape(step: dict) -> dict:
        return {k: step.get(k) for k in ("type", "use_regex", "individual_digits") if k in step}

    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    steps = [shape(step) for step in steps]
    if steps == [BYTE_LEVEL]:
        return "gpt-2"
    if steps == [DIGITS, BYTE_LEVEL]:
        return "smollm"
    raise TokenizerExportError(f"tokenizer: pre-tokenizer {json.dumps(pre)[:120]} has no llama.cpp equivalent this "
                               "exporter knows (byte-level BPE: plain, or digits then byte-level); export from the "
                               "model's GGUF instead")


def _convert(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerExportError("tokenizer: not a fast (tokenizers) tokenizer; only byte-level BPE is converted")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise TokenizerExportError(f"tokenizer: a {model.get('type')} model with a "
                                   f"{(spec.get('decoder') or {}).get('type')} decoder; only byte-level BPE (GPT-2 "
                                   "style) is converted; export from the model's GGUF instead")
    pre = _pre_tokenizer(spec)
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = {index: token.special for index, token in tokenizer.added_tokens_decoder.items()}
    if max(by_id) >= vocab_size:
        raise TokenizerExportError(f"tokenizer: token id {max(by_id)} is beyond the model's vocabulary of {vocab_size}")
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL if index not in added else
                         gguf.TokenType.CONTROL if added[index] else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        index = getattr(tokenizer, f"{name}_token_id", None)
        if isinstance(index, int):
            add(index)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)
