"""GGUF export without llama.cpp: what the file declares, read back with the gguf package, and a dense export
that transformers' own GGUF loader reads back to the same logits (which checks the rotary permutation)."""
from __future__ import annotations

import json
import gguf
import pytest
import torch

import sentinel
from orchestrator import cli
from sentinel.export import ExportError, export_gguf, servable_by
from sentinel.export.gguf_tokenizer import TokenizerExportError
from sentinel.models.loading import load_model


@pytest.fixture()
def tiny_llama():
    return load_model("sentinel/tiny-llama")


def fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()
            if name not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")}


def tensors(path) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (t.tensor_type.name, [int(d) for d in t.shape]) for t in gguf.GGUFReader(path).tensors}


def test_a_non_uniform_layout_is_written_with_per_layer_head_counts(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    sentinel.prune_heads(model, {0: [0, 1], 2: [4, 5, 6, 7]})  # 6, 8, 4, 8 heads; 3, 4, 2, 4 KV heads
    path = export_gguf(model, tokenizer, tmp_path / "pruned.gguf", dtype="f32")
    meta, shapes = fields(path), tensors(path)
    assert meta["general.architecture"] == "deci"
    assert meta["deci.attention.head_count"] == [6, 8, 4, 8]
    assert meta["deci.attention.head_count_kv"] == [3, 4, 2, 4]
    assert meta["deci.attention.key_length"] == meta["deci.rope.dimension_count"] == 16
    assert shapes["blk.0.attn_q.weight"] == ("F32", [128, 6 * 16]) and shapes["blk.2.attn_k.weight"] == ("F32", [128, 2 * 16])
    assert shapes["blk.0.attn_output.weight"] == ("F32", [6 * 16, 128])
    assert "output.weight" not in shapes  # tied embeddings: llama.cpp reuses token_embd
    assert json.loads(meta["sentinel.kept_heads"])["2"]["heads"] == [0, 1, 2, 3]
    assert meta["general.name"] == "tiny-llama"  # the model's name, not the folder it was loaded from
    assert not list(tmp_path.glob(".*partial"))


def test_a_uniform_layout_is_a_plain_llama(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    sentinel.prune_heads(model, {layer: [0, 1] for layer in range(4)})
    meta = fields(export_gguf(model, tokenizer, tmp_path / "uniform.gguf"))
    assert meta["general.architecture"] == "llama"
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (6, 3)
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16


def test_dense_export_reads_back_in_transformers_with_the_same_logits(tiny_llama, tmp_path):
    """transformers' GGUF loader undoes llama.cpp's rotary row order: a wrong permutation changes the logits."""
    model, tokenizer = tiny_llama
    path = export_gguf(model, tokenizer, tmp_path / "dense.gguf", dtype="f32")
    back, back_tokenizer = load_model(str(path))
    ids = torch.tensor([tokenizer("Heads that matter, and heads that do not.")["input_ids"]])
    with torch.inference_mode():
        assert torch.allclose(back(ids).logits, model(ids).logits, atol=1e-4)
    assert back_tokenizer.get_vocab() == tokenizer.get_vocab()


def test_q8_0_quantises_matrices_and_keeps_vectors_float32(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    shapes = tensors(export_gguf(model, tokenizer, tmp_path / "q8.gguf", dtype="q8_0"))
    assert shapes["blk.1.ffn_up.weight"][0] == "Q8_0" and shapes["token_embd.weight"][0] == "Q8_0"
    assert shapes["blk.1.attn_norm.weight"][0] == "F32"


def test_a_compensation_bias_is_the_attention_output_bias(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    batch = {"input_ids": torch.tensor([tokenizer("A calibration sentence of a few words.")["input_ids"]])}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    sentinel.prune_heads(model, {1: [0, 1]}, compensate=[batch])
    shapes = tensors(export_gguf(model, tokenizer, tmp_path / "bias.gguf", dtype="f32"))
    assert shapes["blk.1.attn_output.bias"] == ("F32", [128]) and "blk.0.attn_output.bias" not in shapes


def test_the_tokenizer_is_converted_token_for_token(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    reader = gguf.GGUFReader(export_gguf(model, tokenizer, tmp_path / "tok.gguf"))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert tokens == [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert len(reader.fields["tokenizer.ggml.merges"].contents()) > 1000


def test_refusals_are_one_line_and_write_nothing(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    with pytest.raises(ExportError, match="dtype: 'q4_k' is not one of f32, f16, q8_0"):
        export_gguf(model, tokenizer, tmp_path / "a.gguf", dtype="q4_k")
    gpt2, gpt2_tokenizer = load_model("sentinel/tiny-gpt2")
    with pytest.raises(ExportError, match="model_type 'gpt2' cannot be exported"):
        export_gguf(gpt2, gpt2_tokenizer, tmp_path / "a.gguf")
    existing = tmp_path / "existing.gguf"
    existing.write_bytes(b"keep me")
    with pytest.raises(ExportError, match="exists; pass overwrite=True"):
        export_gguf(model, tokenizer, existing)
    assert existing.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["existing.gguf"]


def test_a_tokenizer_llama_cpp_would_split_differently_is_refused(tiny_llama, tmp_path):
    model, _ = tiny_llama
    minilm_tokenizer = load_model("sentinel/all-MiniLM-L6-v2")[1]  # WordPiece
    with pytest.raises(TokenizerExportError, match="only byte-level BPE"):
        export_gguf(model, minilm_tokenizer, tmp_path / "a.gguf")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["sentinel/tiny-gpt2"], "is a 'gpt2' model; llama.cpp export takes the Llama family"),
    (["sentinel/all-MiniLM-L6-v2"], "is a 'bert' model"),
    (["sentinel/tiny-llama", "--dtype", "q4"], "--dtype: 'q4' is not one of f32, f16, q8_0"),
    (["sentinel/tiny-llama", "--to", "onnx"], "--to: 'onnx' is not one of gguf"),
    (["{tmp}"], "has no config.json"),
    (["sentinel/tiny-llama", "--out-exists"], "exists; pass --overwrite"),
])
def test_bad_export_requests_exit_2_in_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "out.gguf"
    if "--out-exists" in args:
        args = [a for a in args if a != "--out-exists"]
        out.write_bytes(b"earlier export")
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["export", *[a.replace("{tmp}", str(empty)) for a in args], "--out", str(out)]
    code, stderr = cli.main(argv), capsys.readouterr().err
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists() or out.read_bytes() == b"earlier export"


@pytest.mark.parametrize("model_type, heads, kv_heads, pruned, runtimes", [
    ("llama", [8, 8], [4, 4], False, ["transformers", "llama.cpp"]),
    ("llama", [4, 4], [2, 2], True, ["transformers", "llama.cpp"]),
    ("llama", [6, 6], [3, 3], True, ["llama.cpp"]),  # 128 is not a multiple of 6: transformers refuses the config
    ("llama", [6, 8], [3, 4], True, ["llama.cpp"]),
    ("llama", [0, 8], [0, 4], True, []),  # llama.cpp reads the head size from layer 0
    ("gpt2", [2, 2], [2, 2], True, []),  # no head_dim in its config: only sentinel loads it
    ("gpt2", [4, 4], [4, 4], False, ["transformers"]),
])
def test_servable_by_says_which_runtimes_load_a_layout(model_type, heads, kv_heads, pruned, runtimes):
    assert servable_by(model_type, heads, kv_heads, pruned, hidden_size=128) == runtimes


@pytest.mark.parametrize("removed, plain", [([0, 1, 2, 3], True), ([0, 1], False)])
def test_what_servable_by_promises_for_transformers_is_what_plain_transformers_loads(tiny_llama, tmp_path, removed,
                                                                                      plain):
    """4 heads of 8 in every layer: the folder loads without sentinel, same logits; 6 of 8 (128 is no multiple of
    6): save_pruned keeps the dense config and only sentinel loads it, as servable_by says."""
    import transformers

    model, tokenizer = tiny_llama
    sentinel.prune_heads(model, {layer: removed for layer in range(4)})
    layout = sentinel.head_layout(model)
    assert ("transformers" in servable_by("llama", layout.heads, layout.kv_heads, True, 128)) is plain
    sentinel.save_pruned(model, tmp_path / "uniform", tokenizer)
    if not plain:
        with pytest.raises(Exception):
            transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "uniform")
        assert sentinel.head_layout(sentinel.load_pruned(tmp_path / "uniform")).heads == layout.heads
        return
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "uniform").eval()
    ids = torch.tensor([tokenizer("A uniform layout loads anywhere.")["input_ids"]])
    with torch.inference_mode():
        assert torch.allclose(plain(ids).logits, model(ids).logits, atol=1e-5)


@pytest.mark.parametrize("spoil, message", [
    (lambda w: w.fill_(float("nan")), "holds NaN or infinite values"),
    (lambda w: w.fill_(float("inf")), "holds NaN or infinite values"),
])
def test_weights_that_are_not_finite_are_refused_and_nothing_is_written(tiny_llama, tmp_path, spoil, message):
    model, tokenizer = tiny_llama
    with torch.no_grad():
        spoil(model.model.layers[1].mlp.up_proj.weight[0])  # one row of one matrix
    with pytest.raises(ExportError, match=rf"weight model.layers.1.mlp.up_proj.weight {message}"):
        export_gguf(model, tokenizer, tmp_path / "a.gguf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_weights_that_are_not_floating_point_are_refused(tiny_llama, tmp_path, dtype):
    model, tokenizer = tiny_llama
    weight = model.model.layers[0].mlp.down_proj.weight
    model.model.layers[0].mlp.down_proj.weight = torch.nn.Parameter(weight.detach().to(dtype), requires_grad=False)
    with pytest.raises(ExportError, match=rf"down_proj.weight is {str(dtype).removeprefix('torch.')}; the exporter "
                                          "takes floating-point weights"):
        export_gguf(model, tokenizer, tmp_path / "a.gguf")
    assert list(tmp_path.iterdir()) == []
