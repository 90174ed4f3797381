"""Tokenise documents into one stream, pack it into fixed-length blocks, and batch the blocks.

Encoders are fed sentences instead (`sentences`, `sentence_batches`): they are trained and evaluated on
single sentences with [CLS]/[SEP], and packed blocks cut mid-sentence are far from that distribution.
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence

import torch
from torch import nn

from sentinel.data.sources import Document, load_documents
from sentinel.models.loading import config_max_positions
from sentinel.data.splits import split_documents


def token_stream(tokenizer, docs: Sequence[Document]) -> torch.LongTensor:
    """Tokenises each document (no special tokens) and joins them with the tokenizer's eos token (sep if none).

    Args:
        tokenizer: a transformers tokenizer with an `eos_token_id` or a `sep_token_id`.
        docs: the documents, in order.

    Returns:
        `LongTensor[N]`: doc_0 <eos> doc_1 <eos> ... doc_k (a separator between documents, not after the last).
    """
    return joined(tokenizer, document_tokens(tokenizer, docs))


def joined(tokenizer, pieces: Sequence[torch.Tensor]) -> torch.LongTensor:
    """Documents' token ids (document_tokens) as one stream, the eos token (sep if none) between documents."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if sep is None:
        raise ValueError(f"tokenizer: {type(tokenizer).__name__} has neither an eos nor a sep token to join documents")
    out: list[torch.Tensor] = []
    for k, piece in enumerate(pieces):
        if k:
            out.append(torch.tensor([sep], dtype=torch.long))
        out.append(piece)
    return torch.cat(out)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(docs: Sequence[Document], *, min_words: int = 4, max_words: int = 48, limit: int = 0,
              seed: int = 0) -> list[str]:
    """Sentence-like pieces of the documents, whitespace collapsed, for encoders.

    Args:
        docs: the documents.
        min_words, max_words: pieces outside this length (headings, run-on verse) are dropped.
        limit: keep at most this many, a seeded sample in document order (0 = all).
        seed: seed of that sample (random.Random, never the global RNG).
    Returns:
        The sentences.
    """
    out = []
    for doc in docs:
        for piece in _SENTENCE_END.split(" ".join(doc.text.split())):
            if min_words <= len(piece.split()) <= max_words:
                out.append(piece)
    if not out:
        raise ValueError(f"docs: no sentences of {min_words}-{max_words} words in {len(docs)} documents")
    if limit and len(out) > limit:
        keep = sorted(random.Random(seed).sample(range(len(out)), limit))
        out = [out[i] for i in keep]
    return out


def sentences_by_document(docs: Sequence[Document], *, min_words: int = 4, max_words: int = 48) -> list[tuple[int, str]]:
    """Every sentence-like piece (as `sentences` cuts them) with the index of its document."""
    out = [(i, piece) for i, doc in enumerate(docs) for piece in _SENTENCE_END.split(" ".join(doc.text.split()))
           if min_words <= len(piece.split()) <= max_words]
    if not out:
        raise ValueError(f"docs: no sentences of {min_words}-{max_words} words in {len(docs)} documents")
    return out


def with_bos(blocks: torch.Tensor, bos: int | None) -> torch.LongTensor:
    """Packed blocks [n, T] with a BOS column first (when `bos` is an id): [n, T + 1]."""
    if bos is None:
        return blocks
    return torch.cat([torch.full((blocks.shape[0], 1), bos, dtype=torch.long), blocks], dim=1)


def sentence_batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """Tokenised sentences (with special tokens), padded per batch; attention_mask marks the padding."""
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} must be >= 1")
    return [
        dict(tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=max_length,
                       return_tensors="pt"))
        for i in range(0, len(texts), batch_size)
    ]


def pack_blocks(ids: torch.Tensor, seq_len: int, source: str = "corpus") -> torch.LongTensor:
    """Cuts a token stream into consecutive non-overlapping blocks, dropping the remainder.

    Args:
        ids: `LongTensor[N]`.
        seq_len: block length.
        source: a name for the stream, used in the error message.

    Returns:
        `LongTensor[N // seq_len, seq_len]`.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len: {seq_len} must be >= 1")
    n = ids.numel() // seq_len
    if n == 0:
        raise ValueError(f"{source}: {ids.numel()} tokens is shorter than one block of seq_len {seq_len}")
    return ids[: n * seq_len].reshape(n, seq_len)  # [n, seq_len]


def batches(blocks: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Groups packed blocks into model inputs (the last batch may be smaller).

    Args:
        blocks: `LongTensor[n, seq_len]`.
        batch_size: blocks per batch.

    Returns:
        `[{"input_ids": [b, seq_len], "attention_mask": [b, seq_len] (all ones: packed blocks have no padding)}]`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} must be >= 1")
    return [
        {"input_ids": chunk, "attention_mask": torch.ones_like(chunk)}
        for chunk in torch.split(blocks, batch_size)
    ]


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings allow (None when the config sets no limit)."""
    return config_max_positions(model.config.to_dict())


def check_seq_len(model: nn.Module, seq_len: int) -> None:
    """Raises a ValueError when `seq_len` exceeds the model's maximum positions."""
    limit = max_positions(model)
    if seq_len < 1 or (limit is not None and seq_len > limit):
        raise ValueError(f"seq_len: {seq_len} is not in 1..{limit} (the model's maximum positions)")


def split_tokens(source: str, tokenizer, split: str, seed: int = 0) -> torch.LongTensor:
    """`token_stream` of one split (`train`, `score` or `eval`) of `split_documents(load_documents(source), seed)`."""
    parts = split_documents(load_documents(source), seed=seed)
    if split not in parts._fields:
        raise ValueError(f"split: {split!r} is not one of {', '.join(parts._fields)}")
    return token_stream(tokenizer, getattr(parts, split))


# ------------------------------------------------------------------------------- sampled windows


def document_tokens(tokenizer, docs: Sequence[Document]) -> list[torch.LongTensor]:
    """Each document tokenised on its own (no special tokens): what windows are drawn from."""
    if not docs:
        raise ValueError("docs: no documents to tokenise")
    # verbose=False: whole books are longer than model_max_length, which is fine before packing.
    encoded = tokenizer([d.text for d in docs], add_special_tokens=False, verbose=False)["input_ids"]
    return [torch.tensor(piece, dtype=torch.long) for piece in encoded]


def draw_windows(lengths: Sequence[int], window: int, count: int, rng: random.Random,
                 documents: int = 0) -> list[tuple[int, int]]:
    """`count` windows of `window` tokens drawn from documents spread over a split.

    `documents` documents (default: as many as windows, at most every document long enough) are drawn without
    replacement; the windows go round-robin over them, each at a random offset inside its document, distinct
    offsets where the document allows. So 8 windows come from 8 documents when the split has them, not from
    the first article.

    Args:
        lengths: token count of each document.
        window: tokens per window.
        count: windows to draw.
        rng: the generator (seeded by the caller: per trial seed, or fixed).
        documents: distinct documents to use (0 = min(count, documents long enough)).
    Returns:
        [(document index, start token)] in drawing order.
    """
    eligible = [i for i, n in enumerate(lengths) if n >= window]
    if not eligible:
        raise ValueError(f"split: no document holds {window} tokens (the longest has {max(lengths, default=0)})")
    k = documents or min(count, len(eligible))
    if k > len(eligible):
        raise ValueError(f"calibration_documents: {k} is more than the {len(eligible)} documents of at least "
                         f"{window} tokens in the score split")
    chosen = rng.sample(eligible, k)
    used: dict[int, set[int]] = {}
    out = []
    for j in range(count):
        doc = chosen[j % k]
        room = lengths[doc] - window + 1
        taken = used.setdefault(doc, set())
        start = rng.randrange(room)
        if len(taken) < room:
            while start in taken:
                start = rng.randrange(room)
        taken.add(start)
        out.append((doc, start))
    return out


def spread_windows(lengths: Sequence[int], window: int, count: int) -> list[tuple[int, int]]:
    """`count` windows of `window` tokens placed evenly over all documents of a split (by token position in the
    documents laid end to end, so each document gets windows in proportion to its length; disjoint unless the
    split is barely longer than the windows); a window never crosses a document's end. Deterministic: every cell
    of a grid sees the same windows.

    Returns:
        [(document index, start token)] in split order.
    """
    usable = [max(0, n - window + 1) for n in lengths]  # start positions that keep the window in its document
    total = sum(usable)
    if count < 1 or total == 0:
        raise ValueError(f"split: no document holds {window} tokens" if total == 0 else f"count: {count} must be >= 1")
    out, offsets = [], []
    acc = 0
    for n in usable:
        offsets.append(acc)
        acc += n
    for j in range(count):
        position = (j * total) // count + total // (2 * count)  # the middle of the j-th of count equal stretches
        doc = max(i for i, o in enumerate(offsets) if o <= position and usable[i] > 0)
        out.append((doc, position - offsets[doc]))
    return out


def window_tensor(doc_ids: Sequence[torch.Tensor], windows: Sequence[tuple[int, int]], length: int,
                  bos: int | None = None) -> torch.LongTensor:
    """The windows as rows of a [len(windows), length (+1 with a BOS token)] tensor, BOS first when given."""
    rows = [doc_ids[d][s: s + length] for d, s in windows]
    out = torch.stack(rows)
    if bos is not None:
        out = torch.cat([torch.full((len(rows), 1), bos, dtype=torch.long), out], dim=1)
    return out


def bos_token(tokenizer, bos: str) -> int | None:
    """The BOS id to start every window with: `true` needs one, `false` none, `auto` what the tokenizer does
    (its encoding of a plain string starts with BOS, as Llama-family tokenizers do, GPT-2's does not)."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos == "false":
        return None
    if bos == "true":
        if bos_id is None:
            raise ValueError(f"data.bos: true, but the tokenizer {type(tokenizer).__name__} has no BOS token")
        return bos_id
    ids = tokenizer("a").get("input_ids") or []
    return bos_id if bos_id is not None and ids and ids[0] == bos_id else None
