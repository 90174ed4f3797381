"""`run --dry-run`: the plan counted as the shared store computes it, an estimate measured here, nothing started and
nothing written."""
from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator import cli
from orchestrator.dry_run import ModelPlan, estimate, plan
from orchestrator.spec import parse_spec
from tests.integration.conftest import save_tiny_gpt2


def config(tmp_path: Path) -> dict:
    model = save_tiny_gpt2(tmp_path / "tiny-gpt2")
    return {"experiment": "dry", "models": [str(model)], "strategies": ["magnitude", "entropy"], "levels": [0.25, 0.5],
            "seeds": [0, 1, 2], "random_reference": {"layouts": 20, "recovered": 5},
            "data": {"source": "gutenberg", "seq_len": 32, "stride": 32, "batch_size": 4, "score_batches": 1,
                     "eval_tokens": 256, "whole_split_reference": False},
            "finetune": {"steps": 4, "warmup_steps": 0, "eval_every": 2, "batch_size": 2}, "device": "cpu",
            "measure_speed": False, "output": str(tmp_path / "out")}


def test_the_plan_counts_what_the_shared_store_computes(tmp_path):
    (p,) = plan(parse_spec(config(tmp_path)))
    assert (p.cells, p.reference) == (2 * 2 * 3 + 2 * 20, 40)
    # magnitude reads no data and no seed: scored once; entropy per seed (its calibration draw)
    assert p.scorings == {"magnitude": 1, "entropy": 3}
    assert p.recovered == 12 + 2 * 5 and p.steps == 4 * p.recovered
    # distinct layouts: magnitude one per level, entropy one per seed and level, every reference draw; plus 2
    # evaluations per recovery (steps 2 and 4)
    assert p.evaluations == (2 + 6 + 40) + 2 * p.recovered
    assert p.whole_split == "not asked"


def test_the_estimate_is_the_counts_times_the_measured_seconds():
    spec = type("Spec", (), {"max_concurrent_trials": 1})()
    p = ModelPlan("m", evaluations=10, steps=6, speed_layouts=0)
    p.scorings.update({"entropy": 3})
    seconds = {"load": 2.0, "evaluate": 0.5, "step": 1.0, "speed_forward": 0.1, "score": {"entropy": 2.0}}
    assert estimate(spec, [p], {"m": seconds}) == (2.0 + 0.5) + 10 * 0.5 + 6 * 1.0 + 3 * 2.0 + 30.0


def test_dry_run_prints_the_plan_and_an_estimate_and_starts_and_writes_nothing(tmp_path, capsys):
    import ray

    path = tmp_path / "dry.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path)))
    assert cli.main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry: 52 cells" in out and "12 strategy cells + 40 random-reference layouts" in out
    assert "scorings: entropy x3, magnitude x1" in out and "measured here (s): load" in out
    assert "estimated: about" in out
    assert not (tmp_path / "out").exists() and not ray.is_initialized()
