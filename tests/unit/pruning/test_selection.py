"""select_heads: counting, ordering, layer safety, GQA groups, policies, and bad arguments."""
from __future__ import annotations

import pytest
import torch

from sentinel.pruning import HeadScores, select_heads

NAN = float("nan")


def grid(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_level_zero_selects_nothing_without_notes():
    s = select_heads(grid([[1, 2], [3, 4]]), 0.0)
    assert (s.heads, s.requested, s.selected, s.notes) == ({}, 0, 0, [])


def test_tiny_level_that_rounds_to_zero_is_noted():
    s = select_heads(grid([[1, 2, 3, 4]] * 2), 0.05)
    assert s.heads == {} and s.requested == 0 and s.selected == 0
    assert "rounds to 0 heads" in s.notes[0]


def test_count_rounds_half_up_not_to_even():
    # 8 heads * 0.3125 = 2.5: round-half-up gives 3 (Python's round would give 2)
    s = select_heads(grid([[1, 2, 3, 4], [5, 6, 7, 8]]), 0.3125)
    assert s.requested == s.selected == 3 and s.heads == {0: [0, 1, 2]}


def test_lowest_scores_are_pruned_first_across_layers():
    s = select_heads(grid([[5, 1, 7, 8], [2, 6, 0, 9]]), 0.375)
    assert s.heads == {0: [1], 1: [0, 2]}


def test_ties_break_by_layer_then_head():
    s = select_heads(grid([[1, 1, 1], [1, 1, 1]]), 0.5)
    assert s.heads == {0: [0, 1], 1: [0]}


def test_never_empties_a_layer_and_says_what_was_left_out():
    s = select_heads(grid([[0, 0, 0, 0], [5, 6, 7, 8]]), 0.5)
    assert s.heads == {0: [0, 1, 2], 1: [0]}  # layer 0 keeps one head; the 4th pick moves to layer 1
    s = select_heads(grid([[0, 0, 0, 0], [5, 6, 7, 8]]), 0.9)  # asks for 7, only 6 can go
    assert s.requested == 7 and s.selected == 6 and "min_heads_per_layer=1" in s.notes[0]
    assert all(len(h) == 3 for h in s.heads.values())


def test_min_heads_per_layer_is_kept():
    s = select_heads(grid([[0, 1, 2, 3], [4, 5, 6, 7]]), 0.75, min_heads_per_layer=2)
    assert s.heads == {0: [0, 1], 1: [0, 1]} and s.selected == 4 < s.requested == 6 and s.notes


def test_per_layer_policy_prunes_the_same_fraction_of_each_layer():
    s = select_heads(grid([[0, 1, 2, 3], [9, 8, 7, 6]]), 0.5, policy="per_layer")
    assert s.heads == {0: [0, 1], 1: [2, 3]} and s.selected == s.requested == 4


def test_per_layer_quotas_sum_to_the_global_count_by_largest_remainder():
    # 3 layers x 2 heads at 0.25: 1.5 -> 2 heads; each layer's exact quota is 0.5, so layers 0 and 1 get one
    s = select_heads(grid([[3, 4], [5, 1], [0, 2]]), 0.25, policy="per_layer")
    assert s.requested == s.selected == 2 and s.heads == {0: [0], 1: [1]}


def test_per_layer_cap_is_noted():
    s = select_heads(grid([[0, 1], [2, 3]]), 0.75, policy="per_layer")
    assert s.heads == {0: [0], 1: [0]} and s.selected == 2 < s.requested == 3
    assert any("capped" in n for n in s.notes)


def test_gqa_groups_are_pruned_whole_and_scored_by_their_mean():
    # groups of 2: layer 0 groups (0,1) mean 5, (2,3) mean 1.5; layer 1 groups mean 2 and 8
    scores = grid([[1, 9, 0, 3], [2, 2, 8, 8]])
    s = select_heads(scores, 0.25, group_size=2)
    assert s.heads == {0: [2, 3]} and s.requested == s.selected == 2 and s.notes == []


def test_gqa_count_rounds_to_whole_groups_with_a_note():
    s = select_heads(grid([[1, 9, 0, 3], [2, 2, 8, 8]]), 0.375, group_size=2)  # 3 heads -> 1.5 -> 2 groups
    assert s.requested == 3 and s.selected == 4 and s.heads == {0: [2, 3], 1: [0, 1]}
    assert "whole KV groups" in s.notes[0]


def test_gqa_never_removes_a_layers_last_group():
    s = select_heads(grid([[0, 0, 0, 0], [9, 9, 9, 9]]), 0.5, group_size=2)
    assert s.heads == {0: [0, 1], 1: [0, 1]}


def test_head_scores_and_trailing_nan_rows_are_accepted():
    scores = HeadScores(grid([[4, 3, 2, 1], [0, 5, NAN, NAN]]), "test")  # layer 1 has 2 heads after pruning
    s = select_heads(scores, 0.5)
    assert s.requested == 3 and s.heads == {0: [2, 3], 1: [0]}


@pytest.mark.parametrize("level", [-0.1, 1.0, 1.5, True, "0.3", NAN])
def test_level_outside_unit_interval_is_rejected(level):
    with pytest.raises(ValueError, match=r"level: .* is not a fraction in \[0, 1\)"):
        select_heads(grid([[1, 2]]), level)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"policy": "layerwise"}, "policy: 'layerwise' is not one of global, per_layer, uniform"),
        ({"min_heads_per_layer": -1}, "min_heads_per_layer: -1 is not an integer >= 0"),
        ({"group_size": 3}, "group_size: 3 does not divide layer 0's 4 heads"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_heads(grid([[1, 2, 3, 4]]), 0.5, **kwargs)


def test_nan_inside_a_row_is_rejected():
    with pytest.raises(ValueError, match="layer 0 has NaN before its last head"):
        select_heads(grid([[1, NAN, 3]]), 0.3)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
@pytest.mark.parametrize("strategy", ["random", "magnitude", "gradient"])
def test_selection_from_scores_is_accepted_by_prune_heads_on_gqa_without_a_group_size(model_type, strategy):
    """score_heads records the KV group size; select_heads picks whole groups from it, so the plain pair of
    calls works on GQA models (SmolLM2: 9 query heads over 3 KV heads per layer)."""
    from sentinel.models import head_layout, prune_heads
    from sentinel.pruning import score_heads
    from tests.tiny_models import padded_batch, tiny_model

    model = tiny_model(model_type)
    scores = score_heads(strategy, model, [padded_batch()], seed=3)
    assert scores.group_sizes == (2, 2)
    for level in (0.25, 0.5):
        selection = select_heads(scores, level)
        assert all(len(heads) % 2 == 0 for heads in selection.heads.values())
        pruned = prune_heads(tiny_model(model_type), selection.heads)
        assert sum(head_layout(pruned).heads) == 8 - selection.selected


def test_explicit_group_size_overrides_and_mixed_group_sizes_are_refused():
    scores = HeadScores(grid([[0, 1, 2, 3], [4, 5, 6, 7]]), "x", group_sizes=(2, 1))
    with pytest.raises(ValueError, match=r"different GQA group sizes \[2, 1\]; pass group_size"):
        select_heads(scores, 0.25)
    assert select_heads(scores, 0.25, group_size=1).heads == {0: [0, 1]}
    assert select_heads(HeadScores(grid([[0, 1, 2, 3]]), "x", group_sizes=(2,)), 0.25).heads == {0: [0, 1]}


def test_uniform_policy_removes_the_same_heads_count_from_every_layer_and_says_when_the_total_moves():
    # 3 layers x 4 heads at 0.5: 6 heads, 2 from each layer, the lowest of each
    s = select_heads(grid([[0, 1, 2, 3], [9, 8, 7, 6], [5, 0, 5, 1]]), 0.5, policy="uniform")
    assert s.heads == {0: [0, 1], 1: [2, 3], 2: [1, 3]} and s.selected == s.requested == 6 and s.notes == []
    # 30 layers x 3 KV groups of 3 at 0.3: 27 groups asked, 1 from each layer gives 30 (SmolLM2's case)
    s = select_heads(torch.rand(30, 9, generator=torch.Generator().manual_seed(0)), 0.3, policy="uniform", group_size=3)
    assert {len(h) for h in s.heads.values()} == {3} and len(s.heads) == 30
    assert (s.requested, s.selected) == (81, 90) and "90 in all (level 0.3 asks for 81)" in s.notes[0]
