"""Makes the transformers 4.x reference fixtures that tests/unit/models/test_v4_compat.py compares against.

Run it with transformers 4.x (the last release with `head_mask` and `prune_heads`), not with the project's own
environment; the tests only read what it writes, so they need neither this script nor transformers 4:

    python3 -m venv /tmp/v4 && /tmp/v4/bin/pip install torch==2.13.0 "transformers==4.57.6"
    /tmp/v4/bin/python scripts/make_v4_fixtures.py            # writes tests/fixtures/v4/<family>/

Per family (GPT-2, BERT, RoBERTa, DistilBERT; random weights from a small config, seed 0, eager attention):
    dense/        save_pretrained of the dense base model
    pruned/       save_pretrained after prune_heads({0: [1], 1: [0, 2]}) then prune_heads({0: [2, 1]}):
                  v4 takes ORIGINAL head ids and ignores (with a warning) head 1 of layer 0, already pruned
    tensors.safetensors
                  input_ids, attention_mask (second row padded), head_mask [layers, heads] (values in [0, 1]),
                  dense / masked / pruned last_hidden_state, and head_mask_grad: d(mean(hidden^2))/d(head_mask)
    meta.json     the prune calls, parameter counts, config.pruned_heads, library versions
T5 (t5/): v4's T5 prune_heads was broken (transformers issue #19625), so only dense/ and the three head masks:
    tensors.safetensors
                  input_ids, attention_mask, decoder_input_ids, head_mask / decoder_head_mask / cross_attn_head_mask
                  [layers, heads], dense / masked decoder last_hidden_state, and the three masks' gradients of
                  mean(hidden^2) (our layer order: encoder self, decoder self, cross: their concatenation)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "v4"
SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64)
CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "bert": lambda: transformers.BertConfig(**SMALL),
    "roberta": lambda: transformers.RobertaConfig(**{**SMALL, "max_position_embeddings": 66}, pad_token_id=1),
    "distilbert": lambda: transformers.DistilBertConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                        max_position_embeddings=64),
}
FIRST, SECOND = {0: [1], 1: [0, 2]}, {0: [2, 1]}  # original ids; 0:1 is already gone at the second call
HEAD_MASK = torch.tensor([[1.0, 0.0, 0.5, 1.0], [0.25, 1.0, 0.0, 0.75]])


def hidden(model, batch, head_mask=None) -> torch.Tensor:
    return model(**batch, head_mask=head_mask).last_hidden_state


def make(family: str) -> None:
    if not transformers.__version__.startswith("4."):
        sys.exit(f"transformers {transformers.__version__}: run this with transformers 4.x (see the docstring)")
    torch.manual_seed(0)
    config = CONFIGS[family]()
    config._attn_implementation = "eager"  # head_mask is applied by the eager attention path
    model = transformers.AutoModel.from_config(config, attn_implementation="eager").eval()
    folder = OUT / family
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder / "dense", safe_serialization=True)

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, config.vocab_size, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        dense = hidden(model, batch)
        masked = hidden(model, batch, HEAD_MASK)
    gates = HEAD_MASK.clone().requires_grad_(True)
    hidden(model, batch, gates).pow(2).mean().backward()

    params_dense = sum(p.numel() for p in model.parameters())
    model.prune_heads(FIRST)
    model.prune_heads(SECOND)
    with torch.no_grad():
        pruned = hidden(model, batch)
    model.save_pretrained(folder / "pruned", safe_serialization=True)
    save_file({"input_ids": ids, "attention_mask": mask, "head_mask": HEAD_MASK, "dense": dense, "masked": masked,
               "head_mask_grad": gates.grad, "pruned": pruned}, folder / "tensors.safetensors")
    meta = {"family": family, "prune_calls": [FIRST, SECOND], "config_pruned_heads": model.config.pruned_heads,
            "params_dense": params_dense, "params_pruned": sum(p.numel() for p in model.parameters()),
            "transformers": transformers.__version__, "torch": torch.__version__}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=list))
    print(family, meta["config_pruned_heads"], meta["params_dense"], "->", meta["params_pruned"])


def make_t5() -> None:
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, decoder_start_token_id=0, pad_token_id=0)
    config._attn_implementation = "eager"
    model = transformers.T5Model(config).eval()
    folder = OUT / "t5"
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder / "dense", safe_serialization=True)
    generator = torch.Generator().manual_seed(1)
    ids, decoder = torch.randint(1, 96, (2, 10), generator=generator), torch.randint(1, 96, (2, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    masks = {"head_mask": HEAD_MASK, "decoder_head_mask": HEAD_MASK.flip(1), "cross_attn_head_mask": HEAD_MASK.flip(0)}
    run = lambda **m: model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder, **m).last_hidden_state
    with torch.no_grad():
        dense, masked = run(), run(**masks)
    gates = {k: v.clone().requires_grad_(True) for k, v in masks.items()}
    run(**gates).pow(2).mean().backward()
    save_file({"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder, "dense": dense, "masked": masked,
               **masks, **{f"{k}_grad": v.grad for k, v in gates.items()}}, folder / "tensors.safetensors")
    meta = {"family": "t5", "transformers": transformers.__version__, "torch": torch.__version__}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    print("t5", float((masked - dense).abs().max()))


if __name__ == "__main__":
    for name in CONFIGS:
        make(name)
    make_t5()
