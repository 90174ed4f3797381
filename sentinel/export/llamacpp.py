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
                 logits_all: bool = True) -> None:
        llama_cpp = _bindings()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"gguf: {str(path)!r} is not a file")
        self.threads = threads or default_threads()
        self.batch = batch
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=batch, n_ubatch=batch,
                                   n_threads=self.threads, n_threads_batch=self.threads, logits_all=logits_all,
                                   n_gpu_layers=0, verbose=False)

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
        """Prefill and decode tokens/s at batch 1 (greedy decode; the first round after a warm-up)."""
        prefill, decode = [], []
        for round_ in range(rounds + 1):
            self.llm.reset()
            start = time.perf_counter()
            self.llm.eval(list(map(int, prompt)))
            middle = time.perf_counter()
            for _ in range(new_tokens):
                token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
                self.llm.eval([token])
            end = time.perf_counter()
            if round_:  # round 0 warms caches and the thread pool
                prefill.append(len(prompt) / (middle - start))
                decode.append(new_tokens / (end - middle))
        return EngineSpeed(float(np.median(prefill)), float(np.median(decode)), tuple(prefill), tuple(decode),
                           len(prompt), new_tokens, self.threads, self.batch)


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
