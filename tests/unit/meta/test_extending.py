"""docs/EXTENDING.md's examples run as written: the criterion's code is taken from the page, registered, run through
real trials of a tiny GPT-2 and analysed, and the report judges it like a shipped strategy."""
from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]


def example(name: str) -> str:
    page = (ROOT / "docs" / "EXTENDING.md").read_text(encoding="utf-8")
    block = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```\n<!-- /example -->", page, re.S)
    assert block, f"docs/EXTENDING.md has no example {name!r}"
    return block.group(1)


def test_the_criterion_example_runs_in_a_real_grid_and_is_judged_in_the_report(tmp_path, monkeypatch):
    from orchestrator.analyze import analyze
    from sentinel.pipeline import LocalShared, run_trial
    from sentinel.pruning import STRATEGIES, score_heads
    from sentinel.result import RunContext, TrialRecord
    from sentinel.trial import TrialSpec
    from tests.integration.conftest import save_tiny_gpt2
    from tests.tables import write_results
    from tests.unit.analyze.conftest import small_corpus

    monkeypatch.setattr(STRATEGIES, "_items", dict(STRATEGIES._items))  # the example's registration ends with the test
    module = tmp_path / "output_norm.py"
    module.write_text(example("criterion"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("output_norm_example", module)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert "output_norm" in STRATEGIES

    model = save_tiny_gpt2(tmp_path / "tiny-gpt2")
    data = {"source": str(small_corpus(tmp_path)), "seq_len": 32, "stride": 32, "batch_size": 4, "score_batches": 1,
            "eval_tokens": 128, "whole_split_reference": False}
    shared, records = LocalShared(), []
    for strategy in ("output_norm", "magnitude", "random"):
        for seed in range(3):
            cell = TrialSpec.from_dict({"model": str(model), "strategy": strategy, "level": 0.5, "seed": seed,
                                        "data": data, "device": "cpu", "measure_speed": False,
                                        "finetune": {"steps": 2, "warmup_steps": 0, "eval_every": 2, "batch_size": 2}})
            record = TrialRecord.of(run_trial(cell, shared))
            record.context = RunContext(experiment="ext", run_id="ext-1", tune_trial_id="local", attempts=1,
                                        started_at=int(time.time() * 1000), finished_at=int(time.time() * 1000))
            assert record.row["status"] == "ok", record.row["error"]
            records.append(record)
    write_results(str(tmp_path / "ext"), records, {"experiment": "ext"})
    report = Path(analyze([str(tmp_path / "ext")])).read_text()
    # its row in the summary table (markdown escapes the underscore), tested against random, and head to head
    row = next(line for line in report.splitlines() if line.startswith("|") and "| output\\_norm | 0.5 | 3 |" in line)
    assert "(p=" in row and "n=3" in row
    assert any("magnitude vs output\\_norm" in line for line in report.splitlines())

    # and its scores are what the page says: each head's mean output norm over the calibration tokens
    from sentinel.models.loading import load_model
    from sentinel.tasks import prepare_task
    from sentinel.trial import DataSpec

    dense, tokenizer = load_model(str(model))
    batches = prepare_task("auto", dense, tokenizer, DataSpec(**data)).calibration(0).batches
    outputs = {}
    hooks = [block.attn.c_proj.register_forward_pre_hook(lambda m, a, i=i: outputs.setdefault(i, []).append(a[0]))
             for i, block in enumerate(dense.transformer.h)]
    with torch.no_grad():
        for batch in batches:
            dense(**batch)
    for h in hooks:
        h.remove()
    mask = torch.cat([b["attention_mask"].bool().flatten() for b in batches])
    for layer, chunks in outputs.items():
        x = torch.cat([c.flatten(0, 1) for c in chunks])[mask]  # the non-padding tokens
        expected = x.unflatten(-1, (4, -1)).double().norm(dim=-1).mean(0)
        got = score_heads("output_norm", dense, batches).scores[layer].double()
        assert torch.allclose(got, expected, rtol=1e-5), (layer, got, expected)
