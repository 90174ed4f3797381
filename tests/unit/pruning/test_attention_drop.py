"""attention_drop (He et al. 2024) and whole attention sublayers removed: the score finds a sublayer planted to do
nothing, selection takes whole layers, and a removed sublayer is equal to its masked one, generates with the
KV cache, saves, loads and counts no cache."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import sentinel
from sentinel.contract import SpecError
from sentinel.eval.generation import kv_cache_bytes_per_token, measured_kv_cache_bytes_per_token
from sentinel.models.loading import load_model
from sentinel.pipeline import DataSpec, LocalShared, TrialSpec, run_trial
from sentinel.pruning import STRATEGIES, score_heads, select_heads


@pytest.fixture(scope="module")
def llama():
    return load_model("sentinel/tiny-llama")


def calibration(tokenizer) -> list[dict]:
    ids = torch.tensor([tokenizer("The river rose through the night and the town woke to water in every street, "
                                  "and the bells rang from the hill until noon.")["input_ids"]])
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]


def test_a_sublayer_that_adds_nothing_scores_lowest_and_is_taken_whole(llama):
    model, tokenizer = copy.deepcopy(llama[0]), llama[1]
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()  # layer 2's attention adds nothing: 1 - cos = 0
    scores = score_heads("attention_drop", model, calibration(tokenizer))
    assert torch.equal(score_heads("attention_drop", model, calibration(tokenizer), seed=1).scores, scores.scores)
    assert not STRATEGIES.get("attention_drop").depends_on_seed(model)  # one scoring serves every seed
    turns = scores.meta["sublayer_turn"]
    assert math.isinf(turns[0]) and turns[2] == pytest.approx(0, abs=1e-9) and min(turns[1], turns[3]) > 1e-4
    assert scores.group_sizes == (8, 8, 8, 8)  # the unit select_heads takes whole: a layer
    selection = select_heads(scores, 0.25, min_heads_per_layer=0)  # 8 of 32 heads: one layer
    assert selection.heads == {2: list(range(8))}


def test_a_removed_sublayer_equals_its_masked_one_generates_saves_and_loads(llama, tmp_path):
    model, tokenizer = copy.deepcopy(llama[0]), llama[1]
    ids = calibration(tokenizer)[0]["input_ids"]
    request = {2: list(range(8)), 3: [0, 1]}
    with sentinel.mask_heads(model, request), torch.inference_mode():
        masked = model(ids).logits
    sentinel.prune_heads(model, request)
    layout = sentinel.head_layout(model)
    assert (layout.heads, layout.kv_heads) == ((8, 8, 0, 6), (4, 4, 0, 3))
    assert model.model.layers[2].self_attn.q_proj.weight.numel() == 0  # no projections left to compute
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, masked)
        generated = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 6
    assert measured_kv_cache_bytes_per_token(model) == kv_cache_bytes_per_token(model) == 2 * (4 + 4 + 3) * 16 * 4
    sentinel.save_pruned(model, tmp_path / "dropped", tokenizer)
    back = sentinel.load_pruned(tmp_path / "dropped")
    with torch.inference_mode():
        assert torch.equal(back(ids).logits, model(ids).logits)
    assert sentinel.head_layout(back).heads == (8, 8, 0, 6)


def test_layer_zero_and_families_that_cannot_lose_a_sublayer_are_refused(llama):
    with pytest.raises(ValueError, match="layer 0: its attention cannot be removed whole"):
        sentinel.prune_heads(copy.deepcopy(llama[0]), {0: list(range(8))})
    gpt2, _ = load_model("sentinel/tiny-gpt2")
    with pytest.raises(ValueError, match="layer 1: removing all 8 heads would empty the layer"):
        sentinel.prune_heads(gpt2, {1: list(range(8))})
    with pytest.raises(SpecError, match="strategy: 'attention_drop' removes whole attention sublayers, which only "
                                        "llama, mistral, qwen2 models can lose; 'sentinel/tiny-gpt2' is a 'gpt2'"):
        TrialSpec(model="sentinel/tiny-gpt2", strategy="attention_drop", level=0.25)


def test_an_attention_drop_trial_removes_whole_layers_and_says_where_it_loads():
    data = DataSpec(seq_len=32, stride=32, batch_size=8, score_batches=1, eval_tokens=256, whole_split_reference=False)
    result = run_trial(TrialSpec(model="sentinel/tiny-llama", strategy="attention_drop", level=0.5, data=data,
                                 finetune=None, measure_speed=False), LocalShared())
    assert result.status == "ok", result.error
    layers = {layer for layer, _ in result.pruned_heads}
    assert result.heads_pruned == 16 and len(layers) == 2 and 0 not in layers  # two whole layers, never layer 0
    assert result.servable_by == ["llama.cpp"] and result.pruned > result.dense
