"""The drop-in for what transformers 5 removed, checked against transformers 4.57.6 itself.

tests/fixtures/v4/<family>/ were made once by scripts/make_v4_fixtures.py under transformers 4 (the script says
how to remake them): the dense weights, v4's outputs for `head_mask` and for two composed `prune_heads` calls
(original ids; the second names a head the first already removed), d(loss)/d(head_mask), and the folder v4's
`save_pretrained` wrote after pruning. Here, under transformers 5, the same weights go through sentinel's calls.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import sentinel
from sentinel.models import find_pruneable_heads_and_indices, load_pruned

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "v4"
FAMILIES = ("gpt2", "bert", "roberta", "distilbert")
ATOL = 1e-5


def fixture(family: str):
    folder = FIXTURES / family
    tensors = load_file(folder / "tensors.safetensors")
    meta = json.loads((folder / "meta.json").read_text())
    model = transformers.AutoModel.from_pretrained(folder / "dense", attn_implementation="eager").eval()
    batch = {"input_ids": tensors["input_ids"], "attention_mask": tensors["attention_mask"]}
    return folder, tensors, meta, model, batch


def hidden(model, batch) -> torch.Tensor:
    return model(**batch).last_hidden_state


def close(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> bool:
    keep = mask.bool()  # padded positions are not compared (they attend to nothing meaningful)
    return torch.allclose(a[keep], b[keep], atol=ATOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_weights_give_v4s_outputs(family):
    _, tensors, _, model, batch = fixture(family)
    with torch.no_grad():
        assert close(hidden(model, batch), tensors["dense"], batch["attention_mask"])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_float_head_mask_tensor_is_v4s_head_mask_with_its_gradient(family):
    _, tensors, _, model, batch = fixture(family)
    with torch.no_grad(), sentinel.mask_heads(model, tensors["head_mask"]):  # gates 0.25, 0.5, 0.75 too
        assert close(hidden(model, batch), tensors["masked"], batch["attention_mask"])
    gates = tensors["head_mask"].clone().requires_grad_(True)
    with sentinel.mask_heads(model, gates):
        hidden(model, batch).pow(2).mean().backward()
    assert torch.allclose(gates.grad, tensors["head_mask_grad"], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_composed_prune_heads_calls_port_line_by_line(family):
    _, tensors, meta, model, batch = fixture(family)
    first, second = ({int(k): v for k, v in call.items()} for call in meta["prune_calls"])
    sentinel.prune_heads(model, first)
    with pytest.warns(UserWarning, match="already pruned"):  # v4 warned and ignored it too
        sentinel.prune_heads(model, second)
    with torch.no_grad():
        assert close(hidden(model, batch), tensors["pruned"], batch["attention_mask"])
    assert sum(p.numel() for p in model.parameters()) == meta["params_pruned"]
    assert model.config.pruned_heads == {int(k): v for k, v in meta["config_pruned_heads"].items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_v4_saved_after_pruning_loads(family, tmp_path):
    folder, tensors, meta, _, batch = fixture(family)
    assert sentinel.models.is_pruned_checkpoint(folder / "pruned")  # so load_model routes it to load_pruned too
    model = load_pruned(folder / "pruned")
    with torch.no_grad():
        assert close(hidden(model, batch), tensors["pruned"], batch["attention_mask"])
    assert sum(p.numel() for p in model.parameters()) == meta["params_pruned"]
    # and what we save says config.pruned_heads in v4's format, so v4's from_pretrained rebuilds the same shapes
    sentinel.save_pruned(model, tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())["pruned_heads"]
    assert saved == meta["config_pruned_heads"]


def test_find_pruneable_heads_and_indices_keeps_v4s_contract():
    heads, index = find_pruneable_heads_and_indices([0, 2, 3], n_heads=3, head_size=2, already_pruned_heads={1})
    assert heads == {0, 2, 3}  # original ids still present, to prune now
    # the current layout holds original heads 0, 2, 3 at positions 0, 1, 2: nothing of them is kept
    assert index.tolist() == []
    heads, index = find_pruneable_heads_and_indices([2, 1], n_heads=3, head_size=2, already_pruned_heads={1})
    assert heads == {2} and index.tolist() == [0, 1, 4, 5]  # keeps positions 0 (original 0) and 2 (original 3)


PLAIN_LOAD = """
import sys, json, torch, transformers
out = {}
for name, folder in json.loads(sys.argv[1]).items():
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        batch = torch.load(folder + "/batch.pt")
        with torch.no_grad():
            out[name] = model(**batch).logits.mul(batch["attention_mask"][..., None]).tolist()
    except Exception as exc:
        out[name] = type(exc).__name__
out["sentinel imported"] = any(m.split(".")[0] == "sentinel" for m in sys.modules)
print(json.dumps(out))
"""


def test_uniform_gqa_prunes_load_in_plain_transformers_and_the_rest_are_refused_not_misread(tmp_path):
    """Where every layer keeps the same heads (Llama, Mistral, Qwen2: explicit head_dim), save_pruned writes a config
    that plain transformers 5 builds the pruned model from, in a process that never imports sentinel; elsewhere
    plain transformers refuses the folder (size mismatch) instead of loading a wrong model. Both reload in sentinel."""
    import subprocess
    import sys

    from tests.tiny_models import outputs, padded_batch, tiny_model

    cases = {"llama": ("llama", {0: [0, 1], 1: [2, 3]}), "mistral": ("mistral", {0: [0, 2], 1: [1, 3]}),
             "qwen2": ("qwen2", {0: [2, 3], 1: [0, 1]}), "llama-uneven": ("llama", {0: [0, 1]}),
             "gpt2": ("gpt2", {0: [1], 1: [2]})}
    batch, expected, folders = padded_batch(), {}, {}
    for name, (model_type, request) in cases.items():
        model = sentinel.prune_heads(tiny_model(model_type), request)
        folders[name] = str(sentinel.save_pruned(model, tmp_path / name))
        torch.save(batch, tmp_path / name / "batch.pt")
        expected[name] = outputs(model, batch)
        assert torch.equal(outputs(load_pruned(tmp_path / name), batch), expected[name])
    run = subprocess.run([sys.executable, "-c", PLAIN_LOAD, json.dumps(folders)], capture_output=True, text=True,
                         timeout=300)
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got.pop("sentinel imported") is False
    for name in ("llama", "mistral", "qwen2"):
        assert torch.allclose(torch.tensor(got[name]), expected[name], atol=1e-6), name
    assert got["llama-uneven"] == got["gpt2"] == "RuntimeError"


def test_t5_head_masks_of_all_three_stacks_are_one_gate_tensor():
    """v4's head_mask, decoder_head_mask and cross_attn_head_mask are rows of one [3 x layers, heads] tensor here
    (encoder self-attention, decoder self-attention, cross-attention), outputs and gradients included."""
    folder = FIXTURES / "t5"
    tensors = load_file(folder / "tensors.safetensors")
    model = transformers.T5Model.from_pretrained(folder / "dense", attn_implementation="eager").eval()
    batch = {k: tensors[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")}
    names = ("head_mask", "decoder_head_mask", "cross_attn_head_mask")
    with torch.no_grad():
        assert torch.allclose(hidden(model, batch), tensors["dense"], atol=ATOL)
        with sentinel.mask_heads(model, torch.cat([tensors[n] for n in names])):
            assert torch.allclose(hidden(model, batch), tensors["masked"], atol=ATOL)
    gates = torch.cat([tensors[n] for n in names]).requires_grad_(True)
    with sentinel.mask_heads(model, gates):
        hidden(model, batch).pow(2).mean().backward()
    expected = torch.cat([tensors[f"{n}_grad"] for n in names])
    assert torch.allclose(gates.grad, expected, rtol=1e-4, atol=1e-7)
