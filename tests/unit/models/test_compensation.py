"""Bias compensation (FLAP): a removed head's calibration mean output, read through the output projection, moves
into that projection's bias, so the layer's mean output over the calibration tokens is unchanged."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sentinel
from sentinel.models.layout import output_projections
from tests.tiny_models import CONFIGS, GQA, outputs, padded_batch, tiny_model
from tests.unit.models.test_t5 import REQUEST as T5_REQUEST, inputs as t5_inputs, t5

MODEL_TYPES = sorted(CONFIGS)


def calibration() -> list[dict[str, torch.Tensor]]:
    return [padded_batch(seed=1), padded_batch(seed=2, batch=2, length=10)]


def layer_request(model_type: str, layer: int) -> dict[int, list[int]]:
    return {layer: [0, 1]} if model_type in GQA else {layer: [0, 2]}  # GQA: one whole KV group


def mean_projection_output(model: nn.Module, layer: int, batches) -> torch.Tensor:
    """The mean over the non-padding tokens of `batches` of layer `layer`'s output projection output (float64)."""
    total, count, keep = 0, 0, []

    def hook(module, args, output):
        nonlocal total
        total = total + output.detach().double()[keep[0]].sum(0)

    handle = output_projections(model)[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            for batch in batches:
                keep[:] = [batch["attention_mask"].bool()]
                count += int(keep[0].sum())
                model(**batch)
    finally:
        handle.remove()
    return total / count


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("layer", [0, 1])
def test_compensated_layer_keeps_its_mean_output_on_the_calibration_tokens(model_type, layer):
    batches = calibration()
    dense = tiny_model(model_type)
    expected = mean_projection_output(dense, layer, batches)
    plain = sentinel.prune_heads(tiny_model(model_type), layer_request(model_type, layer))
    compensated = sentinel.prune_heads(tiny_model(model_type), layer_request(model_type, layer), compensate=batches)
    assert (mean_projection_output(compensated, layer, batches) - expected).abs().max() <= 1e-5
    assert (mean_projection_output(plain, layer, batches) - expected).abs().max() > 1e-4  # compensation did something


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_masked_with_compensation_equals_pruned_with_compensation(model_type):
    batches, batch = calibration(), padded_batch()
    request = {0: [0, 1], 1: [1, 3]} if model_type in GQA else {0: [0, 2], 1: [3]}
    model = tiny_model(model_type)
    with sentinel.mask_heads(model, request, compensate=batches):
        masked = outputs(model, batch)
    with sentinel.mask_heads(model, request):
        uncompensated = outputs(model, batch)
    sentinel.prune_heads(model, request, compensate=batches)
    assert (masked - outputs(model, batch)).abs().max().item() <= 1e-4
    assert (masked - uncompensated).abs().max().item() > 1e-3


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gpt_neox", "bert"])
def test_save_load_keeps_the_compensated_bias(model_type, tmp_path):
    batch = padded_batch()
    model = sentinel.prune_heads(tiny_model(model_type), layer_request(model_type, 1), compensate=calibration())
    expected = outputs(model, batch)
    sentinel.save_pruned(model, tmp_path / "pruned")
    loaded = sentinel.load_pruned(tmp_path / "pruned")
    assert torch.equal(outputs(loaded, batch), expected)
    created = model_type == "llama"  # Llama's o_proj has no bias: compensation created layer 1's
    assert [o.bias is not None for o in output_projections(loaded)] == [not created, True]


def test_t5_is_refused_in_one_line():
    with pytest.raises(ValueError, match="^compensate: t5 is an encoder-decoder"):
        sentinel.prune_heads(t5(), T5_REQUEST, compensate=[t5_inputs()])


class OpaqueProjection(nn.Module):
    """An output projection that is not nn.Linear / Conv1D: nothing to put a bias in."""

    def __init__(self, inner: nn.Linear) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_an_output_projection_that_cannot_take_a_bias_is_refused_before_anything_changes():
    model = tiny_model("llama")
    block = model.model.layers[1].self_attn
    block.o_proj = OpaqueProjection(block.o_proj)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^compensate: layer 1's output projection is a OpaqueProjection, which cannot"):
        sentinel.prune_heads(model, {0: [0, 1]}, compensate=calibration())
    assert sentinel.head_layout(model).heads == (4, 4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_calibration_without_tokens_is_refused():
    empty = {"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.zeros(1, 4, dtype=torch.long)}
    with pytest.raises(ValueError, match="^compensate: the calibration batches hold no non-padding token"):
        sentinel.prune_heads(tiny_model("gpt2"), {0: [0]}, compensate=[empty])


@pytest.mark.parametrize("value", ["1", 1, [7], ["1"]])
def test_a_hostile_output_bias_list_in_the_sidecar_is_refused_in_one_line(tmp_path, value):
    import json

    model = sentinel.prune_heads(tiny_model("llama"), layer_request("llama", 1), compensate=calibration())
    sentinel.save_pruned(model, tmp_path / "pruned")
    sidecar = tmp_path / "pruned" / "sentinel_heads.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "output_bias_added": value}))
    with pytest.raises(ValueError, match="output_bias_added"):
        sentinel.load_pruned(tmp_path / "pruned")
