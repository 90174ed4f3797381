"""Bundled offline corpus, text sources, disjoint document splits, tokenisation into packed blocks."""
from sentinel.data.blocks import (
    batches,
    check_seq_len,
    max_positions,
    pack_blocks,
    sentence_batches,
    sentences,
    split_tokens,
    token_stream,
)
from sentinel.data.sources import (
    BUNDLED,
    CORPUS_DIR,
    Document,
    hub_offline,
    hub_reachable,
    load_documents,
)
from sentinel.data.splits import Splits, split_documents

__all__ = [
    "BUNDLED",
    "CORPUS_DIR",
    "Document",
    "Splits",
    "batches",
    "check_seq_len",
    "hub_offline",
    "hub_reachable",
    "load_documents",
    "max_positions",
    "pack_blocks",
    "sentence_batches",
    "sentences",
    "split_documents",
    "split_tokens",
    "token_stream",
]
