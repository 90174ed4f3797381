"""Integration check of the seed API: entropy and magnitude pruning really change a model's loss.

Loads a model with `sentinel.load_model`, collects attention entropy on a few bundled Gutenberg blocks
(the `score` split), masks heads with `entropy_based_pruning` and, on a fresh copy,
`magnitude_based_pruning`, and prints the next-token loss and perplexity on held-out blocks (the
`eval` split) before and after each.

    python scripts/test_entropy_magnitude_pruning.py --model_name sentinel/tiny-gpt2
    python scripts/test_entropy_magnitude_pruning.py --model_name sentinel/tiny-llama --prune_ratio 0.5
"""
from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from sentinel.data import batches, pack_blocks, split_tokens
from sentinel.pruning.entropy_magnitude import (
    collect_attention_distributions,
    compute_attention_entropy,
    entropy_based_pruning,
    magnitude_based_pruning,
)


def load(name: str) -> tuple[nn.Module, object]:
    from sentinel.models.loading import load_model  # imported here: loading is its own module

    model, tokenizer = load_model(name)
    return model.eval(), tokenizer


def mean_loss(model: nn.Module, data: list[dict[str, torch.Tensor]]) -> float:
    """Token-weighted mean next-token cross-entropy over `data` (packed blocks: no padding)."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in data:
            n = batch["input_ids"][:, 1:].numel()  # targets in this batch
            total += float(model(**batch, labels=batch["input_ids"]).loss) * n
            tokens += n
    return total / tokens


def report(label: str, loss: float, pruned: list[tuple[int, int]] | None = None) -> None:
    heads = f"  masked {len(pruned)} heads: {pruned}" if pruned is not None else ""
    print(f"{label:<22} loss {loss:.4f}  perplexity {math.exp(loss):10.2f}{heads}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", default="sentinel/tiny-gpt2")
    parser.add_argument("--prune_ratio", type=float, default=0.3)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=8, help="blocks for scoring and for evaluation each")
    parser.add_argument("--batch_size", type=int, default=4)
    args = parser.parse_args()

    model, tokenizer = load(args.model_name)
    score_data = batches(pack_blocks(split_tokens("gutenberg", tokenizer, "score"), args.seq_len)[: args.blocks], args.batch_size)
    eval_data = batches(pack_blocks(split_tokens("gutenberg", tokenizer, "eval"), args.seq_len)[: args.blocks], args.batch_size)

    dense = mean_loss(model, eval_data)
    report("dense", dense)
    stats = collect_attention_distributions(model, score_data, num_batches=len(score_data))
    entropy = compute_attention_entropy(stats)
    print(f"mean attention entropy per layer (nats): {[round(float(x), 3) for x in entropy.nanmean(1)]}")
    pruned = entropy_based_pruning(model, stats, prune_ratio=args.prune_ratio)
    after_entropy = mean_loss(model, eval_data)
    report("entropy pruning", after_entropy, pruned)

    model, _ = load(args.model_name)  # a fresh copy: the two methods are compared from the same start
    pruned = magnitude_based_pruning(model, prune_ratio=args.prune_ratio)
    after_magnitude = mean_loss(model, eval_data)
    report("magnitude pruning", after_magnitude, pruned)
    if pruned and (after_entropy == dense or after_magnitude == dense):
        raise SystemExit("pruning did not change the loss: the masks are not applied")


if __name__ == "__main__":
    main()
