"""What a pruned LM buys when it serves: KV-cache memory per token, prefill and decode speed, and their ideal ratios.

Prefill (the prompt in one forward pass) is compute-bound: its ideal speedup is the FLOP ratio. Decode (one token
per step, reading the KV cache) is memory-bound on every device we run: each step reads every linear weight once
and each sequence's cache, so its ideal speedup is the ratio of bytes read per step,
    bytes(model, B) = linear weight bytes + B x context x KV bytes per token,
with the context averaged over the decode (prompt + new_tokens / 2). Removing whole KV groups of a GQA model (or
heads of an MHA model) shrinks both terms; removing query heads only shrinks the weights.

Speeds are measured with `model.generate` (greedy, KV cache on, a fixed number of new tokens: EOS cannot stop it
early): prefill = a generation of 1 token, decode = (a generation of 1 + N tokens - that) / N steps.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from sentinel.eval.speed import forward_flops
from sentinel.models import head_layout
from sentinel.models.device import model_device


def kv_cache_bytes_per_token(model: nn.Module) -> int:
    """Bytes of KV cache one token of one sequence occupies: 2 (K and V) x KV heads x head_dim x element size,
    summed over layers, in the model's dtype."""
    layout = head_layout(model)
    element = next(model.parameters()).element_size()
    return 2 * sum(layout.kv_heads) * layout.head_dim * element


def measured_kv_cache_bytes_per_token(model: nn.Module, tokens: int = 8) -> float:
    """The bytes of the cache a forward pass over `tokens` tokens leaves, divided by them (what transformers
    allocates: a check of the formula)."""
    ids = torch.zeros(1, tokens, dtype=torch.long, device=model_device(model))
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
    cache = out.get("cache", out.get("past_key_values"))
    total = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
                if t is not None)  # a layer whose attention was removed whole never fills its cache
    return total / tokens


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of every linear weight (nn.Linear and Conv1D, the LM head included): what one decode step reads."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)))


@dataclass(frozen=True)
class GenerationSpeed:
    prefill_tokens_per_s: float  # batch 1, prompt_tokens
    decode_tokens_per_s: float  # batch 1
    decode_batch_tokens_per_s: float  # batch `batch_size`: tokens of all sequences per second


def _generate_seconds(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> float:
    start = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    if ids.device.type == "cuda":
        torch.cuda.synchronize(ids.device)
    return time.perf_counter() - start


def generation_speed(model: nn.Module, *, prompt_tokens: int, new_tokens: int, batch_size: int,
                     seed: int = 0) -> GenerationSpeed:
    """Prefill and decode tokens/s of greedy generation with the KV cache, on random prompts (warm-up excluded)."""
    for name, value in (("prompt_tokens", prompt_tokens), ("new_tokens", new_tokens), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name}: {value} must be >= 1")
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    device = model_device(model)
    single = torch.randint(0, vocab, (1, prompt_tokens), generator=generator).to(device)
    batch = torch.randint(0, vocab, (batch_size, prompt_tokens), generator=generator).to(device)
    model.eval()
    with torch.inference_mode():
        _generate_seconds(model, single, 2)  # warm-up: allocator, kernels
        prefill = _generate_seconds(model, single, 1)
        decode = max(_generate_seconds(model, single, 1 + new_tokens) - prefill, 1e-9)
        batch_prefill = _generate_seconds(model, batch, 1)
        batch_decode = max(_generate_seconds(model, batch, 1 + new_tokens) - batch_prefill, 1e-9)
    return GenerationSpeed(prompt_tokens / prefill, new_tokens / decode, batch_size * new_tokens / batch_decode)


def compare_generation(dense: nn.Module, pruned: nn.Module, *, prompt_tokens: int = 64, new_tokens: int = 32,
                       batch_size: int = 8, rounds: int = 3) -> list[tuple[GenerationSpeed, GenerationSpeed]]:
    """Both models measured alternately `rounds` times: (dense, pruned) per round, so each round's ratio compares
    two timings under the same background load."""
    return [tuple(generation_speed(model, prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch_size=batch_size)
                  for model in (dense, pruned)) for _ in range(rounds)]  # type: ignore[misc]


def ideal_generation_ratios(dense: nn.Module, pruned: nn.Module, *, prompt_tokens: int, new_tokens: int,
                            batch_size: int) -> dict[str, float]:
    """Dense / pruned: FLOPs of the prompt (prefill), and bytes read per decode step at batch 1 and `batch_size`."""
    context = prompt_tokens + new_tokens / 2

    def step_bytes(model: nn.Module, batch: int) -> float:
        return linear_weight_bytes(model) + batch * context * kv_cache_bytes_per_token(model)

    return {
        "prefill": forward_flops(dense, prompt_tokens) / forward_flops(pruned, prompt_tokens),
        "decode": step_bytes(dense, 1) / step_bytes(pruned, 1),
        "decode_batch": step_bytes(dense, batch_size) / step_bytes(pruned, batch_size),
    }
