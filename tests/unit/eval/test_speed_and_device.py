"""Parameter counts, throughput, stopwatches, device resolution and autocast (CPU; CUDA absence simulated)."""
from __future__ import annotations

import time

import pytest
import torch

from sentinel.eval import Stopwatch, autocast, count_parameters, resolve_device, throughput, timed
from sentinel.models import prune_heads
from tests.tiny_models import tiny_model


def test_count_parameters_counts_tied_weights_once():
    model = tiny_model("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    every = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert count_parameters(model) == every - model.lm_head.weight.numel()


def test_count_parameters_drops_by_the_removed_head_weights():
    model = tiny_model("llama")
    before = count_parameters(model)
    prune_heads(model, {0: [2, 3]})  # one whole GQA group: q rows, k/v rows, o columns of 8 dims each
    d, hidden = 8, 32
    assert before - count_parameters(model) == 2 * d * hidden + 2 * d * hidden + 2 * d * hidden


def test_throughput_reports_tokens_per_second():
    result = throughput(tiny_model("gpt2"), seq_len=16, batch_size=2, warmup=1, iters=3)
    assert result["tokens_per_s"] == pytest.approx(32 / result["seconds_per_batch"])
    assert result["tokens_per_s"] > 0 and result["iters"] == 3


def test_throughput_rejects_bad_sizes():
    with pytest.raises(ValueError, match=r"seq_len: 0 must be >= 1"):
        throughput(tiny_model("gpt2"), seq_len=0)


def test_stopwatch_accumulates_per_stage_even_on_error():
    watch = Stopwatch()
    with watch.timed("load"):
        time.sleep(0.01)
    with pytest.raises(RuntimeError), watch.timed("load"):
        time.sleep(0.01)
        raise RuntimeError
    assert watch.seconds["load"] >= 0.02 and list(watch.seconds) == ["load"]
    timings: dict[str, float] = {"load": 1.0}
    with Stopwatch(timings)("load"):  # the caller's dict, called like the pipeline does
        pass
    assert timings["load"] > 1.0
    stages: dict[str, float] = {}
    with timed("eval", stages):
        time.sleep(0.01)
    assert stages["eval"] >= 0.01


def test_resolve_device_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_cuda_requested_without_gpu_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # simulate the absent GPU
    assert resolve_device("auto") == torch.device("cpu")
    for request in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=rf"device: '{request}' was requested but CUDA is not available"):
            resolve_device(request)


def test_auto_picks_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # simulate a GPU
    assert resolve_device("auto") == torch.device("cuda")


def test_unknown_device_lists_allowed():
    with pytest.raises(ValueError, match=r"device: 'tpu' is not one of 'auto', 'cpu', 'cuda', 'cuda:N'"):
        resolve_device("tpu")


def test_autocast_is_a_no_op_on_cpu():
    model = tiny_model("gpt2")
    ids = torch.arange(10)[None]
    with torch.no_grad():
        plain = model(ids).logits
        with autocast("cpu", bf16=True):
            cast = model(ids).logits
    assert cast.dtype == torch.float32 and torch.equal(plain, cast)


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_on_cuda_is_bf16_autocast():
    context = autocast(torch.device("cuda"), bf16=True)
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    assert not isinstance(autocast("cuda", bf16=False), torch.autocast)


def test_forward_flops_counts_linear_layers_and_attention_maps_and_drops_with_heads():
    """Brute force for GPT-2 (2 layers, 4 heads of 8, width 32, vocab 97, fused c_attn as Conv1D):
    per token 2 * (c_attn 32x96 + c_proj 32x32 + MLP 32x128 + 128x32 per layer + LM head 32x97), plus
    2 * T * T * head_dim per head for QK^T and AV."""
    from sentinel.eval import forward_flops

    model, t = tiny_model("gpt2"), 16
    linear = 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32) + 32 * 97
    attention = 2 * t * t * 8 * 8  # multiply-adds, 8 heads in all
    assert forward_flops(model, t) == 2 * (linear * t + attention)
    prune_heads(model, {0: [0, 1], 1: [3]})  # 3 heads of 8 dims: c_attn loses 3*3*8 outputs, c_proj 3*8 inputs
    removed = 3 * (3 * 8 * 32 + 8 * 32)
    assert forward_flops(model, t) == 2 * ((linear - removed) * t + 2 * t * t * 8 * 5)
    with pytest.raises(ValueError, match="seq_len"):
        forward_flops(model, 0)
