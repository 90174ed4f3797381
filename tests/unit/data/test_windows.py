"""Calibration windows drawn over a split, evaluation windows spread over it, BOS, and the window perplexity."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from sentinel.data import bos_token, draw_windows, spread_windows, window_tensor, with_bos
from sentinel.eval import window_perplexity


def test_draw_windows_takes_distinct_documents_at_random_offsets_inside_them():
    lengths = [500, 40, 300, 1000, 129, 128, 700, 90]
    drawn = draw_windows(lengths, 128, 4, random.Random("a"))
    docs = [d for d, _ in drawn]
    assert len(set(docs)) == 4 and all(lengths[d] >= 128 for d in docs)  # 4 windows, 4 documents long enough
    assert all(0 <= s <= lengths[d] - 128 for d, s in drawn)
    assert drawn == draw_windows(lengths, 128, 4, random.Random("a"))  # a seeded generator: reproducible
    assert drawn != draw_windows(lengths, 128, 4, random.Random("b"))
    many = draw_windows(lengths, 128, 12, random.Random("a"))  # more windows than documents: round-robin
    assert {d for d, _ in many} == {0, 2, 3, 4, 5, 6}
    roomy = [w for w in many if lengths[w[0]] - 128 >= 1]  # documents with more than one possible start
    assert len(set(roomy)) == len(roomy)  # distinct offsets where the document allows
    two = draw_windows(lengths, 128, 6, random.Random("a"), documents=2)
    assert len({d for d, _ in two}) == 2
    with pytest.raises(ValueError, match=r"^calibration_documents: 7 is more than the 6 documents"):
        draw_windows(lengths, 128, 8, random.Random("a"), documents=7)


def test_spread_windows_cover_the_split_in_proportion_and_never_cross_a_document():
    lengths = [1000, 600, 3000, 500, 50]  # the last holds no window
    placed = spread_windows(lengths, 100, 9)
    assert all(0 <= s <= lengths[d] - 100 for d, s in placed)
    assert {d for d, _ in placed} == {0, 1, 2, 3}
    per_doc = [sum(d == k for d, _ in placed) for k in range(5)]
    assert per_doc[2] > per_doc[0] >= per_doc[1] and per_doc[4] == 0  # a long document gets more windows
    # evenly spaced: the gaps between consecutive starts (on the joined start positions) differ by at most 1
    usable = [max(0, n - 99) for n in lengths]
    offsets = [sum(usable[:d]) + s for d, s in placed]
    gaps = {b - a for a, b in zip(offsets, offsets[1:])}
    assert max(gaps) - min(gaps) <= 1


def test_window_tensor_puts_bos_first_and_with_bos_prefixes_blocks():
    docs = [torch.arange(10), torch.arange(100, 120)]
    rows = window_tensor(docs, [(0, 2), (1, 5)], 4, bos=7)
    assert rows.tolist() == [[7, 2, 3, 4, 5], [7, 105, 106, 107, 108]]
    assert with_bos(torch.zeros(2, 3, dtype=torch.long), 9)[:, 0].tolist() == [9, 9]
    assert with_bos(torch.zeros(2, 3, dtype=torch.long), None).shape == (2, 3)


def test_bos_auto_follows_the_tokenizer():
    import transformers

    from tests.integration.conftest import tokenizer_source

    gpt2 = transformers.AutoTokenizer.from_pretrained(tokenizer_source())
    assert bos_token(gpt2, "auto") is None and bos_token(gpt2, "false") is None
    assert bos_token(gpt2, "true") == gpt2.bos_token_id  # GPT-2 has one, but does not add it


def test_window_perplexity_equals_the_nll_of_each_window_by_hand(tiny_gpt2_model):
    model = tiny_gpt2_model
    windows = torch.randint(0, model.config.vocab_size, (5, 16), generator=torch.Generator().manual_seed(0))
    metric = window_perplexity(model, windows, batch_size=2, dataset="x", split="eval")
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in windows:
            logits = model(input_ids=row[None]).logits[0, :-1]
            nll += F.cross_entropy(logits, row[1:], reduction="sum").item()
            count += len(row) - 1
    assert metric.value == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert metric.protocol["tokens"] == count and metric.protocol["windows"] == 5


@pytest.fixture(scope="module")
def tiny_gpt2_model():
    import transformers

    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2,
                                                                n_head=2)).eval()
