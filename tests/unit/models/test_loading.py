"""sentinel.load_model: shipped reference models, MiniLM, pruned checkpoints, errors; reference model quality."""
from __future__ import annotations

import math
import time

import pytest
import torch

from sentinel.data import Document, load_documents, pack_blocks, split_documents, token_stream
from sentinel.models import head_layout, prune_heads, save_pruned
from sentinel.models.loading import load_model

SHIPPED = ["sentinel/tiny-gpt2", "sentinel/tiny-llama"]


@pytest.fixture(scope="module")
def gpt2():
    return load_model("sentinel/tiny-gpt2")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_load_in_eval_mode_as_fp32_causal_lms(name):
    model, tok = load_model(name)
    layout = head_layout(model)
    assert not model.training and model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    assert layout.num_layers >= 4 and min(layout.heads) >= 8
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    ids = tok("It was a truth universally acknowledged", return_tensors="pt")["input_ids"]
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_tiny_llama_uses_grouped_query_attention():
    model, _ = load_model("sentinel/tiny-llama", attn_implementation="eager")
    layout = head_layout(model)
    assert model.config._attn_implementation == "eager"
    assert all(kv < h for kv, h in zip(layout.kv_heads, layout.heads))


@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"])
def test_minilm_loads_as_a_bare_bert_encoder(name):
    model, tok = load_model(name)
    assert type(model).__name__ == "BertModel" and not model.training
    batch = tok(["a short sentence", "and a somewhat longer second one"], padding=True, return_tensors="pt")
    out = model(**batch).last_hidden_state
    assert out.shape == (2, batch["input_ids"].shape[1], 384)
    assert tok.pad_token is not None


def test_pruned_checkpoint_round_trips_through_load_model(gpt2, tmp_path):
    model, tok = load_model("sentinel/tiny-gpt2")
    prune_heads(model, {0: [0, 1], 2: [5]})
    save_pruned(model, tmp_path / "pruned", tokenizer=tok)
    loaded, loaded_tok = load_model(str(tmp_path / "pruned"))
    assert head_layout(loaded).heads == head_layout(model).heads != head_layout(gpt2[0]).heads
    ids = torch.arange(20).unsqueeze(0)
    assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    assert loaded_tok.pad_token == loaded_tok.eos_token


def test_local_folder_loads(tmp_path, gpt2):
    model, tok = gpt2
    model.save_pretrained(tmp_path / "plain")
    tok.save_pretrained(tmp_path / "plain")
    loaded, _ = load_model(str(tmp_path / "plain"))
    ids = torch.arange(10).unsqueeze(0)
    assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_unknown_hub_name_fails_fast_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        load_model("no-such-org/no-such-model")
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert "\n" not in message and "'no-such-org/no-such-model'" in message
    assert "sentinel/tiny-gpt2" in message and "pass its folder" in message


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_model(str(tmp_path))


def _nll(model, blocks: torch.Tensor) -> tuple[float, int]:
    """Total next-token NLL over packed blocks and the number of predicted tokens."""
    with torch.no_grad():
        logits = model(input_ids=blocks).logits[:, :-1]  # [n, T-1, V]
    targets = blocks[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
    return nll.item(), targets.numel()


@pytest.mark.parametrize("name", SHIPPED)
def test_reference_model_beats_the_unigram_baseline_by_far_on_held_out_books(name):
    model, tok = load_model(name)
    splits = split_documents(load_documents("gutenberg"), seed=0)  # the split the models were trained with
    # A quick slice: the start of each train book for unigram counts, 4 blocks from each eval book.
    train_ids = token_stream(tok, [Document(d.name, d.text[:100_000]) for d in splits.train])
    blocks = torch.cat([pack_blocks(token_stream(tok, [d]), 128)[10:14] for d in splits.eval])  # [4*k, 128]
    nll, n = _nll(model, blocks)
    model_ppl = math.exp(nll / n)

    counts = torch.bincount(train_ids, minlength=len(tok)).double() + 1.0  # add-one smoothing
    logp = counts.log() - counts.sum().log()
    unigram_ppl = math.exp(-logp[blocks[:, 1:]].mean().item())
    assert model_ppl < 0.5 * unigram_ppl, (model_ppl, unigram_ppl)


def test_local_gguf_files_resolve_to_themselves_and_missing_ones_are_refused(tmp_path):
    """A .gguf path loads through the same branch as sentinel/smollm2-135m (tests/integration/test_smollm2.py)."""
    from sentinel.models.loading import _smollm2_file, context_length, gguf_architecture, gguf_file_type, resolve_source

    shipped = _smollm2_file("sentinel/smollm2-135m")
    assert resolve_source("sentinel/smollm2-135m") == resolve_source(str(shipped)) == str(shipped)
    assert (gguf_architecture(shipped), gguf_file_type(shipped), context_length(str(shipped))) == ("llama", "Q4_1", 8192)
    with pytest.raises(ValueError, match="is not a file"):
        resolve_source(str(tmp_path / "missing.gguf"))


def test_spec_reads_the_architecture_of_a_gguf_file_and_refuses_a_fake_one(tmp_path):
    from orchestrator.spec import SpecError, parse_spec
    from sentinel.models.loading import _smollm2_file

    base = {"experiment": "g", "models": [str(_smollm2_file("x"))], "strategies": ["random"], "levels": [0.3],
            "output": str(tmp_path)}
    assert parse_spec(base).models[0].name.endswith(".gguf")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not gguf")
    with pytest.raises(SpecError, match="is not a readable GGUF file"):
        parse_spec({**base, "models": [str(fake)]})
