"""KV-cache memory and generation speed: the formula against what transformers allocates, for every causal family,
dense and pruned; the ideal ratios against bytes counted by hand; measurements that are positive and complete."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sentinel
from sentinel.eval.generation import (compare_generation, generation_speed, ideal_generation_ratios,
                                      kv_cache_bytes_per_token, linear_weight_bytes, measured_kv_cache_bytes_per_token)
from tests.tiny_models import CAUSAL, GQA, tiny_model


def request(model_type: str) -> dict[int, list[int]]:
    return {0: [0, 1], 1: [2, 3]} if model_type in GQA else {0: [0, 2], 1: [3]}  # GQA: one whole KV group a layer


@pytest.mark.parametrize("model_type", sorted(CAUSAL))
def test_kv_bytes_per_token_is_what_the_cache_holds_dense_and_pruned(model_type):
    model = tiny_model(model_type)
    config = model.config
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    by_hand = 2 * config.num_hidden_layers * kv * (config.hidden_size // config.num_attention_heads) * 4  # float32
    assert kv_cache_bytes_per_token(model) == measured_kv_cache_bytes_per_token(model) == by_hand
    sentinel.prune_heads(model, request(model_type))
    assert kv_cache_bytes_per_token(model) == measured_kv_cache_bytes_per_token(model) < by_hand


def test_removing_query_heads_only_leaves_the_cache_alone():
    model = tiny_model("llama")  # 4 query heads in 2 KV groups: one head of each group keeps both groups
    before = kv_cache_bytes_per_token(model)
    sentinel.prune_heads(model, {0: [0, 2]})
    assert measured_kv_cache_bytes_per_token(model) == before


def test_ideal_ratios_count_weights_and_cache_by_hand():
    dense, pruned = tiny_model("llama"), sentinel.prune_heads(tiny_model("llama"), {0: [0, 1], 1: [0, 1]})
    linear = lambda m: sum(4 * mod.weight.numel() for mod in m.modules() if isinstance(mod, nn.Linear))  # noqa: E731
    assert linear_weight_bytes(dense) == linear(dense) and linear_weight_bytes(pruned) < linear(dense)
    ratios = ideal_generation_ratios(dense, pruned, prompt_tokens=16, new_tokens=8, batch_size=4)
    context = 16 + 8 / 2
    kv_dense, kv_pruned = 2 * 2 * 2 * 8 * 4, 2 * 2 * 1 * 8 * 4  # K and V, layers, KV heads, head_dim, float32
    for batch, key in ((1, "decode"), (4, "decode_batch")):
        expected = (linear(dense) + batch * context * kv_dense) / (linear(pruned) + batch * context * kv_pruned)
        assert ratios[key] == pytest.approx(expected)
    assert ratios["decode_batch"] > ratios["decode"] > 1  # a bigger batch reads more cache: the cut counts more
    assert ratios["prefill"] > 1


def test_generation_speed_is_measured_and_comparable():
    dense, pruned = tiny_model("gpt2"), sentinel.prune_heads(tiny_model("gpt2"), {0: [0, 2], 1: [3]})
    rounds = compare_generation(dense, pruned, prompt_tokens=8, new_tokens=4, batch_size=3, rounds=3)
    assert len(rounds) == 3  # every round kept: a speedup is reported with the spread of its rounds
    for speed in (s for pair in rounds for s in pair):
        assert speed.prefill_tokens_per_s > 0 and speed.decode_tokens_per_s > 0 and speed.decode_batch_tokens_per_s > 0
    with pytest.raises(ValueError, match="^new_tokens: 0 must be >= 1"):
        generation_speed(dense, prompt_tokens=8, new_tokens=0, batch_size=1)


def test_generation_runs_the_fixed_number_of_steps(monkeypatch):
    """min_new_tokens = max_new_tokens: an EOS drawn early cannot shorten a measurement."""
    model = tiny_model("gpt2")
    lengths = []
    original = model.generate

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        lengths.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(model, "generate", recording)
    model.config.eos_token_id = 5
    generation_speed(model, prompt_tokens=6, new_tokens=7, batch_size=2)
    assert lengths == [2, 1, 8, 1, 8]
    assert torch.is_inference_mode_enabled() is False
