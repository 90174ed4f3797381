"""Speed where small models are served: SmolLM2-135M's pruned layouts exported to GGUF and run by llama.cpp on the
CPU, against the dense export, with the realised share of the ideal gain.

Layouts (gradient importance, scored once on calibration windows of WikiText-2's score split):
- `gradient 30% global` / `gradient 50% global`: the criterion's own layout, a different head count per layer
  (llama.cpp's per-layer `deci` architecture);
- `gradient uniform 33%` / `gradient uniform 67%`: policy `uniform`, the same number of KV groups from every layer
  (a plain `llama` GGUF); SmolLM2 has 3 KV groups per layer, so uniform layouts come in thirds.
Each in f16 and q8_0. Prefill of 128 tokens and greedy decode of 128 tokens at batch 1, 2 threads; the dense and the
pruned file timed alternately, 7 rounds after a warm-up: each speedup is the median [min, max] of the rounds'
ratios, then the realised share of the ideal gain, (measured - 1) / (ideal - 1), with its spread. Ideal: FLOPs for
prefill (the LM head on the last position only, as llama.cpp computes it); bytes read per decode step for decode
(weights of the file + f16 KV cache; decode is memory-bound).
Per-layer layouts are timed with llama.cpp's flash attention off (the default here) and on: without it llama.cpp pads
every layer's V cache to the widest layer's.

    python benchmarks/llamacpp_speed.py      # writes benchmarks/results/llamacpp_speed.{json,md}
"""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import sentinel
from orchestrator.analyze.formatting import speed_text
from orchestrator.analyze.stats import rounds_spread
from sentinel.data.blocks import batches, pack_blocks, split_tokens
from sentinel.export import export_gguf, export_architecture
from sentinel.export.llamacpp import LlamaCpp, decode_bytes, default_threads, prefill_flops

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT, NEW, ROUNDS = 128, 128, 7
LAYOUTS = {  # name: (strategy, level, policy)
    "gradient 30% global": ("gradient", 0.3, "global"),
    "gradient uniform 33%": ("gradient", 0.3, "uniform"),
    "attention_drop 30%": ("attention_drop", 0.3, "global"),
    "gradient 50% global": ("gradient", 0.5, "global"),
    "gradient uniform 67%": ("gradient", 0.5, "uniform"),
    "attention_drop 50%": ("attention_drop", 0.5, "global"),
}


def timed_pair(dense_path: Path, pruned_path: Path, prompt: list[int], flash_attn: bool) -> list[tuple]:
    """(dense, pruned) EngineSpeed of each round, alternating, both files open at once."""
    with LlamaCpp(dense_path, n_ctx=PROMPT + NEW + 8, logits_all=False, flash_attn=flash_attn) as dense, \
            LlamaCpp(pruned_path, n_ctx=PROMPT + NEW + 8, logits_all=False, flash_attn=flash_attn) as pruned:
        return [(dense.speed(prompt, NEW, rounds=1), pruned.speed(prompt, NEW, rounds=1)) for _ in range(ROUNDS)]


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    model, tokenizer = sentinel.load_model("sentinel/smollm2-135m")
    calibration = batches(pack_blocks(split_tokens("wikitext-2", tokenizer, "score")[: 8 * 128], 128), 4)
    scores = {name: sentinel.score_heads(name, model, calibration) for name in ("gradient", "attention_drop")}
    prompt = split_tokens("wikitext-2", tokenizer, "eval")[:PROMPT].tolist()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for dtype in ("f16", "q8_0"):
            dense_path = export_gguf(model, tokenizer, Path(folder) / f"dense-{dtype}.gguf", dtype=dtype)
            dense_bytes = decode_bytes(dense_path)  # the dense file's header, read once
            for name, (strategy, level, policy) in LAYOUTS.items():
                selection = sentinel.select_heads(scores[strategy], level, policy=policy,
                                                  min_heads_per_layer=0 if strategy == "attention_drop" else 1)
                pruned = sentinel.prune_heads(copy.deepcopy(model), selection.heads)
                layout = sentinel.head_layout(pruned)
                path = export_gguf(pruned, tokenizer, Path(folder) / f"{name.replace(' ', '-').replace('%', '')}-{dtype}.gguf", dtype=dtype)
                architecture = export_architecture(layout.heads, layout.kv_heads)
                context = PROMPT + NEW / 2
                step = [weights + kv * context for weights, kv in (dense_bytes, decode_bytes(path))]
                ideal = {"prefill": prefill_flops(model, PROMPT) / prefill_flops(pruned, PROMPT),
                         "decode": step[0] / step[1]}
                for flash_attn in ((False, True) if architecture == "deci" else (False,)):
                    start = time.perf_counter()
                    rounds = timed_pair(dense_path, path, prompt, flash_attn)
                    row = {"layout": name, "dtype": dtype, "architecture": architecture, "flash_attn": flash_attn,
                           "heads_removed": selection.selected, "heads_total": 270,
                           "file_mib_dense": dense_path.stat().st_size / 2**20, "file_mib": path.stat().st_size / 2**20,
                           "threads": rounds[0][0].threads, "batch": rounds[0][0].batch,
                           "seconds": time.perf_counter() - start}
                    for kind in ("prefill", "decode"):
                        field = f"{kind}_tokens_per_s"
                        ratios = [getattr(p, field) / getattr(d, field) for d, p in rounds]
                        row[f"{kind}_dense"] = statistics.median(getattr(d, field) for d, _ in rounds)
                        row[f"{kind}_pruned"] = statistics.median(getattr(p, field) for _, p in rounds)
                        (row[f"{kind}_speedup"], row[f"{kind}_min"], row[f"{kind}_max"], row[f"{kind}_share"],
                         row[f"{kind}_share_min"], row[f"{kind}_share_max"]) = rounds_spread(
                            pd.Series([ratios]), pd.Series([ideal[kind]]))
                        row[f"{kind}_ideal"] = ideal[kind]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                del pruned
    import llama_cpp

    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, llama.cpp via llama-cpp-python {llama_cpp.__version__} "
               f"({default_threads()} threads)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "llamacpp_speed.json").write_text(json.dumps(
        {"machine": machine, "prompt_tokens": PROMPT, "new_tokens": NEW, "rounds": ROUNDS, "rows": rows}, indent=1))
    cell = lambda r, k: speed_text(*(r[f"{k}{s}"] for s in ("_speedup", "_min", "_max", "_share", "_share_min",  # noqa: E731
                                                             "_share_max", "_ideal")))
    lines = ["| layout | weights | GGUF architecture | flash attention | heads removed | file MiB dense → pruned | "
             "prefill | decode, batch 1 | decode tokens/s dense → pruned |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['dtype']} | {r['architecture']} | {'on' if r['flash_attn'] else 'off'} | "
                     f"{r['heads_removed']} of {r['heads_total']} | {r['file_mib_dense']:.0f} → {r['file_mib']:.0f} | "
                     f"{cell(r, 'prefill')} | {cell(r, 'decode')} | {r['decode_dense']:.0f} → {r['decode_pruned']:.0f} |")
    (RESULTS / "llamacpp_speed.md").write_text(
        f"# SmolLM2-135M in llama.cpp: pruned layouts against the dense export\n\n"
        f"`python benchmarks/llamacpp_speed.py` ({machine}); prefill of {PROMPT} tokens of WikiText-2, then {NEW} "
        f"greedy tokens, batch 1; dense and pruned alternately, {ROUNDS} rounds after a warm-up: each speedup is the "
        f"median [min, max] of the rounds' ratios, then the realised share of the ideal gain, (measured - 1) / "
        f"(ideal - 1), median [min, max]. Ideal: FLOPs (prefill), bytes read per decode step (decode).\n\n"
        + "\n".join(lines) + "\n")
    print((RESULTS / "llamacpp_speed.md").read_text())


if __name__ == "__main__":
    main()
