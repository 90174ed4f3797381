"""Speed where small models are served: SmolLM2-135M's pruned layouts exported to GGUF and run by llama.cpp on the
CPU, against the dense export and against a ceiling measured in the same engine.

Layouts (gradient importance, scored once on calibration windows of WikiText-2's score split):
- `gradient 30% global` / `gradient 50% global`: the criterion's own layout, a different head count per layer
  (llama.cpp's per-layer `deci` architecture);
- `gradient uniform 33%` / `gradient uniform 67%`: policy `uniform`, the same number of KV groups from every layer
  (a plain `llama` GGUF); SmolLM2 has 3 KV groups per layer, so uniform layouts come in thirds.
Each in f16 and q8_0. Prefill of 128 tokens and greedy decode of 128 tokens at batch 1, 2 threads; the dense and the
pruned file timed alternately, 7 rounds after a warm-up: each speedup is the median [min, max] of the rounds' ratios.

The ceiling is measured, not assumed (Amdahl): an export with every attention sublayer dropped but layer 0's (llama.cpp
reads the cache's shape from it: 261 of 270 heads) is timed against the dense one the same way, which gives
attention's share a of a prefill and of a decode step (a = (1 - dense tokens/s / bare tokens/s) / (261/270), per
round: every layer has the same shape, so each layer's attention costs the same). A layout removing a fraction f of the heads can at best remove
f of that time, so its ceiling is 1 / (1 - a f), with the rounds' spread; per-head layouts keep each sublayer's
fixed costs, so they may stay below it, and only a layout that drops whole sublayers can reach it. The table gives
measured / ceiling with an interval from the rounds (min measured / max ceiling, max measured / min ceiling), and
beside it the former bytes-only decode ratio (weights of the file + f16 KV cache), which is no ceiling: it misses
the per-sublayer costs and the attention over the cache.
Per-layer layouts are timed with llama.cpp's flash attention off (the default here) and on: without it llama.cpp pads
every layer's V cache to the widest layer's.

    python benchmarks/llamacpp_speed.py            # writes benchmarks/results/llamacpp_speed.{json,md}
    python benchmarks/llamacpp_speed.py --render   # the .md anew from the saved .json
"""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import sentinel
from orchestrator.analyze.formatting import speed_text
from orchestrator.analyze.stats import ceiling_spread, rounds_spread
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


def no_attention(model):
    """The model with every attention sublayer removed but layer 0's (llama.cpp reads the cache's shape from it), and
    the share of the heads that removes."""
    layout = sentinel.head_layout(model)
    bare = sentinel.prune_heads(copy.deepcopy(model), {layer: list(range(h)) for layer, h in enumerate(layout.heads)
                                                       if layer > 0})
    return bare, 1 - layout.heads[0] / layout.total_heads


def attention_shares(rounds: list[tuple], removed: float) -> dict[str, list[float]]:
    """Attention's share of a prefill and of a decode step in each round of (dense, bare) timings: the time the bare
    model saves over the share of the attention it removes (every layer has the same shape, so each layer's
    attention costs the same)."""
    return {kind: [(1 - getattr(d, f"{kind}_tokens_per_s") / getattr(n, f"{kind}_tokens_per_s")) / removed
                   for d, n in rounds] for kind in ("prefill", "decode")}


def write_markdown(rows: list[dict], machine: str) -> None:
    """benchmarks/results/llamacpp_speed.md from the measured rows (`--render` redoes it from the saved JSON)."""
    def cell(r, k):
        measured = speed_text(r[f"{k}_speedup"], r[f"{k}_min"], r[f"{k}_max"], *(float("nan"),) * 4)
        return (f"{measured} of ceiling {r[f'{k}_ceiling']:.3g}x [{r[f'{k}_ceiling_min']:.3g}, "
                f"{r[f'{k}_ceiling_max']:.3g}]: {r[f'{k}_of_ceiling']:.2f} [{r[f'{k}_of_ceiling_min']:.2f}, "
                f"{r[f'{k}_of_ceiling_max']:.2f}] of it")

    lines = ["| layout | weights | GGUF architecture | flash attention | heads removed | file MiB dense → pruned | "
             "prefill: measured of measured ceiling | decode, batch 1: measured of measured ceiling | "
             "decode bytes ratio (no ceiling) | decode tokens/s dense → pruned |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['dtype']} | {r['architecture']} | {'on' if r['flash_attn'] else 'off'} | "
                     f"{r['heads_removed']} of {r['heads_total']} | {r['file_mib_dense']:.0f} → {r['file_mib']:.0f} | "
                     f"{cell(r, 'prefill')} | {cell(r, 'decode')} | {r['decode_ideal']:.3g}x | "
                     f"{r['decode_dense']:.0f} → {r['decode_pruned']:.0f} |")
    share_lines = ["| weights | flash attention | attention's share of prefill | attention's share of a decode step |",
                   "|---|---|---|---|"]
    for dtype in ("f16", "q8_0"):
        for flash in (False, True):
            at = [r for r in rows if r["dtype"] == dtype and r["flash_attn"] == flash]
            if at:
                share_lines.append(f"| {dtype} | {'on' if flash else 'off'} | {at[0]['prefill_attention_share']:.0%} | "
                                   f"{at[0]['decode_attention_share']:.0%} |")
    (RESULTS / "llamacpp_speed.md").write_text(
        f"# SmolLM2-135M in llama.cpp: pruned layouts against the dense export\n\n"
        f"`python benchmarks/llamacpp_speed.py` ({machine}); prefill of {PROMPT} tokens of WikiText-2, then {NEW} "
        f"greedy tokens, batch 1; dense and pruned alternately, {ROUNDS} rounds after a warm-up: each speedup is the "
        f"median [min, max] of the rounds' ratios. The ceiling is measured: an export without attention in any layer "
        f"but layer 0 (261 of 270 heads) timed against the dense one gives attention's share a of the time (the time "
        f"saved over 261/270; median of the rounds below); a layout "
        f"removing a fraction f of the heads can at best gain 1 / (1 - a f) (Amdahl), with the rounds' spread; "
        f"measured / ceiling with [min measured / max ceiling, max measured / min ceiling]. The bytes ratio is the "
        f"former decode 'ideal', shown for comparison: it is no ceiling.\n\n"
        + "\n".join(lines) + "\n\nAttention's measured share of the time (median of the rounds):\n\n"
        + "\n".join(share_lines) + "\n")


def main() -> None:
    if sys.argv[1:] == ["--render"]:  # the table anew from the saved rows, nothing timed
        saved = json.loads((RESULTS / "llamacpp_speed.json").read_text())
        write_markdown(saved["rows"], saved["machine"])
        print((RESULTS / "llamacpp_speed.md").read_text())
        return
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
            bare, bare_removed = no_attention(model)
            bare_path = export_gguf(bare, tokenizer, Path(folder) / f"no-attention-{dtype}.gguf", dtype=dtype)
            shares = {flash: attention_shares(timed_pair(dense_path, bare_path, prompt, flash), bare_removed)
                      for flash in (False, True)}
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
                        row[f"{kind}_attention_share"] = statistics.median(shares[flash_attn][kind])
                        row.update({f"{kind}_{k}": v for k, v in ceiling_spread(
                            ratios, shares[flash_attn][kind], selection.selected / 270).items()})
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                del pruned
    import llama_cpp

    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, llama.cpp via llama-cpp-python {llama_cpp.__version__} "
               f"({default_threads()} threads)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "llamacpp_speed.json").write_text(json.dumps(
        {"machine": machine, "prompt_tokens": PROMPT, "new_tokens": NEW, "rounds": ROUNDS, "rows": rows}, indent=1))
    write_markdown(rows, machine)
    print((RESULTS / "llamacpp_speed.md").read_text())


if __name__ == "__main__":
    main()
