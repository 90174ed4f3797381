"""FLAP and Wanda-sp against the formulas applied by hand: the output projection's inputs collected with our own
hooks on modules spelled out per family (tests/unit/pruning/brute.py), weights sliced by hand; and the
planted-useless-heads test the other strategies pass."""
from __future__ import annotations

import pytest
import torch

from sentinel.pruning import STRATEGIES, score_heads
from tests.tiny_models import padded_batch, tiny_model
from tests.unit.pruning import brute
from tests.unit.pruning.test_planted_heads import USELESS, data, lowest, make_useless


def collected_inputs(model, model_type: str, batches) -> list[torch.Tensor]:
    """Per layer, [tokens, heads * d]: the output projection's input at every non-padding token."""
    layers = model.config.num_hidden_layers
    seen: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    mask: list[torch.Tensor] = []  # the current batch's non-padding positions

    def hook(layer: int):
        return lambda module, args: seen[layer].append(args[0].detach().double()[mask[0]])

    handles = [brute.o_proj(model, model_type, l).register_forward_pre_hook(hook(l)) for l in range(layers)]
    try:
        with torch.no_grad():
            for batch in batches:
                mask[:] = [batch["attention_mask"].bool()]
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(chunks) for chunks in seen]


def o_columns(model, model_type: str, layer: int, heads: int) -> torch.Tensor:
    """W_O as [out, heads * d] (Conv1D holds [in, out])."""
    o = brute.o_proj(model, model_type, layer)
    w = o.weight.detach().double()
    return w.T if model_type == "gpt2" else w


@pytest.mark.parametrize("model_type", ["gpt2", "bert", "llama"])
def test_wanda_sp_and_flap_equal_the_formulas_applied_by_hand(model_type):
    model = tiny_model(model_type)
    batches = [padded_batch(seed, batch=3, length=12) for seed in range(2)]
    heads = model.config.num_attention_heads
    inputs = collected_inputs(model, model_type, batches)
    wanda = score_heads("wanda_sp", model, batches).scores
    flap = score_heads("flap", model, batches, standardize=False).scores
    flap_std = score_heads("flap", model, batches).scores
    for layer, x in enumerate(inputs):
        w = o_columns(model, model_type, layer, heads)  # [out, channels]
        d = w.shape[1] // heads
        rms = x.pow(2).mean(0).sqrt()
        variance = x.var(0, unbiased=False)
        by_hand_wanda = (w.abs().mean(0) * rms).view(heads, d).sum(-1)
        by_hand_flap = (variance * w.pow(2).sum(0)).view(heads, d).sum(-1)
        torch.testing.assert_close(wanda[layer].double(), by_hand_wanda, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(flap[layer].double(), by_hand_flap, rtol=1e-5, atol=1e-9)
        standardised = (by_hand_flap - by_hand_flap.mean()) / by_hand_flap.std()
        torch.testing.assert_close(flap_std[layer].double(), standardised, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", sorted(USELESS))
@pytest.mark.parametrize("strategy, options", [("wanda_sp", {}), ("flap", {"standardize": False})])
def test_useless_heads_rank_lowest(strategy, options, model_type):
    model = make_useless(tiny_model(model_type), USELESS[model_type])
    scores = score_heads(strategy, model, data(), seed=0, **options).scores
    assert lowest(scores, USELESS[model_type]), scores


@pytest.mark.parametrize("model_type", sorted(USELESS))
def test_standardised_flap_ranks_useless_heads_lowest_within_their_layer(model_type):
    model = make_useless(tiny_model(model_type), USELESS[model_type])
    scores = score_heads("flap", model, data()).scores  # standardised per layer: layers compete on z-scores
    for layer, heads in USELESS[model_type].items():
        assert lowest(scores[layer: layer + 1], {0: heads}), scores


def test_registered_with_their_options_and_refuse_others():
    assert STRATEGIES.get("flap").defaults == {"standardize": True} and STRATEGIES.get("flap").uses_data
    with pytest.raises(ValueError, match=r"^options.alpha: not an option of strategy 'wanda_sp'"):
        score_heads("wanda_sp", tiny_model("gpt2"), data(), alpha=1)
    with pytest.raises(ValueError, match=r"^options.standardize: 'yes' is not true or false"):
        score_heads("flap", tiny_model("gpt2"), data(), standardize="yes")
