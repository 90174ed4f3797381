"""The seed project's benchmark command line, run through the orchestrator (Ray Tune, Parquet results).

    python scripts/benchmark_with_metrics.py --model_name distilgpt2 \
        --pruning_strategies "entropy,magnitude,random" --pruning_levels "0.1,0.3,0.5" \
        --learning_steps 100 --eval_dataset gutenberg --use_real_data

builds the same grid as configs/seed-distilgpt2.yaml and runs it with `sentinel-bench run`'s machinery. Offline, a
shipped model name (sentinel/tiny-gpt2) or a local folder works in place of distilgpt2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from orchestrator.cli import analyze_results  # noqa: E402
from orchestrator.spec import SpecError, parse_spec  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name", default="distilgpt2", help="hub name, shipped sentinel/... name, or folder")
    p.add_argument("--pruning_strategies", default="entropy,magnitude,random", help="comma-separated")
    p.add_argument("--pruning_levels", default="0.1,0.3,0.5", help="comma-separated fractions in (0, 1)")
    p.add_argument("--learning_steps", type=int, default=100, help="recovery fine-tuning steps (0: none)")
    p.add_argument("--learning_rate", type=float, default=5e-5)
    p.add_argument("--eval_dataset", default="gutenberg", help="gutenberg, wikitext-2, a file/folder, or path:name:split")
    p.add_argument("--use_real_data", action="store_true",
                   help="accepted for compatibility: sentinel-bench always evaluates on real text")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--max_length", type=int, default=128, help="sequence length (perplexity window)")
    p.add_argument("--eval_tokens", type=int, default=16384,
                   help="tokens of the eval split each evaluation reads, in windows spread over it (0: the whole split, "
                        "which on Gutenberg is minutes per evaluation); as configs/seed-distilgpt2.yaml")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--gpu", type=float, default=0.0, help="GPU share per trial (e.g. 0.5)")
    p.add_argument("--output_dir", default="results")
    p.add_argument("--experiment", default=None, help="experiment name (default: seed-<model>)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--address", default=None, help="an existing Ray cluster")
    return p


def _csv(text: str, cast) -> list:
    try:
        return [cast(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise SpecError(f"{text!r} is not a comma-separated list of {cast.__name__} values") from None


def spec_from_args(args: argparse.Namespace) -> dict:
    """The seed flags as an experiment mapping (the same shape as configs/seed-distilgpt2.yaml)."""
    name = args.experiment or "seed-" + Path(args.model_name).name.replace("/", "-")
    steps = args.learning_steps
    return {
        "experiment": name,
        "models": [args.model_name],
        "strategies": _csv(args.pruning_strategies, str),
        "levels": _csv(args.pruning_levels, float),
        "seeds": _csv(args.seeds, int),
        "data": {"source": args.eval_dataset, "seq_len": args.max_length, "stride": args.max_length // 2,
                 "batch_size": args.batch_size, "eval_tokens": args.eval_tokens},
        "finetune": None if steps == 0 else {
            "steps": steps, "lr": args.learning_rate, "warmup_steps": min(10, steps), "eval_every": max(1, steps // 5)},
        "device": args.device,
        "resources": {"cpu": 1, "gpu": args.gpu},
        "output": args.output_dir,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = parse_spec(spec_from_args(args))
        from orchestrator.runner import run_experiment

        cell = spec.cells[0]
        every = f", every {cell.finetune.eval_every} of {cell.finetune.steps} fine-tuning steps" if cell.finetune else ""
        print(f"evaluation: {cell.data.eval_tokens or 'every'} token(s) of the {cell.data.source} eval split "
              f"(--eval_tokens; 0 = the whole split){every}")

        summary = run_experiment(spec, address=args.address, resume=args.resume, overwrite=args.overwrite)
    except SpecError as exc:
        print(f"benchmark_with_metrics: error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary.ok} ok, {summary.failed} failed of {summary.total} trials; results in {summary.output_dir}")
    if summary.ok:
        analyze_results(summary.output_dir)
    return 0 if summary.failed == 0 and summary.complete else 1


if __name__ == "__main__":
    sys.exit(main())
