"""scripts/benchmark_with_metrics.py: the seed command line maps onto the same grid as configs/seed-distilgpt2.yaml."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from orchestrator.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[3]


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_with_metrics", REPO / "scripts" / "benchmark_with_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_flags_build_the_seed_grid():
    script = load_script()
    args = script.build_parser().parse_args([
        "--model_name", "distilgpt2", "--pruning_strategies", "entropy,magnitude,random",
        "--pruning_levels", "0.1,0.3,0.5", "--learning_steps", "100", "--eval_dataset", "gutenberg", "--use_real_data",
    ])
    from_flags = parse_spec(script.spec_from_args(args))
    shipped = load_spec(REPO / "configs" / "seed-distilgpt2.yaml")
    key = lambda c: (c.model, c.strategy, c.level, c.seed, c.data.source, c.data.eval_tokens, c.finetune.steps)  # noqa: E731
    assert sorted(map(key, from_flags.cells)) == sorted(map(key, shipped.cells))


def test_bad_flag_value_exits_2(capsys):
    assert load_script().main(["--pruning_levels", "0.1,high"]) == 2
    assert "float" in capsys.readouterr().err
