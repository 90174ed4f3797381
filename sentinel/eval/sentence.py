"""Encoder quality: sentence embeddings (all-MiniLM-L6-v2 protocol), STS-B Spearman, embedding fidelity.

all-MiniLM-L6-v2 is used through sentence-transformers as Transformer -> mean pooling -> L2 normalise.
We reproduce that with plain transformers: mean of the last hidden state over non-padding tokens.
The normalisation is left out because every score here is a cosine, which ignores the norm.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sentinel.models.device import mean_pool, model_device
from sentinel.eval.metric import Metric

STSB_DIR = Path(__file__).resolve().parents[1] / "data" / "corpus" / "stsb"
STSB_FILES = {"test": "sts-test.csv", "dev": "sts-dev.csv"}

Pair = tuple[str, str, float]


def encode(
    model: nn.Module,
    tokenizer,
    sentences: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
) -> torch.Tensor:
    """Mean-pooled sentence embeddings, in input order.

    Args:
        model: an encoder returning `.last_hidden_state` (e.g. AutoModel for all-MiniLM-L6-v2).
        tokenizer: its tokenizer.
        sentences: the texts.
        batch_size: sentences per forward pass.
        max_length: longer inputs are truncated to this many word pieces.
    Returns:
        Tensor[n, d] (float32, on the CPU).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} must be >= 1")
    device = model_device(model)
    # longest first, as sentence-transformers does: batches of similar length waste little on padding
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
    model.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = tokenizer(
                [sentences[i] for i in order[start : start + batch_size]],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state  # [B, T, D]
            chunks.append(mean_pool(hidden.float(), batch["attention_mask"]).cpu())
    if not chunks:
        return torch.empty(0, 0)
    embeddings = torch.empty_like(torch.cat(chunks))
    embeddings[torch.tensor(order)] = torch.cat(chunks)  # back to input order
    return embeddings


def load_stsb(split: str = "test", path: str | Path | None = None) -> list[Pair]:
    """STS-B pairs as (sentence1, sentence2, gold score in [0, 5]).

    The files are TAB-separated: genre, filename, year, id, score, sentence1, sentence2 [, extra
    columns]. Quotes are literal characters, so lines are split on TAB, never parsed as CSV.

    Args:
        split: "test" (1379 pairs) or "dev" (1500 pairs).
        path: an explicit file instead of the bundled one.
    """
    if path is None:
        if split not in STSB_FILES:
            raise ValueError(f"split: {split!r} is not one of {', '.join(STSB_FILES)}")
        path = STSB_DIR / STSB_FILES[split]
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 7:
            raise ValueError(f"{path}:{number}: {len(fields)} TAB-separated fields, expected at least 7")
        pairs.append((fields[5], fields[6], float(fields[4])))
    return pairs


def sample_pairs(pairs: Sequence[Pair], n: int, seed: int) -> list[Pair]:
    """A seeded uniform sample of `n` pairs without replacement, in file order (n = 0 or >= len: all of them).

    The file's order is not random (STS-B test is grouped by genre and source), so its first n pairs are a
    biased subset: all-MiniLM-L6-v2 scores 0.938 on the first 256 test pairs and 0.820 on all 1379.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"sts_pairs: {n!r} is not an integer >= 0 (0 = all pairs)")
    if n == 0 or n >= len(pairs):
        return list(pairs)
    chosen = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return [pairs[i] for i in chosen.tolist()]


def cosine_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two [n, d] tensors -> [n]."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def sts_spearman(
    model: nn.Module,
    tokenizer,
    pairs: Sequence[Pair] | None = None,
    split: str = "test",
    *,
    sample: int = 0,
    seed: int = 0,
    batch_size: int = 64,
    max_length: int = 128,
) -> Metric:
    """Spearman correlation between the cosine similarity of each pair's embeddings and its gold score.

    Args:
        model, tokenizer: the encoder (mean pooling, see `encode`).
        pairs: (s1, s2, score) triples; default all of STS-B `split`.
        split: which STS-B split to load when `pairs` is None (also recorded in the protocol).
        sample, seed: evaluate a seeded random sample of this many pairs (`sample_pairs`); 0 = all.
        batch_size, max_length: passed to `encode`.
    Returns:
        Metric("stsb_spearman", rho in [-1, 1], higher_is_better=True); the protocol records the sample, the units
        each pair's [cosine, gold score].
    """
    if pairs is None:
        pairs = load_stsb(split)
    available = len(pairs)
    pairs = sample_pairs(pairs, sample, seed)
    if len(pairs) < 2:
        raise ValueError(f"pairs: {len(pairs)} pair(s); Spearman correlation needs at least 2")
    first = encode(model, tokenizer, [p[0] for p in pairs], batch_size, max_length)
    second = encode(model, tokenizer, [p[1] for p in pairs], batch_size, max_length)
    gold = [p[2] for p in pairs]
    from scipy.stats import spearmanr  # here, not at the top: 0.6 s of every worker's start, and only encoders need it

    cosines = cosine_pairs(first, second).numpy()
    rho = spearmanr(cosines, gold).statistic
    protocol = {"dataset": "stsb", "split": split, "pairs": len(pairs), "pooling": "mean", "max_length": max_length,
                "sample": "all" if len(pairs) == available else f"seeded random {len(pairs)} of {available}",
                "sample_seed": seed if len(pairs) < available else None}
    return Metric(name="stsb_spearman", value=float(rho), higher_is_better=True, protocol=protocol, scale="atanh",
                  units=[[float(c), float(g)] for c, g in zip(cosines, gold)])


def embedding_fidelity(
    model: nn.Module,
    tokenizer,
    sentences: Sequence[str],
    reference_embeddings: torch.Tensor,
    *,
    batch_size: int = 64,
    max_length: int = 128,
) -> Metric:
    """Mean cosine between this model's sentence embeddings and the dense model's, sentence by sentence.

    Args:
        model, tokenizer: the (pruned) encoder.
        sentences: held-out texts, the same ones `reference_embeddings` were computed on.
        reference_embeddings: Tensor[n, d], `encode(dense_model, tokenizer, sentences)`.
    Returns:
        Metric("embedding_fidelity", mean cosine in [-1, 1], higher_is_better=True); 1 means the same directions.
    """
    if len(sentences) != reference_embeddings.shape[0]:
        raise ValueError(
            f"reference_embeddings: {reference_embeddings.shape[0]} rows for {len(sentences)} sentences; "
            f"they must match one to one"
        )
    if not sentences:
        raise ValueError("sentences: empty; give at least one held-out sentence")
    embeddings = encode(model, tokenizer, sentences, batch_size, max_length)
    value = cosine_pairs(embeddings, reference_embeddings.cpu()).mean().item()
    protocol = {"sentences": len(sentences), "pooling": "mean", "max_length": max_length}
    return Metric(name="embedding_fidelity", value=value, higher_is_better=True, protocol=protocol, scale="atanh")
