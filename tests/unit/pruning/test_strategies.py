"""Each strategy against a brute-force reference on tiny real models."""
from __future__ import annotations

import pytest
import torch

from sentinel.models import head_layout
from sentinel.pruning import STRATEGIES, score_heads
from tests.tiny_models import CAUSAL, CONFIGS, GQA, padded_batch, tiny_model
from tests.unit.pruning import brute


def batches(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Two right-padded batches of different shapes, plus one left-padded batch."""
    left = padded_batch(seed + 2, batch=2, length=8)
    left = {k: v.flip(-1) for k, v in left.items()}
    return [padded_batch(seed), padded_batch(seed + 1, batch=2, length=9), left]


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "bert", "distilbert", "opt"])
@pytest.mark.parametrize("normalize", [False, True])
def test_entropy_equals_brute_force_from_output_attentions(model_type, normalize):
    data = batches()
    eager = tiny_model(model_type, "eager")
    expected = brute.mean_entropy(eager, data, causal=model_type in CAUSAL, normalize=normalize)
    model = tiny_model(model_type, "sdpa")  # same weights (same seed); the strategy switches to eager itself
    result = score_heads("entropy", model, data, normalize=normalize)
    assert result.scores.dtype == torch.float32 and result.scores.device.type == "cpu"
    torch.testing.assert_close(-result.scores, expected, atol=1e-5, rtol=0)


def test_entropy_normalisation_changes_causal_scores():
    data = batches()
    model = tiny_model("gpt2")
    raw = score_heads("entropy", model, data).scores
    normalized = score_heads("entropy", model, data, normalize=True).scores
    assert (-normalized <= 1 + 1e-6).all() and not torch.allclose(raw, normalized)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_magnitude_equals_norms_of_hand_sliced_weights(model_type):
    model = tiny_model(model_type)
    layout = head_layout(model)
    expected = torch.stack(
        [brute.head_norms(model, model_type, l, layout.heads[l], layout.kv_heads[l]) for l in range(layout.num_layers)]
    )
    torch.testing.assert_close(score_heads("magnitude", model, batches()).scores, expected.float(), atol=1e-5, rtol=1e-6)


def test_magnitude_charges_gqa_heads_their_groups_full_kv_norm():
    model = tiny_model("llama")
    with torch.no_grad():  # zero Q and O: what is left is the K/V term, equal within each group of 2
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.o_proj.weight.zero_()
    scores = score_heads("magnitude", model, batches()).scores
    k, v = model.model.layers[0].self_attn.k_proj.weight, model.model.layers[0].self_attn.v_proj.weight
    group0 = float(torch.linalg.norm(k[:8].detach()) + torch.linalg.norm(v[:8].detach()))  # head_dim 8, KV head 0
    torch.testing.assert_close(scores[0, :2], torch.tensor([group0, group0]))


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "bert"])
def test_gradient_equals_autograd_through_hand_made_gates(model_type):
    data = batches()
    model = tiny_model(model_type)
    expected = brute.gate_gradients(model, model_type, data, lm=model_type in CAUSAL, seed=3)
    result = score_heads("gradient", model, data, seed=3)
    torch.testing.assert_close(result.scores, expected, rtol=1e-4, atol=1e-7)
    assert result.meta["backward_passes"] == len(data)


def test_gradient_per_layer_normalisation_gives_unit_rows():
    scores = score_heads("gradient", tiny_model("gpt2"), batches(), normalize_per_layer=True).scores
    torch.testing.assert_close(scores.norm(dim=1), torch.ones(scores.shape[0]))


def test_gradient_leaves_no_parameter_gradients_and_restores_requires_grad():
    model = tiny_model("llama")
    model.model.embed_tokens.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    score_heads("gradient", model, batches())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_random_is_reproducible_per_seed_and_differs_across_seeds():
    model = tiny_model("gpt2")
    state = torch.get_rng_state()
    a, b = score_heads("random", model, batches(), seed=7), score_heads("random", model, batches(), seed=7)
    c = score_heads("random", model, batches(), seed=8)
    assert torch.equal(a.scores, b.scores) and not torch.equal(a.scores, c.scores)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was never drawn from


def test_hybrid_is_the_average_of_normalized_ranks():
    model = tiny_model("gpt2")
    data = batches()
    entropy = score_heads("entropy", model, data).scores.flatten()
    magnitude = score_heads("magnitude", model, data).scores.flatten()
    rank = lambda s: s.argsort().argsort().float() / (len(s) - 1)  # no ties in random-init scores
    expected = 0.25 * rank(entropy) + 0.75 * rank(magnitude)
    torch.testing.assert_close(score_heads("hybrid", model, data, alpha=0.25).scores.flatten(), expected)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES.names()))
@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_scoring_leaves_the_model_exactly_as_it_was(strategy, model_type):
    model = tiny_model(model_type).train()  # train mode too: scoring must run in eval and restore it
    probe = padded_batch(5)
    model.eval()
    with torch.no_grad():
        before = model(**probe).logits
    model.train()
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    n_hooks, impl = hooks(), model.config._attn_implementation
    if STRATEGIES.get(strategy).unit == "layer" and model_type == "gpt2":  # GPT-2's attention cannot go whole
        with pytest.raises(ValueError, match="removes whole attention sublayers"):
            score_heads(strategy, model, batches())
    else:
        score_heads(strategy, model, batches())
    assert model.training and all(m.training for m in model.modules())
    assert model.config._attn_implementation == impl == "sdpa"
    assert hooks() == n_hooks
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**probe).logits, before)


def test_attn_implementation_is_restored_when_scoring_fails():
    model = tiny_model("gpt2")
    bad = [{"input_ids": torch.full((1, 4), 10_000), "attention_mask": torch.ones(1, 4, dtype=torch.long)}]
    with pytest.raises(IndexError):  # token id outside the vocabulary: fails inside the forward pass
        score_heads("entropy", model, bad)
    assert model.config._attn_implementation == "sdpa"
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_gqa_models_score_every_query_head():
    for model_type in sorted(GQA):
        assert score_heads("entropy", tiny_model(model_type), batches()).scores.shape == (2, 4)


def test_per_layer_normalisation_counts_only_the_heads_still_present():
    from sentinel.pruning.gradient import l2_normalized

    importance = [torch.tensor([3.0, 4.0, 12.0]), torch.tensor([1.0, 1.0, 1.0])]
    plain = l2_normalized(importance)
    assert plain[0].tolist() == pytest.approx([3 / 13, 4 / 13, 12 / 13])
    present = l2_normalized(importance, {0: [2]})  # head 2 of layer 0 is gone: the norm is over heads 0 and 1
    assert present[0][:2].tolist() == pytest.approx([3 / 5, 4 / 5])
    assert present[1].tolist() == pytest.approx(plain[1].tolist())
