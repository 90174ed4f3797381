"""Exported GGUF files run by llama.cpp itself (its Python bindings, built by scripts/install_llamacpp.sh):
logits, perplexity on the same windows, generation with llama.cpp's KV cache, tokenisation, and the dense
SmolLM2 export against the GGUF it was loaded from. The measured agreement is in docs/EXPORT.md."""
from __future__ import annotations

import math

import pytest
import torch

import sentinel
from sentinel.data.blocks import document_tokens
from sentinel.data.sources import load_documents
from sentinel.data.splits import split_documents
from sentinel.eval.perplexity import window_perplexity
from sentinel.export import export_gguf
from sentinel.export.llamacpp import INSTALL, LlamaCpp, available
from sentinel.models.loading import load_model
from sentinel.pipeline import dense_model
from sentinel.pruning import score_heads, select_heads

if not available():  # a failure, not a skip: a suite that passes without llama.cpp has not checked the export
    pytest.fail(f"llama.cpp's Python bindings are not installed: run {INSTALL} (the README's test line does)",
                pytrace=False)

SMOLLM2 = "sentinel/smollm2-135m"


def eval_windows(tokenizer, count: int, length: int) -> torch.Tensor:
    """`count` windows of `length` tokens from the start of WikiText-2's evaluation documents."""
    docs = split_documents(load_documents("wikitext-2")).eval[:40]
    ids = torch.cat(document_tokens(tokenizer, docs))
    assert ids.numel() >= count * length
    return ids[: count * length].view(count, length)


def relative_gap(ours, reference) -> float:
    """Largest logit difference as a share of the largest logit: the scale of the comparison."""
    reference = torch.as_tensor(reference, dtype=torch.float32)
    return float((torch.as_tensor(ours) - reference).abs().max() / reference.abs().max())


@pytest.fixture(scope="module")
def tiny_pruned(tmp_path_factory):
    """tiny-llama with a non-uniform layout and bias compensation, exported as f32."""
    model, tokenizer = load_model("sentinel/tiny-llama")
    windows = eval_windows(tokenizer, 4, 64)
    batches = [{"input_ids": windows, "attention_mask": torch.ones_like(windows)}]
    sentinel.prune_heads(model, {0: [0, 1], 2: [4, 5, 6, 7], 3: [2, 3]}, compensate=batches)
    path = export_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny.gguf", dtype="f32")
    return model, tokenizer, path, windows


def test_llama_cpp_gives_the_pruned_model_s_logits(tiny_pruned):
    model, tokenizer, path, windows = tiny_pruned
    assert sentinel.head_layout(model).heads == (6, 8, 4, 6)
    with LlamaCpp(path, n_ctx=128) as engine:
        ours = engine.logits(windows[0].tolist())
        perplexity = engine.perplexity(windows.numpy())
    with torch.inference_mode():
        reference = model(windows[:1]).logits[0]
    assert relative_gap(ours, reference) < 1e-3  # measured 1e-4 to 2e-4 (f32 on both sides)
    assert perplexity == pytest.approx(window_perplexity(model, windows).value, rel=5e-3)


def test_llama_cpp_generates_what_transformers_generates(tiny_pruned):
    """Greedy decoding through llama.cpp's own KV cache, whose per-layer sizes follow the pruned layout."""
    model, tokenizer, path, _ = tiny_pruned
    prompt = tokenizer("The history of the city")["input_ids"]
    with torch.inference_mode():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    with LlamaCpp(path, n_ctx=64, logits_all=False) as engine:
        produced = []
        for token in engine.llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            produced.append(token)
            if len(produced) == 12:
                break
    assert produced == expected


def test_llama_cpp_tokenises_the_export_as_transformers_does(tiny_pruned):
    _, tokenizer, path, _ = tiny_pruned
    text = "Valkyria Chronicles III is a tactical role-playing game; it was released in January 2011."
    with LlamaCpp(path, n_ctx=64) as engine:
        assert engine.tokenize(text) == tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("dtype, tolerance", [("f16", 5e-3), ("q8_0", 3e-2)])
def test_smaller_weight_types_load_and_stay_close(tiny_pruned, tmp_path, dtype, tolerance):
    model, tokenizer, _, windows = tiny_pruned
    path = export_gguf(model, tokenizer, tmp_path / f"{dtype}.gguf", dtype=dtype)
    with LlamaCpp(path, n_ctx=128) as engine:
        assert engine.perplexity(windows.numpy()) == pytest.approx(window_perplexity(model, windows).value, rel=tolerance)


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer = dense_model(SMOLLM2, torch.device("cpu"), {})  # the per-process cache other tests share
    return model, tokenizer, eval_windows(tokenizer, 4, 128)


def test_dense_smollm2_exported_scores_like_the_gguf_it_came_from(smollm2, tmp_path):
    model, tokenizer, windows = smollm2
    with LlamaCpp(model.sentinel_gguf, n_ctx=256) as engine:
        source = engine.perplexity(windows.numpy())  # Q4_1 weights, as shipped
    with LlamaCpp(export_gguf(model, tokenizer, tmp_path / "dense.gguf", dtype="q8_0"), n_ctx=256) as engine:
        exported = engine.perplexity(windows.numpy())
    # the export holds the dequantised Q4_1 weights re-quantised to q8_0: close to the source, not bit-equal
    assert exported == pytest.approx(source, rel=0.01)


def test_a_non_uniform_gradient_layout_of_smollm2_runs_in_llama_cpp(smollm2, tmp_path):
    import copy

    model, tokenizer, windows = smollm2
    pruned = copy.deepcopy(model)
    calibration = [{"input_ids": windows[:2, :64], "attention_mask": torch.ones_like(windows[:2, :64])}]
    selection = select_heads(score_heads("gradient", pruned, calibration), 0.3)
    sentinel.prune_heads(pruned, selection.heads)
    heads = sentinel.head_layout(pruned).heads
    assert sum(heads) == 270 - 81 and len(set(heads)) > 1  # 30% in whole KV groups, a different count per layer
    path = export_gguf(pruned, tokenizer, tmp_path / "pruned.gguf", dtype="f32")
    with LlamaCpp(path, n_ctx=256) as engine:
        ours = engine.logits(windows[0].tolist())
        perplexity = engine.perplexity(windows.numpy())
    with torch.inference_mode():
        reference = pruned(windows[:1]).logits[0]
    assert relative_gap(ours, reference) < 2e-3  # measured 8e-4
    assert perplexity == pytest.approx(window_perplexity(pruned, windows).value, rel=5e-3)  # measured 2e-5


def test_a_trial_times_its_layout_in_llama_cpp_beside_the_dense_export():
    from sentinel.pipeline import DataSpec, LocalShared, TrialSpec, run_trial
    from sentinel.trial import GenerationSpec

    data = DataSpec(seq_len=32, stride=32, batch_size=8, score_batches=1, eval_tokens=256, whole_split_reference=False)
    generation = GenerationSpec(prompt_tokens=16, new_tokens=8, rounds=3, engine="llama.cpp", gguf_dtype="f32")
    result = run_trial(TrialSpec(model="sentinel/tiny-llama", strategy="magnitude", level=0.5, data=data,
                                 finetune=None, measure_speed=False, generation=generation), LocalShared())
    assert result.status == "ok", result.error
    assert result.generation_engine == "llama.cpp f32" and result.generation_threads >= 1
    assert len(result.decode_speedup_rounds) == 3 and all(r > 0 for r in result.prefill_speedup_rounds)
    assert result.decode_tps_before > 0 and result.decode_tps_after > 0
    assert result.ideal_decode_speedup > 1 and result.ideal_prefill_speedup > 1
    # llama.cpp's f16 cache: 2 (K, V) x 2 bytes x KV heads x head size, per layer; half the KV heads are gone
    assert result.kv_bytes_per_token_before == 2 * 2 * 4 * 4 * 16 and result.kv_bytes_per_token_after < 2 * 2 * 4 * 4 * 16
    assert math.isnan(result.decode_batch_tps_after)  # llama.cpp is timed at batch 1 only
    assert result.servable_by == ["llama.cpp"] or result.servable_by == ["transformers", "llama.cpp"]


def test_a_whole_attention_sublayer_removed_is_an_attention_free_layer_in_llama_cpp(tmp_path):
    """attention_drop's layouts: llama.cpp's per-layer architecture reads a head count of 0 as a layer without
    attention (no projections, no cache), and gives the pruned model's logits."""
    model, tokenizer = load_model("sentinel/tiny-llama")
    sentinel.prune_heads(model, {2: list(range(8)), 3: [0, 1]})
    path = export_gguf(model, tokenizer, tmp_path / "dropped.gguf", dtype="f32")
    prompt = tokenizer("A layer without attention still feeds forward.")["input_ids"]
    with LlamaCpp(path, n_ctx=64) as engine:
        ours = engine.logits(prompt)
    with torch.inference_mode():
        reference = model(torch.tensor([prompt])).logits[0]
    assert relative_gap(ours, reference) < 1e-3  # measured 7e-5
