"""The seed API (collect -> entropy -> prune), rebuilt on streaming stats and HeadMask gates."""
from __future__ import annotations

import pytest
import torch

from sentinel.pruning import AttentionStats
from sentinel.pruning.entropy_magnitude import (
    _apply_pruning,
    collect_attention_distributions,
    compute_attention_entropy,
    entropy_based_pruning,
    magnitude_based_pruning,
    update_mask,
)
from sentinel.pruning.magnitude import magnitude_matrix
from tests.tiny_models import outputs, padded_batch, tiny_model
from tests.unit.pruning import brute


def loader():
    return [padded_batch(0), padded_batch(1, batch=2, length=9)]


@pytest.mark.parametrize("model_type, causal", [("gpt2", True), ("bert", False)])
def test_collected_entropy_equals_brute_force(model_type, causal):
    stats = collect_attention_distributions(tiny_model(model_type), loader())
    assert isinstance(stats, AttentionStats) and stats.batches == 2
    assert all(s.shape == (4,) for s in stats.entropy_sum)  # per-head sums only: no maps are kept
    expected = brute.mean_entropy(tiny_model(model_type, "eager"), loader(), causal=causal)
    torch.testing.assert_close(compute_attention_entropy(stats), expected, atol=1e-5, rtol=0)


def test_dataloader_may_yield_dicts_tuples_or_tensors():
    model = tiny_model("gpt2")
    batch = padded_batch()
    full = {"input_ids": batch["input_ids"], "attention_mask": torch.ones_like(batch["input_ids"])}
    as_dict = compute_attention_entropy(collect_attention_distributions(model, [full]))
    as_tuple = compute_attention_entropy(collect_attention_distributions(model, [(full["input_ids"], full["attention_mask"])]))
    as_tensor = compute_attention_entropy(collect_attention_distributions(model, [full["input_ids"]]))
    assert torch.equal(as_dict, as_tuple) and torch.equal(as_dict, as_tensor)


def test_num_batches_limits_what_is_read():
    stats = collect_attention_distributions(tiny_model("gpt2"), loader() * 3, num_batches=3)
    assert stats.batches == 3
    with pytest.raises(ValueError, match="num_batches: 0 is not an integer >= 1"):
        collect_attention_distributions(tiny_model("gpt2"), loader(), num_batches=0)


def test_entropy_pruning_masks_the_most_diffuse_heads_and_changes_the_output():
    model = tiny_model("gpt2")
    before = outputs(model, padded_batch(4))
    stats = collect_attention_distributions(model, loader())
    entropy = compute_attention_entropy(stats)
    pruned = entropy_based_pruning(model, stats, prune_ratio=0.25)  # 8 heads -> 2
    top = sorted(((float(entropy[l, h]), (l, h)) for l in range(2) for h in range(4)), reverse=True)[:2]
    assert pruned == [lh for _, lh in top]
    gates = model.sentinel_mask.gates
    assert all(gates[l][h] == 0 for l, h in pruned) and sum(int((g == 0).sum()) for g in gates.values()) == 2
    assert not torch.equal(outputs(model, padded_batch(4)), before)


def test_magnitude_pruning_masks_the_smallest_heads():
    model = tiny_model("llama")
    norms = magnitude_matrix(model)
    pruned = magnitude_based_pruning(model, prune_ratio=0.375)  # 8 heads -> 3
    order = sorted((float(norms[l, h]), (l, h)) for l in range(2) for h in range(4))
    assert pruned == [lh for _, lh in order[:3]]


def test_repeated_calls_compose_on_the_same_mask_and_never_empty_a_layer():
    model = tiny_model("gpt2")
    first = magnitude_based_pruning(model, 0.5)  # 4 of 8
    mask = model.sentinel_mask
    second = magnitude_based_pruning(model, 0.5)  # 2 of the 4 still active
    assert model.sentinel_mask is mask and not set(first) & set(second) and len(second) == 2
    magnitude_based_pruning(model, 0.9)  # would empty layers: each keeps one head
    assert all(int((g != 0).sum()) == 1 for g in mask.gates.values())


def test_safe_update_tensor_fn_writes_the_gates():
    model = tiny_model("gpt2")
    calls = []

    def write(tensor, value):
        calls.append(tensor)
        tensor.data.copy_(value)

    pruned = magnitude_based_pruning(model, 0.25, safe_update_tensor_fn=write)
    assert calls and all(model.sentinel_mask.gates[l][h] == 0 for l, h in pruned)


def test_update_mask_restores_heads_and_apply_pruning_masks_them():
    model = tiny_model("gpt2")
    dense = outputs(model, padded_batch())
    _apply_pruning(model, [(0, 1), (1, 2)])
    assert not torch.equal(outputs(model, padded_batch()), dense)
    update_mask(model.sentinel_mask, [(0, 1), (1, 2)], value=1.0)
    assert torch.equal(outputs(model, padded_batch()), dense)
    with pytest.raises(ValueError, match=r"heads: \(0, 9\) is not a \(layer, head\) of this mask"):
        update_mask(model.sentinel_mask, [(0, 9)])


def test_prune_ratio_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match=r"prune_ratio: 1.0 is not a fraction in \[0, 1\)"):
        magnitude_based_pruning(tiny_model("gpt2"), 1.0)
