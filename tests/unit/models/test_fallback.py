"""The generic fallback on families with no registered adapter: Phi (and Gemma, with GQA) are adapted from
their module structure and pass masked == pruned; BLOOM (q, k, v interleaved per head in one fused projection,
ALiBi biases per head) is refused in one line, because removal on the found layout does not check out. (GPT-NeoX,
the same fused layout without ALiBi, has a registered adapter.)"""
from __future__ import annotations

import pytest
import torch
import transformers

import sentinel
from sentinel.models import get_adapter, head_layout, supported_model_types
from sentinel.pruning import score_heads
from sentinel.trial import DataSpec, SpecError, TrialSpec
from tests.tiny_models import VOCAB, outputs, padded_batch

SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             max_position_embeddings=64)
FAMILIES = {
    "phi": lambda: transformers.PhiConfig(**SMALL),
    "gemma": lambda: transformers.GemmaConfig(**SMALL, num_key_value_heads=2, head_dim=8),
}


def model_of(config) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fallback_family_masked_equals_pruned(family):
    assert family not in supported_model_types()
    model, batch = model_of(FAMILIES[family]()), padded_batch()
    adapter = get_adapter(model)
    assert adapter.name == f"fallback:{family}" and adapter.o.startswith("self_attn.")
    request = {0: [0, 1], 2: [2, 3]} if adapter.gqa else {0: [0, 2], 2: [3]}
    with sentinel.mask_heads(model, request):
        masked = outputs(model, batch)
    dense = outputs(model, batch)
    before = sum(p.numel() for p in model.parameters())
    sentinel.prune_heads(model, request)
    assert (outputs(model, batch) - masked).abs().max() <= 1e-4 < (masked - dense).abs().max()
    assert sum(p.numel() for p in model.parameters()) < before
    assert head_layout(model).heads == ((2, 4, 2) if adapter.gqa else (2, 4, 3))


def test_fallback_family_scores_and_round_trips(tmp_path):
    model, batch = model_of(FAMILIES["phi"]()), padded_batch()
    scores = score_heads("gradient", model, [batch]).scores
    assert scores.shape == (3, 4) and torch.isfinite(scores).all()
    sentinel.prune_heads(model, {1: [0]})
    sentinel.save_pruned(model, tmp_path / "pruned")
    loaded = sentinel.load_pruned(tmp_path / "pruned")
    assert torch.equal(outputs(loaded, batch), outputs(model, batch))


BLOOM = dict(vocab_size=VOCAB, hidden_size=32, n_layer=3, n_head=4)


def test_interleaved_fused_qkv_with_alibi_is_refused_with_what_was_found():
    model = model_of(transformers.BloomConfig(**BLOOM))
    with pytest.raises(ValueError) as err:
        head_layout(model)
    message = str(err.value)
    assert "\n" not in message and message.startswith("model_type: 'bloom' has no registered adapter; the generic "
                                                      "fallback found layers=h, q/k/v=self_attention.query_key_value")
    assert "register an adapter" in message and "registered: " in message and "gpt_neox" in message


def test_spec_checks_a_local_folder_through_the_fallback(tmp_path):
    model_of(FAMILIES["phi"]()).save_pretrained(tmp_path / "phi")
    model_of(transformers.BloomConfig(**BLOOM)).save_pretrained(tmp_path / "bloom")
    TrialSpec(model=str(tmp_path / "phi"), strategy="magnitude", level=0.25, data=DataSpec(seq_len=32))  # accepted
    with pytest.raises(SpecError, match=r"^model: model_type: 'bloom' has no registered adapter; the generic fallback"):
        TrialSpec(model=str(tmp_path / "bloom"), strategy="magnitude", level=0.25)
