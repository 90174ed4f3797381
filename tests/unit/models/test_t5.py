"""T5: heads of the encoder self-attention, decoder self-attention and cross-attention stacks (indexed in that
order), with layer 0's relative position bias shared by every layer of a stack."""
from __future__ import annotations

import copy

import pytest
import torch
import transformers

import sentinel
from sentinel.models import head_layout
from tests.tiny_models import VOCAB

# 2 layers per stack: layers 0-1 encoder self, 2-3 decoder self, 4-5 cross; every stack's layer 0 loses heads
REQUEST = {0: [0, 2], 1: [3], 2: [1], 3: [0, 1, 2], 4: [2], 5: [0, 3]}


def t5(attn: str = "eager") -> transformers.T5ForConditionalGeneration:
    config = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, decoder_start_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration._from_config(config, attn_implementation=attn).eval()


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids, decoder = torch.randint(1, VOCAB, (2, 10), generator=g), torch.randint(1, VOCAB, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder}


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_masked_equals_pruned_in_all_three_stacks(attn):
    model, batch = t5(attn), inputs()
    assert head_layout(model).heads == (4,) * 6
    with sentinel.mask_heads(model, REQUEST):
        masked = logits(model, batch)
    dense = logits(model, batch)
    pruned = sentinel.prune_heads(copy.deepcopy(model), REQUEST)
    assert head_layout(pruned).heads == (2, 3, 3, 1, 3, 2)
    assert (logits(pruned, batch) - masked).abs().max() <= 1e-5 < (masked - dense).abs().max()
    # each stack mattered on its own: masking only its heads moves the output
    for stack in ([0, 1], [2, 3], [4, 5]):
        with sentinel.mask_heads(model, {l: REQUEST[l] for l in stack}):
            assert (logits(model, batch) - dense).abs().max() > 1e-3


def test_composed_prunes_and_greedy_generation_with_cache():
    model, batch = t5(), inputs()
    pruned = sentinel.prune_heads(sentinel.prune_heads(copy.deepcopy(model), REQUEST), {1: [0], 4: [3]})
    union = {**REQUEST, 1: [0, 3], 4: [2, 3]}
    with sentinel.mask_heads(model, union):
        masked = logits(model, batch)
        expected = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  max_new_tokens=6, do_sample=False)
    assert (logits(pruned, batch) - masked).abs().max() <= 1e-5
    generated = pruned.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=6, do_sample=False)
    assert torch.equal(generated, expected)


def test_position_bias_follows_each_copy():
    """The bias hooks find their stack's bias owner through the module, so a deepcopy uses its own embedding."""
    pruned, batch = sentinel.prune_heads(t5(), REQUEST), inputs()
    before = logits(pruned, batch)
    twin = copy.deepcopy(pruned)
    with torch.no_grad():
        twin.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.mul_(3.0)
    assert torch.equal(logits(pruned, batch), before) and not torch.allclose(logits(twin, batch), before)


def test_save_load_round_trip(tmp_path):
    pruned, batch = sentinel.prune_heads(t5(), REQUEST), inputs()
    sentinel.save_pruned(pruned, tmp_path / "t5")
    loaded = sentinel.load_pruned(tmp_path / "t5")
    assert head_layout(loaded) == head_layout(pruned)
    torch.testing.assert_close(logits(loaded, batch), logits(pruned, batch), atol=1e-5, rtol=1e-5)  # sdpa vs eager
    assert loaded.config.pruned_heads == {l: h for l, h in REQUEST.items()}
