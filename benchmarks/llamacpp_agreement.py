"""Does llama.cpp run our exports as PyTorch runs the models? Logits and perplexity of each export in llama.cpp
against the same model in PyTorch (float32), on the same token windows.

Models and layouts: the shipped tiny-llama pruned non-uniformly with bias compensation; SmolLM2-135M dense (also
against the Q4_1 GGUF it ships as, run by llama.cpp itself), and pruned by gradient importance at 30% and 50%
(global policy: a different head count per layer, llama.cpp's per-layer `deci` architecture) and with the uniform
policy (a plain `llama` file), and with 9 of its 30 attention sublayers removed whole (attention_drop: layers without
attention in the per-layer file). Each in f32, f16 and q8_0. Windows: 16 of 128 tokens from the start of WikiText-2's
evaluation split (the project's split of the bundled text), each scored from an empty context.

    python benchmarks/llamacpp_agreement.py      # writes benchmarks/results/llamacpp_agreement.{json,md}
"""
from __future__ import annotations

import copy
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

import sentinel
from sentinel.data.blocks import batches, pack_blocks, split_tokens
from sentinel.eval.perplexity import window_perplexity
from sentinel.export import export_gguf, export_architecture
from sentinel.export.llamacpp import LlamaCpp

RESULTS = Path(__file__).resolve().parent / "results"
WINDOWS, LENGTH = 16, 128


def compare(model, tokenizer, windows: torch.Tensor, name: str, folder: Path) -> list[dict]:
    layout = sentinel.head_layout(model)
    with torch.inference_mode():
        reference = model(windows[:1]).logits[0].numpy()
    ours = window_perplexity(model, windows).value
    rows = []
    for dtype in ("f32", "f16", "q8_0"):
        path = export_gguf(model, tokenizer, folder / f"{name}-{dtype}.gguf".replace(" ", "_"), dtype=dtype,
                           overwrite=True)
        with LlamaCpp(path, n_ctx=2 * LENGTH) as engine:
            logits = engine.logits(windows[0].tolist())
            theirs = engine.perplexity(windows.numpy())
        rows.append({"model": name, "heads": layout.total_heads, "architecture": export_architecture(layout.heads, layout.kv_heads),
                     "dtype": dtype, "logit_gap": float(np.abs(logits - reference).max() / np.abs(reference).max()),
                     "perplexity_torch": ours, "perplexity_llamacpp": theirs, "relative": theirs / ours - 1})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, tokenizer = sentinel.load_model("sentinel/tiny-llama")
        windows = split_tokens("wikitext-2", tokenizer, "eval")[: WINDOWS * LENGTH].view(WINDOWS, LENGTH)
        calibration = batches(pack_blocks(split_tokens("wikitext-2", tokenizer, "score")[: 8 * LENGTH], LENGTH), 4)
        sentinel.prune_heads(model, {0: [0, 1], 2: [4, 5, 6, 7], 3: [2, 3]}, compensate=calibration)
        rows += compare(model, tokenizer, windows[:, :64], "tiny-llama, 8 of 32 heads, compensated", folder)

        model, tokenizer = sentinel.load_model("sentinel/smollm2-135m")
        windows = split_tokens("wikitext-2", tokenizer, "eval")[: WINDOWS * LENGTH].view(WINDOWS, LENGTH)
        calibration = batches(pack_blocks(split_tokens("wikitext-2", tokenizer, "score")[: 8 * LENGTH], LENGTH), 4)
        with LlamaCpp(model.sentinel_gguf, n_ctx=2 * LENGTH) as engine:
            source = engine.perplexity(windows.numpy())
        rows += compare(model, tokenizer, windows, "SmolLM2 dense", folder)
        scores = sentinel.score_heads("gradient", model, calibration)
        for level, policy in ((0.3, "global"), (0.5, "global"), (0.3, "uniform")):
            pruned = sentinel.prune_heads(copy.deepcopy(model),
                                          sentinel.select_heads(scores, level, policy=policy).heads)
            rows += compare(pruned, tokenizer, windows, f"SmolLM2 gradient {level:.0%} {policy}", folder)
        drop = sentinel.score_heads("attention_drop", model, calibration)
        pruned = sentinel.prune_heads(copy.deepcopy(model), sentinel.select_heads(drop, 0.3, min_heads_per_layer=0).heads)
        rows += compare(pruned, tokenizer, windows, "SmolLM2 attention_drop 30% (9 sublayers)", folder)
    import llama_cpp

    machine = f"{platform.machine()}, llama-cpp-python {llama_cpp.__version__}, torch {torch.__version__}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "llamacpp_agreement.json").write_text(json.dumps(
        {"machine": machine, "windows": WINDOWS, "length": LENGTH, "source_q4_1_perplexity": source, "rows": rows},
        indent=1))
    lines = ["| model | query heads | GGUF architecture | weights | largest logit gap / largest logit | perplexity "
             "PyTorch (f32) | perplexity llama.cpp | llama.cpp / PyTorch - 1 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['heads']} | {r['architecture']} | {r['dtype']} | {r['logit_gap']:.1e} | "
                     f"{r['perplexity_torch']:.3f} | {r['perplexity_llamacpp']:.3f} | {r['relative']:+.2e} |")
    dense = next(r for r in rows if r["model"] == "SmolLM2 dense" and r["dtype"] == "f32")
    (RESULTS / "llamacpp_agreement.md").write_text(
        f"# llama.cpp against PyTorch on our GGUF exports\n\n`python benchmarks/llamacpp_agreement.py` ({machine}); "
        f"{WINDOWS} windows of {LENGTH} tokens of WikiText-2's evaluation split (tiny-llama: 64 tokens, its "
        f"context), each from an empty context; the logit gap is over the first window, all positions.\n\n"
        + "\n".join(lines) + f"\n\nThe Q4_1 GGUF SmolLM2 ships as, run by llama.cpp on the same windows: perplexity "
        f"{source:.3f} ({source / dense['perplexity_llamacpp'] - 1:+.2%} from our f32 export of its dequantised "
        f"weights).\n")
    print((RESULTS / "llamacpp_agreement.md").read_text())


if __name__ == "__main__":
    main()
