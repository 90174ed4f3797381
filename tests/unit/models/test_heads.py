"""Core head library: masking and physical removal agree, for every supported model type."""
from __future__ import annotations

import pytest
import torch

import sentinel
from sentinel.models import supported_model_types
from tests.tiny_models import CAUSAL, CONFIGS, GQA, outputs, padded_batch, tiny_model

MODEL_TYPES = sorted(CONFIGS)


def request_for(model_type: str) -> dict[int, list[int]]:
    # GQA (4 query heads, 2 KV heads): layer 0 loses a whole group, layer 1 one head of each group
    return {0: [0, 1], 1: [1, 3]} if model_type in GQA else {0: [0, 2], 1: [3]}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


OWN_TESTS = {"t5": "test_t5.py"}  # an encoder-decoder: its stacks and cross-attention are tested in their own file


def test_every_claimed_family_has_a_tiny_model():
    """What the registry claims is what these tests check: every supported family has a tiny model here (or its own
    test file), and no tiny model stands for a family the registry does not claim."""
    from pathlib import Path

    claimed = set(supported_model_types())
    assert claimed - set(OWN_TESTS) <= set(MODEL_TYPES), f"no tiny model: {sorted(claimed - set(OWN_TESTS) - set(MODEL_TYPES))}"
    assert set(MODEL_TYPES) <= claimed
    assert all((Path(__file__).parent / name).is_file() for name in OWN_TESTS.values())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_masked_equals_pruned(model_type, attn):
    model, batch = tiny_model(model_type, attn), padded_batch()
    request = request_for(model_type)
    with sentinel.mask_heads(model, request):
        masked = outputs(model, batch)
    dense = outputs(model, batch)
    sentinel.prune_heads(model, request)
    pruned = outputs(model, batch)
    assert (masked - pruned).abs().max().item() <= 1e-4
    assert (masked - dense).abs().max().item() > 1e-3  # the heads mattered: the test could fail


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_removing_mask_restores_exact_outputs(model_type):
    model, batch = tiny_model(model_type), padded_batch()
    before = outputs(model, batch)
    handle = sentinel.mask_heads(model, request_for(model_type))
    assert not torch.equal(outputs(model, batch), before)
    handle.remove()
    assert torch.equal(outputs(model, batch), before)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_parameter_count_drops_by_exactly_the_removed_heads(model_type):
    model = tiny_model(model_type)
    layout = sentinel.head_layout(model)
    d, hidden = layout.head_dim, model.config.hidden_size
    request = request_for(model_type)
    expected = 0
    for layer, heads in request.items():
        group = layout.group_size(layer)
        removed_kv = [g for g in range(layout.kv_heads[layer]) if all(h in heads for h in range(g * group, (g + 1) * group))]
        q_bias = k_bias = model_type not in {"llama", "mistral"}  # llama/mistral: attention_bias=False
        expected += len(heads) * d * (hidden + q_bias)  # q rows (+ bias)
        expected += 2 * len(removed_kv) * d * (hidden + k_bias)  # k and v rows (+ biases)
        expected += len(heads) * d * hidden  # o columns (its bias stays)
    before = n_params(model)
    sentinel.prune_heads(model, request)
    assert before - n_params(model) == expected


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_head_layout_reflects_removal(model_type):
    model = tiny_model(model_type)
    layout = sentinel.head_layout(model)
    assert layout.num_layers == 2 and layout.heads == (4, 4) and layout.head_dim == 8
    assert layout.kv_heads == ((2, 2) if model_type in GQA else (4, 4))
    sentinel.prune_heads(model, request_for(model_type))
    after = sentinel.head_layout(model)
    if model_type in GQA:
        assert (after.heads, after.kv_heads) == ((2, 2), (1, 2))
    else:
        assert (after.heads, after.kv_heads) == ((2, 3), (2, 3))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_save_load_round_trip_gives_identical_outputs(model_type, tmp_path):
    model, batch = tiny_model(model_type), padded_batch()
    sentinel.prune_heads(model, request_for(model_type))
    expected = outputs(model, batch)
    sentinel.save_pruned(model, tmp_path / "pruned")
    loaded = sentinel.load_pruned(tmp_path / "pruned")
    assert sentinel.head_layout(loaded) == sentinel.head_layout(model)
    assert torch.equal(outputs(loaded, batch), expected)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_two_successive_prunes_compose(model_type):
    """Prune twice (positions in the current layout, ids="current") == masking the union of original heads once."""
    model, batch = tiny_model(model_type), padded_batch()
    if model_type in GQA:
        first, second, union = {0: [0, 1]}, {0: [1], 1: [0, 2]}, {0: [0, 1, 3], 1: [0, 2]}
    else:
        first, second, union = {0: [1]}, {0: [1], 1: [0]}, {0: [1, 2], 1: [0]}  # second's 0:[1] is original 2
    with sentinel.mask_heads(model, union):
        expected = outputs(model, batch)
    sentinel.prune_heads(model, first, ids="current")
    sentinel.prune_heads(model, second, ids="current")
    assert (outputs(model, batch) - expected).abs().max().item() <= 1e-4
    kept = sentinel.models.kept_heads(model)
    assert kept[0]["heads"] == [h for h in range(4) if h not in union[0]]


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_original_ids_by_default_never_hit_another_head(model_type):
    """The default (v4's convention): ids name dense heads, so the second prune's 0:[1] is the head already gone
    (ignored with a warning), not whatever sits at position 1 now; config.pruned_heads says what is gone."""
    model, batch = tiny_model(model_type), padded_batch()
    if model_type in GQA:
        first, second, union = {0: [0, 1]}, {0: [3, 1], 1: [0, 2]}, {0: [0, 1, 3], 1: [0, 2]}
    else:
        first, second, union = {0: [1]}, {0: [2, 1], 1: [0]}, {0: [1, 2], 1: [0]}
    with sentinel.mask_heads(model, union):
        expected = outputs(model, batch)
    sentinel.prune_heads(model, first)
    with pytest.warns(UserWarning, match=r"\(0, 1\)\] \(layer, original head\) were already pruned; ignored"):
        sentinel.prune_heads(model, second)
    assert (outputs(model, batch) - expected).abs().max().item() <= 1e-4
    assert model.config.pruned_heads == union
    with pytest.warns(UserWarning, match="already pruned"):  # nothing left to do: the model is unchanged
        assert sentinel.prune_heads(model, {0: [1]}) is model
    with sentinel.mask_heads(model, {1: [1]}):  # original head 1 of layer 1 is at position 0 now
        masked = outputs(model, batch)
    with sentinel.mask_heads(model, {1: [0]}, ids="current"):
        assert (outputs(model, batch) - masked).abs().max().item() == 0
    with pytest.raises(ValueError, match=r"layer 0: head 4 is not an original head index in \[0, 3\]"):
        sentinel.prune_heads(model, {0: [4]})


@pytest.mark.parametrize("model_type", sorted(CAUSAL))
def test_generate_with_kv_cache_after_removal(model_type):
    model, batch = tiny_model(model_type), padded_batch(batch=1)
    request = request_for(model_type)
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with sentinel.mask_heads(model, request):
        expected = model.generate(**batch, use_cache=False, **settings)
    sentinel.prune_heads(model, request)
    cached = model.generate(**batch, use_cache=True, **settings)
    assert cached.shape[1] == batch["input_ids"].shape[1] + 8
    assert torch.equal(cached, expected)


@pytest.mark.parametrize("model_type", ["gpt2", "bert", "llama"])
def test_gradients_reach_mask_gates(model_type):
    model, batch = tiny_model(model_type), padded_batch()
    handle = sentinel.mask_heads(model, None, requires_grad=True)
    outputs_ = model(**batch)
    value = outputs_.logits if hasattr(outputs_, "logits") else outputs_.last_hidden_state
    value.pow(2).mean().backward()
    for gate in handle.gates.values():
        assert gate.grad is not None and gate.grad.shape == (4,) and gate.grad.abs().sum() > 0
    handle.remove()


BAD_REQUESTS = [
    ({0: [4]}, "layer 0: head 4 is not an original head index in [0, 3]"),
    ({0: [-1]}, "layer 0: head -1 is not an original head index"),
    ({0: [1.0]}, "layer 0: head 1.0 is not an original head index"),
    ({0: [True]}, "layer 0: head True is not an original head index"),
    ({0: [1, 1]}, "layer 0: duplicate head indices [1]"),
    ({5: [0]}, "layer: 5 is not a layer index in [0, 1]"),
    ({}, "heads: the request is empty"),
    ({0: []}, "heads: the request is empty"),
    ({1: [0, 1, 2, 3]}, "layer 1: removing all 4 heads would empty the layer"),
    ({0: "01"}, "layer 0: expected a list of head indices"),
]


@pytest.mark.parametrize("request_, message", BAD_REQUESTS)
def test_bad_requests_raise_before_anything_changes(request_, message):
    model = tiny_model("gpt2")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        sentinel.prune_heads(model, request_)
    assert message in str(info.value)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert sentinel.head_layout(model).heads == (4, 4)


def test_uneven_gqa_request_is_refused_with_group_counts():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"layer 0: GQA groups of 2 query heads would keep \[1, 2\]"):
        sentinel.prune_heads(model, {1: [1, 3], 0: [0]})
    assert sentinel.head_layout(model).heads == (4, 4)  # layer 1 was valid but nothing changed


def test_unadaptable_model_type_is_refused_in_one_line_listing_registered_ones():
    import transformers

    # Mamba has no attention at all: neither a registered adapter nor the fallback can prune it.
    model = transformers.MambaModel(transformers.MambaConfig(hidden_size=16, num_hidden_layers=1, state_size=4,
                                                             vocab_size=50))
    with pytest.raises(ValueError, match=r"^model_type: 'mamba' has no registered adapter and the generic fallback found "
                                         r"no attention to adapt \(.*\); registered: .*gpt2.*llama[^\n]*$"):
        sentinel.prune_heads(model, {0: [0]})
    with pytest.raises(ValueError, match="mamba"):
        sentinel.head_layout(model)
