"""Trains the shipped reference models (sentinel/tiny-gpt2, sentinel/tiny-llama) and their tokenizer.

Nothing can be downloaded here, so the benchmark's default causal LMs are trained on the bundled
public-domain books: the TRAIN split of `split_documents(load_documents("gutenberg"), seed=0)` only; the
score and eval books are never seen. Everything is seeded and runs deterministically on CPU (no dropout,
batches drawn from a `torch.Generator`, initialisation under `torch.random.fork_rng`).

    python scripts/train_reference_models.py            # writes sentinel/reference/{tiny-gpt2,tiny-llama,metrics.json}
    python scripts/train_reference_models.py --steps 20 --out /tmp/ref   # a quick smoke run

Metrics (written to metrics.json and printed): held-out perplexity on the eval books (seq_len 128,
stride 64) against the unigram baseline on the same tokens, and the spread of per-head attention entropy.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sentinel.data import Document, batches, load_documents, pack_blocks, split_documents, token_stream
from sentinel.eval import perplexity
from sentinel.pruning import score_heads

EOS = "<|endoftext|>"
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "sentinel" / "reference"


def train_tokenizer(docs: list[Document], vocab_size: int) -> transformers.PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style: no unknown bytes, no prefix space) with one special token, eos."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([d.text for d in docs], trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, model_max_length=256
    )


def build_configs(vocab_size: int, eos_id: int) -> dict[str, transformers.PretrainedConfig]:
    ids = dict(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, tie_word_embeddings=True)
    return {
        "tiny-gpt2": transformers.GPT2Config(
            n_positions=256, n_embd=128, n_layer=4, n_head=8,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids,  # no dropout: no RNG draws in training
        ),
        "tiny-llama": transformers.LlamaConfig(
            hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=4, max_position_embeddings=256, attention_dropout=0.0, **ids,
        ),
    }


def train(model: torch.nn.Module, stream: torch.Tensor, *, steps: int, batch_size: int, seq_len: int,
          lr: float, seed: int) -> list[float]:
    """AdamW with linear warmup + cosine decay on random windows of the train stream; returns the losses."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    # linear warmup, then cosine from lr down to lr / 10
    schedule = lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    offsets = torch.arange(seq_len)
    model.train()
    losses = []
    for step in range(steps):
        starts = torch.randint(0, stream.numel() - seq_len, (batch_size, 1), generator=g)
        x = stream[starts + offsets]  # [B, T]
        loss = model(input_ids=x, labels=x).loss  # labels are shifted inside the model
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {sum(losses[-100:]) / len(losses[-100:]):.3f} (mean of last 100)", flush=True)
    return losses


def unigram_perplexity(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int) -> float:
    """exp of the cross-entropy of add-one-smoothed train unigram frequencies on the eval tokens."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    logp = counts.log() - counts.sum().log()
    return math.exp(-logp[eval_ids].mean().item())


@torch.no_grad()
def head_entropies(model: torch.nn.Module, blocks: torch.Tensor) -> torch.Tensor:
    """Mean attention entropy (nats) per head over all query positions: `Tensor[layers, heads]`."""
    return -score_heads("entropy", model, batches(blocks, 8)).scores  # the entropy strategy's score is -entropy


def eval_stream(tokenizer, docs: list[Document], max_tokens: int) -> torch.Tensor:
    """The first `max_tokens // len(docs)` tokens of each eval book, joined with eos (a fixed, cheap slice)."""
    per_doc = max_tokens // len(docs)
    pieces = [token_stream(tokenizer, [d])[:per_doc] for d in docs]
    eos = torch.tensor([tokenizer.eos_token_id])
    return torch.cat([t for piece in pieces for t in (piece, eos)][:-1])


def _portable_tokenizer_class(folder: Path) -> None:
    """Names the class `PreTrainedTokenizerFast`: known to transformers 4.x and 5.x (5.x: an alias of TokenizersBackend)."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n")


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REFERENCE_DIR)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--eval-tokens", type=int, default=49152, help="eval slice, spread evenly over the eval books")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.perf_counter()

    # Data: only the train books are used for the tokenizer and the models.
    splits = split_documents(load_documents("gutenberg"), seed=args.seed)
    print("train:", [d.name for d in splits.train], "\nscore:", [d.name for d in splits.score],
          "\neval:", [d.name for d in splits.eval], flush=True)
    tokenizer = train_tokenizer(splits.train, args.vocab_size)
    eos_id = tokenizer.eos_token_id
    train_ids = token_stream(tokenizer, splits.train)
    eval_ids = eval_stream(tokenizer, splits.eval, args.eval_tokens)
    unigram = unigram_perplexity(train_ids, eval_ids, len(tokenizer))
    print(f"tokens: train {train_ids.numel()}, eval {eval_ids.numel()}; unigram ppl {unigram:.1f}", flush=True)
    entropy_blocks = pack_blocks(eval_ids, 128, source="gutenberg eval")[:32]  # [32, 128]

    metrics = {
        "command": "python scripts/train_reference_models.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "data": {"source": "gutenberg", "seed": args.seed, "train_books": [d.name for d in splits.train],
                 "score_books": [d.name for d in splits.score], "eval_books": [d.name for d in splits.eval],
                 "train_tokens": train_ids.numel(), "eval_tokens": eval_ids.numel(),
                 "eval_slice": f"first {args.eval_tokens // len(splits.eval)} tokens of each eval book"},
        "unigram_perplexity": unigram, "models": {},
    }
    for k, (name, config) in enumerate(build_configs(len(tokenizer), eos_id).items()):
        t0 = time.perf_counter()
        with torch.random.fork_rng():  # seeded init without touching the caller's global RNG state
            torch.manual_seed(args.seed + k)
            model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params} parameters", flush=True)
        losses = train(model, train_ids, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                       lr=args.lr, seed=args.seed + k)
        train_s = time.perf_counter() - t0
        # Save in fp16 (half the bytes); sentinel.load_model casts back to fp32.
        out = args.out / name
        model.to(torch.float16).save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        _portable_tokenizer_class(out)
        model.float()
        metric = perplexity(model, eval_ids, seq_len=128, stride=64, dataset="gutenberg", split="eval")
        ppl, n_tokens = metric.value, metric.protocol["tokens"]
        ent = head_entropies(model, entropy_blocks)
        metrics["models"][name] = {
            "architecture": config.architectures[0] if config.architectures else type(model).__name__,
            "parameters": params, "size_bytes": file_size(out), "train_seconds": round(train_s, 1),
            "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
            "eval_perplexity": ppl, "eval_tokens_scored": n_tokens, "seq_len": 128, "stride": 64,
            "head_entropy": {"min": ent.min().item(), "max": ent.max().item(), "std": ent.std().item(),
                             "mean": ent.mean().item(), "per_head": [[round(v, 3) for v in row] for row in ent.tolist()]},
        }
        m = metrics["models"][name]
        print(f"{name}: eval ppl {ppl:.1f} (unigram {unigram:.1f}); head entropy min {m['head_entropy']['min']:.2f}"
              f" max {m['head_entropy']['max']:.2f} std {m['head_entropy']['std']:.2f}; "
              f"{m['size_bytes'] / 1e6:.2f} MB; {train_s:.0f} s", flush=True)
    metrics["total_seconds"] = round(time.perf_counter() - t_start, 1)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps({k: v for k, v in metrics.items() if k != "models"} | {
        n: {k: v for k, v in m.items() if k != "head_entropy"} for n, m in metrics["models"].items()}, indent=1))


if __name__ == "__main__":
    main()
