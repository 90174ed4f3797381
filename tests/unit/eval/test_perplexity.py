"""Sliding-window perplexity against the transformers guide's loop, and its validation."""
from __future__ import annotations

import math

import pytest
import torch

from sentinel.eval import perplexity, windows
from tests.tiny_models import VOCAB, tiny_model


def stream(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def guide_perplexity(model, ids: torch.Tensor, seq_len: int, stride: int) -> tuple[float, int]:
    """The transformers perplexity guide's loop, one window at a time, weighted by the exact token count."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, ids.numel(), stride):
        end = min(begin + seq_len, ids.numel())
        trg_len = end - prev_end
        input_ids = ids[None, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss  # mean over the shifted, valid labels
        count = int((target_ids[:, 1:] != -100).sum())
        nll_sum += loss.item() * count
        n_tokens += count
        prev_end = end
        if end == ids.numel():
            break
    return math.exp(nll_sum / n_tokens), n_tokens


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
@pytest.mark.parametrize(
    "n, seq_len, stride",
    [(100, 16, 16), (100, 16, 8), (101, 32, 5), (40, 64, 64)],  # non-overlapping, overlap + tail, one window
)
def test_matches_guide_loop(model_type, n, seq_len, stride):
    model = tiny_model(model_type)
    ids = stream(n)
    expected, tokens = guide_perplexity(model, ids, seq_len, stride)
    metric = perplexity(model, ids, seq_len=seq_len, stride=stride, batch_size=3, dataset="rand", split="eval")
    assert metric.value == pytest.approx(expected, rel=1e-5)
    assert metric.protocol == {
        "dataset": "rand", "split": "eval", "seq_len": seq_len, "stride": stride,
        "tokens": tokens, "windows": len(windows(n, seq_len, stride)),
    }
    assert metric.name == "perplexity" and metric.higher_is_better is False


def test_overlapping_windows_predict_every_token_but_the_first():
    model = tiny_model("gpt2")
    assert perplexity(model, stream(100), seq_len=16, stride=4).protocol["tokens"] == 99
    # non-overlapping windows: each window's first token has no context and is not predicted
    metric = perplexity(model, stream(100), seq_len=16, stride=16)
    assert metric.protocol["windows"] == 7 and metric.protocol["tokens"] == 100 - 7


def test_windows_cover_the_stream_once():
    for n, seq_len, stride in [(100, 16, 8), (101, 32, 5), (7, 16, 16), (64, 16, 16)]:
        spans = windows(n, seq_len, stride)
        scored = [t for w in spans for t in range(w.end - w.trg_len, w.end)]
        assert scored == list(range(n))
        assert all(w.length <= seq_len and w.trg_len <= w.length for w in spans)


def test_batch_size_does_not_change_the_value():
    model = tiny_model("llama")
    ids = stream(150)
    values = [perplexity(model, ids, seq_len=20, stride=7, batch_size=b).value for b in (1, 4, 64)]
    assert values[0] == pytest.approx(values[1], rel=1e-6) and values[0] == pytest.approx(values[2], rel=1e-6)


def test_is_not_the_mean_of_per_batch_perplexities():
    model = tiny_model("gpt2")
    ids = stream(192)  # 12 full windows, each predicting 15 tokens: equal weights
    metric = perplexity(model, ids, seq_len=16, stride=16, batch_size=1)
    per_window = [guide_perplexity(model, ids[b : b + 16], 16, 16)[0] for b in range(0, 192, 16)]
    mean_nll = sum(math.log(p) for p in per_window) / len(per_window)
    assert metric.value == pytest.approx(math.exp(mean_nll), rel=1e-6)
    # per-window perplexities differ, so their mean is strictly larger than exp(mean NLL) (Jensen)
    assert sum(per_window) / len(per_window) > metric.value * (1 + 1e-4)


def test_seq_len_beyond_max_positions_names_both():
    with pytest.raises(ValueError, match=r"seq_len: 65 exceeds the model's max positions 64"):
        perplexity(tiny_model("gpt2"), stream(100), seq_len=65, stride=65)


def test_too_short_stream_is_rejected():
    with pytest.raises(ValueError, match=r"ids: 1 token"):
        perplexity(tiny_model("gpt2"), stream(1), seq_len=16, stride=16)


@pytest.mark.parametrize("stride", [0, -1, 17])
def test_stride_outside_range_is_rejected(stride):
    with pytest.raises(ValueError, match=rf"stride: {stride} must be in \(0, seq_len=16\]"):
        perplexity(tiny_model("gpt2"), stream(100), seq_len=16, stride=stride)
