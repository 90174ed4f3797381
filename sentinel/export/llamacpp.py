"""llama.cpp, through its Python bindings (llama-cpp-python), on a GGUF file: logits, perplexity and speed.

The bindings are an optional dependency built by scripts/install_llamacpp.sh (never by the default install:
a default build enables every CPU feature it finds and dies on machines like ours; docs/EXPORT.md). Nothing here
imports them until a GGUF is opened, and a missing install is one line naming the script.

    python -m sentinel.export.llamacpp --check    # the installed build runs here (exit 0) or one line why not
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

INSTALL = "scripts/install_llamacpp.sh"
# Features a portable build must leave off: a build with them dies (SIGILL) on CPUs that report but cannot run them.
UNSAFE_FEATURES = ("AMX_INT8 = 1",)


class LlamaCppUnavailable(RuntimeError):
    """llama-cpp-python is not installed, or its build is one that does not run here; one line."""


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def _bindings():
    if not available():
        raise LlamaCppUnavailable(f"llama.cpp: the Python bindings are not installed; run {INSTALL}")
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    unsafe = [f.split(" =")[0] for f in UNSAFE_FEATURES if f in info]
    if unsafe:
        raise LlamaCppUnavailable(f"llama.cpp: this build enables {', '.join(unsafe)} (a native build); rebuild "
                                  f"with {INSTALL}")
    return llama_cpp


def default_threads() -> int:
    """llama.cpp's own default: the cores this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@dataclass(frozen=True)
class EngineSpeed:
    """Tokens per second in llama.cpp for one GGUF: prefill of `prompt_tokens`, then greedy decode of `new_tokens`,
    batch 1, each round timed on its own (rows keep the medians, the rounds for the spread)."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    prefill_rounds: tuple[float, ...]
    decode_rounds: tuple[float, ...]
    prompt_tokens: int
    new_tokens: int
    threads: int
    batch: int


class LlamaCpp:
    """One GGUF file opened in llama.cpp (CPU). `logits_all=True` keeps every position's logits (scoring);
    False keeps only the last (speed, as a server decodes)."""

    def __init__(self, path: str | Path, *, n_ctx: int = 512, threads: int | None = None, batch: int = 512,
                 logits_all: bool = True, flash_attn: bool = False) -> None:
        llama_cpp = _bindings()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"gguf: {str(path)!r} is not a file")
        self.threads = threads or default_threads()
        self.batch = batch
        self.warm = False
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=batch, n_ubatch=batch,
                                   n_threads=self.threads, n_threads_batch=self.threads, logits_all=logits_all,
                                   n_gpu_layers=0, flash_attn=flash_attn, verbose=False)
        self.flash_attn = flash_attn

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> "LlamaCpp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=False)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits at every position of `tokens`, [T, vocab] float32, from an empty context (no BOS added)."""
        self.llm.reset()
        self.llm.eval(list(map(int, tokens)))
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    def window_nll(self, windows: np.ndarray) -> tuple[float, int]:
        """Summed next-token NLL and predicted tokens over separate windows [k, T] (each from an empty context;
        every token after the first predicted): sentinel.eval.perplexity.window_perplexity's protocol."""
        total, count = 0.0, 0
        for row in np.asarray(windows):
            logits = self.logits(row).astype(np.float64)[:-1]
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            total -= float(log_probs[np.arange(len(row) - 1), row[1:]].sum())
            count += len(row) - 1
        return total, count

    def perplexity(self, windows: np.ndarray) -> float:
        total, count = self.window_nll(windows)
        return math.exp(total / count)

    def speed(self, prompt: Sequence[int], new_tokens: int, rounds: int = 3) -> EngineSpeed:
        """Prefill and decode tokens/s at batch 1 (greedy decode); this file's first call warms up first."""
        prefill, decode = [], []
        for round_ in range(rounds + (0 if self.warm else 1)):
            self.llm.reset()
            start = time.perf_counter()
            self.llm.eval(list(map(int, prompt)))
            middle = time.perf_counter()
            for _ in range(new_tokens):
                token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
                self.llm.eval([token])
            end = time.perf_counter()
            if self.warm:  # the first round of a file warms caches and the thread pool
                prefill.append(len(prompt) / (middle - start))
                decode.append(new_tokens / (end - middle))
            self.warm = True
        return EngineSpeed(float(np.median(prefill)), float(np.median(decode)), tuple(prefill), tuple(decode),
                           len(prompt), new_tokens, self.threads, self.batch)


def prefill_flops(model, prompt_tokens: int) -> float:
    """FLOPs of a prefill in llama.cpp: the forward pass over the prompt (sentinel.eval.forward_flops) less the LM head
    on every position but the last (a server's prefill computes the next token's logits only)."""
    from sentinel.eval.speed import forward_flops

    head = model.get_output_embeddings().weight.numel()
    return forward_flops(model, prompt_tokens) - 2.0 * head * (prompt_tokens - 1)


def decode_bytes(path: str | Path) -> tuple[float, float]:
    """What one decode step at batch 1 reads in llama.cpp, from one pass over the file's header: (every weight tensor
    of the GGUF: the token embedding only when it is also the output matrix, otherwise one row; the f16 K and V cache
    per token of context, from the per-layer KV-head counts). Decode is memory-bound: weights + context x the second
    is the denominator of its ideal speedup."""
    import gguf

    reader = gguf.GGUFReader(path)
    names = {t.name for t in reader.tensors}
    weights = sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight" or "output.weight" not in names)
    architecture = reader.fields["general.architecture"].contents()
    kv_heads = reader.fields[f"{architecture}.attention.head_count_kv"].contents()
    layers = int(reader.fields[f"{architecture}.block_count"].contents())
    kv_heads = kv_heads if isinstance(kv_heads, list) else [kv_heads] * layers
    head_dim = int(reader.fields[f"{architecture}.attention.key_length"].contents())
    return float(weights), float(2 * 2 * sum(kv_heads) * head_dim)  # K and V, 2 bytes each (f16 cache)


def compare_generation(dense, pruned, tokenizer, *, prompt_tokens: int, new_tokens: int, rounds: int,
                       dtype: str = "f16", seed: int = 0) -> dict:
    """The dense and the pruned model exported to GGUF (`dtype`) and timed in llama.cpp, alternately, `rounds` times:
    prefill of a random prompt and greedy decode at batch 1. Returns the TrialResult generation fields (medians,
    per-round ratios, ideal ratios: FLOPs for prefill, bytes per decode step of the files for decode, and llama.cpp's
    f16 KV cache per token)."""
    import tempfile

    import torch

    from sentinel.export.gguf_export import export_gguf

    prompt = torch.randint(0, dense.config.vocab_size, (prompt_tokens,),
                           generator=torch.Generator().manual_seed(seed)).tolist()
    with tempfile.TemporaryDirectory(prefix="sentinel-gguf-") as folder:
        paths = [export_gguf(m, tokenizer, Path(folder) / f"{name}.gguf", dtype=dtype)
                 for name, m in (("dense", dense), ("pruned", pruned))]
        n_ctx = prompt_tokens + new_tokens + 8
        with LlamaCpp(paths[0], n_ctx=n_ctx, logits_all=False) as a, LlamaCpp(paths[1], n_ctx=n_ctx, logits_all=False) as b:
            timed = [(a.speed(prompt, new_tokens, rounds=1), b.speed(prompt, new_tokens, rounds=1)) for _ in range(rounds)]
        context = prompt_tokens + new_tokens / 2
        parts = [decode_bytes(p) for p in paths]  # one read of each file's header
        step_bytes = [weights + kv * context for weights, kv in parts]
        kv_bytes = [kv for _, kv in parts]
    out = {"generation_engine": f"llama.cpp {dtype}", "generation_threads": timed[0][0].threads,
           "kv_bytes_per_token_before": kv_bytes[0], "kv_bytes_per_token_after": kv_bytes[1],
           "ideal_prefill_speedup": prefill_flops(dense, prompt_tokens) / prefill_flops(pruned, prompt_tokens),
           "ideal_decode_speedup": step_bytes[0] / step_bytes[1]}
    for kind in ("prefill", "decode"):
        before = [getattr(d, f"{kind}_tokens_per_s") for d, _ in timed]
        after = [getattr(p, f"{kind}_tokens_per_s") for _, p in timed]
        out[f"{kind}_tps_before"], out[f"{kind}_tps_after"] = float(np.median(before)), float(np.median(after))
        out[f"{kind}_speedup_rounds"] = [p / d for d, p in zip(before, after)]
    return out


def check() -> str:
    """Exports the shipped tiny-llama, runs it in llama.cpp and compares logits with PyTorch: one line."""
    import tempfile

    import torch

    from sentinel.export.gguf_export import export_gguf
    from sentinel.models.loading import load_model

    llama_cpp = _bindings()
    model, tokenizer = load_model("sentinel/tiny-llama")
    tokens = tokenizer("The check decodes a sentence.")["input_ids"]
    with tempfile.TemporaryDirectory() as folder:
        path = export_gguf(model, tokenizer, Path(folder) / "check.gguf", dtype="f32")
        with LlamaCpp(path, n_ctx=64) as engine:
            ours = engine.logits(tokens)
    with torch.inference_mode():
        reference = model(torch.tensor([tokens])).logits[0].numpy()
    gap = float(np.abs(ours - reference).max() / np.abs(reference).max())
    if not gap < 1e-3:
        raise LlamaCppUnavailable(f"llama.cpp: logits differ from PyTorch by {gap:.2g} of their scale on tiny-llama")
    return f"llama.cpp {llama_cpp.__version__} runs here: tiny-llama logits within {gap:.1e} of PyTorch's scale"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sentinel.export.llamacpp")
    parser.add_argument("--check", action="store_true", help="check that the installed llama.cpp runs here")
    args = parser.parse_args(argv)
    if not args.check:
        parser.print_help()
        return 2
    try:
        print(check())
    except LlamaCppUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
