"""LLM-Pruner's Taylor importance against the formula applied by hand: gradients of the loss taken with respect to
modules spelled out per family (tests/unit/pruning/brute.py), each head's rows and columns sliced by hand; and the
planted-useless-heads test the other strategies pass."""
from __future__ import annotations

import pytest
import torch

from sentinel.pruning import STRATEGIES, score_heads
from tests.tiny_models import CAUSAL, padded_batch, tiny_model
from tests.unit.pruning import brute
from tests.unit.pruning.test_planted_heads import USELESS, data, lowest, make_useless


def loss(model, model_type: str, batch, generator: torch.Generator) -> torch.Tensor:
    if model_type in CAUSAL:
        return model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
    hidden = model(**batch).last_hidden_state  # the encoder proxy: <mean-pooled embedding, seeded direction>
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return (pooled * torch.randn(pooled.shape, generator=generator)).sum(-1).mean()


def head_terms(model, model_type: str, layer: int, grads: dict, head: int) -> list[tuple[torch.Tensor, float]]:
    """(g * w over one slice of the head, weight of that slice in the head's score), slices cut by hand."""
    config = model.config
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    d = config.hidden_size // heads
    group = heads // kv
    mods = brute.PATHS[model_type](model, layer)
    out = []

    def piece(module, rows: slice, dim: int, share: float, bias: bool) -> None:
        w = module.weight.detach().double()
        gw = (grads[module.weight] * w).narrow(dim, rows.start, rows.stop - rows.start)
        if bias and module.bias is not None:
            gb = (grads[module.bias] * module.bias.detach().double())[rows]
            gw = torch.cat([gw.flatten(), gb])
        out.append((gw, share))

    q_rows = slice(head * d, (head + 1) * d)
    kv_rows = slice(head // group * d, (head // group + 1) * d)
    if model_type == "gpt2":  # c_attn is Conv1D [in, 3E]: q | k | v columns; c_proj [E, out]: head rows
        c_attn, c_proj = mods
        width = heads * d
        for offset in (0, width, 2 * width):
            piece(c_attn, slice(offset + q_rows.start, offset + q_rows.stop), 1, 1.0, True)
        piece(c_proj, q_rows, 0, 1.0, False)
        return out
    q, k, v, o = mods
    piece(q, q_rows, 0, 1.0, True)
    piece(k, kv_rows, 0, 1.0 / group, True)
    piece(v, kv_rows, 0, 1.0 / group, True)
    piece(o, q_rows, 1, 1.0, False)
    return out


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "bert"])
def test_taylor_equals_the_formula_applied_by_hand(model_type):
    model = tiny_model(model_type)
    batches = [padded_batch(seed, batch=3, length=12) for seed in range(2)]
    element = score_heads("taylor", model, batches, seed=3).scores
    vector = score_heads("taylor", model, batches, seed=3, form="vector").scores
    layers = model.config.num_hidden_layers
    params = [p for l in range(layers) for m in brute.PATHS[model_type](model, l) for p in (m.weight, m.bias) if p is not None]
    grads = {p: torch.zeros_like(p, dtype=torch.float64) for p in params}
    generator = torch.Generator().manual_seed(3)
    for batch in batches:
        for p, g in zip(params, torch.autograd.grad(loss(model, model_type, batch, generator), params)):
            grads[p] += g.double() / len(batches)
    for layer in range(layers):
        for head in range(model.config.num_attention_heads):
            terms = head_terms(model, model_type, layer, grads, head)
            by_hand_element = sum(share * t.abs().sum() for t, share in terms)
            by_hand_vector = sum(share * t.sum().abs() for t, share in terms)
            torch.testing.assert_close(element[layer, head].double(), by_hand_element, rtol=1e-4, atol=1e-9)
            torch.testing.assert_close(vector[layer, head].double(), by_hand_vector, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("model_type", sorted(USELESS))
@pytest.mark.parametrize("form", ["element", "vector"])
def test_useless_heads_rank_lowest(form, model_type):
    model = make_useless(tiny_model(model_type), USELESS[model_type])
    scores = score_heads("taylor", model, data(), seed=0, form=form).scores
    assert lowest(scores, USELESS[model_type]), scores


def test_registered_with_its_options_and_refuses_others():
    taylor = STRATEGIES.get("taylor")
    assert taylor.defaults == {"form": "element"} and taylor.uses_data
    assert not taylor.depends_on_seed(tiny_model("llama")) and taylor.depends_on_seed(tiny_model("bert"))
    with pytest.raises(ValueError, match=r"^options.form: 'hessian' is not one of element, vector"):
        score_heads("taylor", tiny_model("gpt2"), data(), form="hessian")
    with pytest.raises(ValueError, match=r"^options.order: not an option of strategy 'taylor'"):
        score_heads("taylor", tiny_model("gpt2"), data(), order=2)


def test_parameters_keep_their_requires_grad_and_get_no_grad():
    model = tiny_model("llama")
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(False)
    score_heads("taylor", model, data())
    assert not model.model.layers[0].self_attn.q_proj.weight.requires_grad
    assert model.model.layers[1].self_attn.q_proj.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
