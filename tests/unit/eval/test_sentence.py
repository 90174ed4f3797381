"""Sentence embeddings, STS-B loading and Spearman, embedding fidelity, on the real all-MiniLM-L6-v2."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sentinel.eval import embedding_fidelity, encode, load_stsb, mean_pool, sts_spearman
from sentinel.models import prune_heads
from sentinel.resampling import spearman_of

SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the river bank this morning.",
    "Rain.",
    "Two women are sitting on a bench and talking about the weather.",
]


def test_mean_pool_ignores_padding():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float).reshape(2, 3, 2)  # [B=2, T=3, D=2]
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    pooled = mean_pool(hidden, mask)
    assert torch.equal(pooled[0], hidden[0].mean(0))
    assert torch.equal(pooled[1], hidden[1, 0])


def test_mean_pool_of_all_padding_is_zero_not_nan():
    assert torch.equal(mean_pool(torch.ones(1, 3, 2), torch.zeros(1, 3)), torch.zeros(1, 2))


def test_encode_is_independent_of_batching_and_keeps_order(minilm):
    model, tokenizer = minilm
    together = encode(model, tokenizer, SENTENCES, batch_size=64)
    alone = torch.cat([encode(model, tokenizer, [s]) for s in SENTENCES])
    assert together.shape == (4, model.config.hidden_size)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_load_stsb_reads_every_pair_with_literal_quotes():
    test, dev = load_stsb("test"), load_stsb("dev")
    assert (len(test), len(dev)) == (1379, 1500)
    assert all(0.0 <= score <= 5.0 and s1 and s2 for s1, s2, score in test + dev)
    assert any('"' in s1 + s2 for s1, s2, _ in test)  # a CSV parser would have eaten these


def test_load_stsb_unknown_split_lists_allowed():
    with pytest.raises(ValueError, match=r"split: 'train' is not one of test, dev"):
        load_stsb("train")


def test_dense_minilm_reproduces_published_stsb_test_spearman(minilm):
    model, tokenizer = minilm
    metric = sts_spearman(model, tokenizer, split="test", batch_size=128)
    # published: 82.03 (MTEB STSBenchmark test, cosine Spearman, sentence-transformers/all-MiniLM-L6-v2)
    assert metric.value == pytest.approx(0.8203, abs=0.003)
    # one [cosine, gold] unit per pair, in order: they give the value back (what the analysis resamples)
    assert len(metric.units) == 1379 and spearman_of(np.array(metric.units)) == pytest.approx(metric.value, abs=1e-9)
    assert metric.name == "stsb_spearman" and metric.higher_is_better
    assert metric.protocol == {"dataset": "stsb", "split": "test", "pairs": 1379, "pooling": "mean", "max_length": 128,
                               "sample": "all", "sample_seed": None}


def test_spearman_on_given_pairs_ranks_paraphrases_above_unrelated(minilm):
    model, tokenizer = minilm
    pairs = [
        ("A man is playing a guitar.", "A man plays the guitar.", 5.0),
        ("A woman is slicing an onion.", "Someone is cutting an onion.", 4.0),
        ("A dog runs in the park.", "The stock market fell sharply today.", 0.0),
    ]
    metric = sts_spearman(model, tokenizer, pairs)
    assert metric.value == pytest.approx(1.0) and metric.protocol["pairs"] == 3


def test_fidelity_is_one_for_the_dense_model_and_drops_when_pruned(minilm):
    model, tokenizer = minilm
    reference = encode(model, tokenizer, SENTENCES)
    dense = embedding_fidelity(model, tokenizer, SENTENCES, reference)
    assert dense.value == pytest.approx(1.0, abs=1e-5) and dense.higher_is_better
    pruned = prune_heads(copy.deepcopy(model), {layer: list(range(8)) for layer in range(6)})  # 12 -> 4 heads
    assert embedding_fidelity(pruned, tokenizer, SENTENCES, reference).value < 0.99


def test_fidelity_rejects_mismatched_reference(minilm):
    model, tokenizer = minilm
    with pytest.raises(ValueError, match=r"reference_embeddings: 3 rows for 4 sentences"):
        embedding_fidelity(model, tokenizer, SENTENCES, torch.zeros(3, 384))


def test_stsb_sample_is_seeded_uniform_and_recorded_in_the_protocol(minilm):
    from sentinel.eval import sample_pairs

    pairs = load_stsb("test")
    a, b, c = sample_pairs(pairs, 100, seed=0), sample_pairs(pairs, 100, seed=0), sample_pairs(pairs, 100, seed=1)
    assert a == b != c and len(a) == 100 and len(set(a)) == 100
    positions = [pairs.index(p) for p in a]
    assert positions == sorted(positions) and max(positions) > 1000  # spread over the file, not its head
    assert sample_pairs(pairs, 0, seed=0) == pairs == sample_pairs(pairs, 5000, seed=0)
    with pytest.raises(ValueError, match="sts_pairs: -1 is not an integer >= 0"):
        sample_pairs(pairs, -1, seed=0)
    model, tokenizer = minilm
    metric = sts_spearman(model, tokenizer, pairs[:300], sample=50, seed=4)
    assert metric.protocol["pairs"] == 50 and metric.protocol["sample"] == "seeded random 50 of 300"
    assert metric.protocol["sample_seed"] == 4 and metric.scale == "atanh"
