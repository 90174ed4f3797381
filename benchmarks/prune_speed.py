"""Forward tokens/s of dense vs physically pruned models, next to the FLOP-ideal speedup.

Models (random init, no download): a distilgpt2-shaped GPT-2 (6 layers, 12 heads, d=768) and a
Llama-shaped model with GQA (6 layers, 12 query heads, 4 KV heads, d=768). Sequence length 512, CPU.
Heads are removed evenly per layer (for GQA in whole KV groups: 25/50/75% = 1/2/3 of 4 groups).

Two timings: the transformer stack alone (`model.base_model`, where heads live), and the full causal
LM including its vocabulary projection, each against a measured ceiling and, for comparison, the speedup counted
FLOPs allow. The ceiling (Amdahl): the model with every attention sublayer but layer 0's removed is timed against
the dense one the same way, which gives attention's share a of the forward's time per round (the time saved over the
share of the attention removed: the layers have one shape); a layout removing a fraction f of the heads can at best
gain 1 / (1 - a f). GPT-2 cannot lose a whole attention sublayer, so it has no measured ceiling. measured / ceiling comes with the interval of the rounds.

    python benchmarks/prune_speed.py            # writes benchmarks/results/prune_speed.{json,md}
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pandas as pd
import torch
import transformers

import sentinel
from orchestrator.analyze.stats import ceiling_spread, rounds_spread
from sentinel.eval import compare_throughput
from sentinel.models.removal import EMPTY_LAYER_FAMILIES

LEVELS = (0.25, 0.5, 0.75)


def gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(n_layer=6, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
    return transformers.GPT2LMHeadModel(config)


def llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(
        num_hidden_layers=6, num_attention_heads=12, num_key_value_heads=4, hidden_size=768,
        intermediate_size=2048, vocab_size=32000, max_position_embeddings=1024,
    )
    return transformers.LlamaForCausalLM(config)


def flops(model: torch.nn.Module, seq: int, stack_only: bool) -> float:
    """Multiply-adds x 2 of one forward over `seq` tokens: every Linear/Conv1D plus QK^T and PV."""
    total = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            total += 2 * seq * module.in_features * module.out_features
        elif isinstance(module, transformers.pytorch_utils.Conv1D):
            total += 2 * seq * module.weight.shape[0] * module.nf
    if stack_only and model.get_output_embeddings() is not None:
        head = model.get_output_embeddings()
        total -= 2 * seq * head.in_features * head.out_features
    layout = sentinel.head_layout(model)
    total += sum(2 * 2 * seq * seq * h * layout.head_dim for h in layout.heads)  # scores and weighted sum
    return total


def removal(model: torch.nn.Module, level: float) -> dict[int, list[int]]:
    layout = sentinel.head_layout(model)
    group = layout.group_size(0)
    n_groups = round(level * layout.kv_heads[0])  # whole KV groups (group == 1 without GQA)
    return {layer: list(range(n_groups * group)) for layer in range(layout.num_layers)}


def run(seq: int, iters: int) -> list[dict]:
    rows = []
    for name, build in (("gpt2-distil-shape", gpt2), ("llama-gqa", llama)):
        torch.manual_seed(0)
        dense = build().eval()
        shares = {"stack": [float("nan")], "full": [float("nan")]}
        if dense.config.model_type in EMPTY_LAYER_FAMILIES:  # GPT-2 cannot lose a whole attention sublayer: no ceiling
            bare = build().eval()
            bare.load_state_dict(dense.state_dict())
            layout = sentinel.head_layout(bare)  # every attention sublayer but layer 0's (the cache's shape) removed
            sentinel.prune_heads(bare, {layer: list(range(h)) for layer, h in enumerate(layout.heads) if layer > 0})
            removed = 1 - layout.heads[0] / layout.total_heads  # of the attention: each layer's costs the same
            for part in ("stack", "full"):
                pick = (lambda m: m.base_model) if part == "stack" else (lambda m: m)
                shares[part] = [(1 - d / b) / removed for d, b in compare_throughput(
                    pick(dense), pick(bare), seq_len=seq, rounds=iters, iters=2)]
        for level in LEVELS:
            model = build().eval()
            model.load_state_dict(dense.state_dict())
            sentinel.prune_heads(model, removal(model, level))
            for part in ("stack", "full"):
                pick = (lambda m: m.base_model) if part == "stack" else (lambda m: m)
                rounds = compare_throughput(pick(dense), pick(model), seq_len=seq, rounds=iters, iters=2)
                before, after = statistics.median(d for d, _ in rounds), statistics.median(p for _, p in rounds)
                ideal = flops(dense, seq, part == "stack") / flops(model, seq, part == "stack")
                ratios = [p / d for d, p in rounds]
                speedup, low, high, share, share_low, share_high = rounds_spread(pd.Series([ratios]), pd.Series([ideal]))
                removed = 1 - sentinel.head_layout(model).total_heads / sentinel.head_layout(dense).total_heads
                ceiling = ceiling_spread(ratios, shares[part], removed)
                rows.append({
                    "model": name, "part": part, "level": level, "seq_len": seq,
                    "heads": sentinel.head_layout(model).total_heads,
                    "dense_tokens_per_s": round(before, 1), "pruned_tokens_per_s": round(after, 1),
                    "measured_speedup": round(speedup, 3), "speedup_min": round(low, 3), "speedup_max": round(high, 3),
                    "ideal_speedup": round(ideal, 3), "share_of_ideal_gain": round(share, 3),
                    "share_min": round(share_low, 3), "share_max": round(share_high, 3),
                    "attention_share": round(float(pd.Series(shares[part]).median()), 3),
                    **{k: round(v, 3) for k, v in ceiling.items()},
                })
                print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Physically pruned vs dense: forward tokens/s (CPU)", "",
        f"`python benchmarks/prune_speed.py` — torch {meta['torch']}, {meta['threads']} threads, seq {meta['seq_len']}, "
        f"batch 1, `sentinel.eval.compare_throughput`: {meta['iters']} alternating rounds of dense and pruned (1 warm-up + "
        "2 timed forwards each); tok/s are the rounds' medians, the speedup the median [min, max] of the rounds' ratios. "
        "The ceiling is measured: the model without any attention timed against the dense one gives attention's share "
        "a of the time; removing a fraction f of the heads gains at most 1 / (1 - a f) (median [min, max] over the "
        "rounds of a), and measured / ceiling has the interval [min measured / max ceiling, max measured / min "
        "ceiling]. The FLOP count's speedup and the share of its gain (measured - 1) / (ideal - 1) are beside it.", "",
        "| model | part | heads removed | heads left | dense tok/s | pruned tok/s | measured speedup [min, max] | "
        "attention's share of the time | measured ceiling [min, max] | measured / ceiling [interval] | FLOP count's "
        "speedup | share of its gain [min, max] |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['part']} | {r['level']:.0%} | {r['heads']} | {r['dense_tokens_per_s']} | "
            f"{r['pruned_tokens_per_s']} | {r['measured_speedup']} [{r['speedup_min']}, {r['speedup_max']}] | "
            + (f"{r['attention_share']:.0%} | {r['ceiling']} [{r['ceiling_min']}, {r['ceiling_max']}] | "
               f"{r['of_ceiling']:.2f} [{r['of_ceiling_min']:.2f}, {r['of_ceiling_max']:.2f}] | "
               if r['attention_share'] == r['attention_share'] else "not measured | | | ") +
            f"{r['ideal_speedup']} | "
            + (f"{r['share_of_ideal_gain']:.0%} [{r['share_min']:.0%}, {r['share_max']:.0%}] |"
               if r['share_of_ideal_gain'] == r['share_of_ideal_gain'] else "none: the count is within 20% of 1 |")
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--iters", type=int, default=5, help="alternating rounds")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rows = run(args.seq_len, args.iters)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "seq_len": args.seq_len, "iters": args.iters}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prune_speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / "prune_speed.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
