"""Is `iterative` worse than one-shot `gradient` because it iterates, or because of per-layer normalisation?

    python benchmarks/normalization_ablation.py

configs/comparison.yaml runs both strategies with their defaults, which differ in two ways: `iterative` rescores
in steps *and* L2-normalises importance per layer (Michel et al.'s setting); `gradient` is one-shot and raw. This
runs the 2 x 2 (one-shot / iterative x raw / normalised) on SmolLM2-135M with the comparison's data, and reports
the pruned perplexity (before recovery; one fine-tuning step runs because a trial needs one, unreported) at
levels 0.3 and 0.5, seed 0. Since calibration is drawn per seed (data.calibration: resample), seed 0 is one
calibration draw; benchmarks/results/normalization_ablation.md was measured before that, on the then fixed sample
(the first score-split article), and is kept as that measurement. In-process, CPU, no Ray.

Writes benchmarks/results/normalization_ablation.{json,md}.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODEL = "sentinel/smollm2-135m"
LEVELS = (0.3, 0.5)


def main() -> None:
    from sentinel.finetune import FinetuneConfig
    from sentinel.pipeline import LocalShared, run_trial
    from sentinel.trial import DataSpec, TrialSpec

    data = DataSpec(**yaml.safe_load((REPO / "configs" / "comparison.yaml").read_text())["data"])
    rows = []
    shared = LocalShared()  # the dense baseline once, each (strategy, options) scored once for both levels
    for strategy in ("gradient", "iterative"):
        for normalize in (False, True):
            for level in LEVELS:
                spec = TrialSpec(model=MODEL, strategy=strategy, level=level, seed=0, data=data, device="cpu",
                                 measure_speed=False, strategy_options={"normalize_per_layer": normalize},
                                 finetune=FinetuneConfig(steps=1, batch_size=2, warmup_steps=0, eval_every=1))
                started = time.time()
                result = run_trial(spec, shared)
                assert result.status == "ok", result.error
                rows.append({"strategy": strategy, "normalize_per_layer": normalize, "level": level,
                             "dense": result.dense, "pruned": result.pruned, "seconds": round(time.time() - started, 1),
                             "reused_scores": result.reused.get("scores")})
                print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "normalization_ablation.json").write_text(json.dumps(rows, indent=1))
    lines = ["# Per-layer normalisation vs iteration (SmolLM2-135M, pruned perplexity, no recovery)", "",
             f"`python benchmarks/normalization_ablation.py` ({platform.machine()}, CPU); configs/comparison.yaml's "
             f"data; dense perplexity {rows[0]['dense']:.2f}.", "",
             "| strategy | normalize_per_layer | " + " | ".join(f"level {l:g}" for l in LEVELS) + " |",
             "|---|---|" + "---|" * len(LEVELS)]
    for strategy in ("gradient", "iterative"):
        for normalize in (False, True):
            values = [r["pruned"] for r in rows if (r["strategy"], r["normalize_per_layer"]) == (strategy, normalize)]
            default = " (default)" if normalize == (strategy == "iterative") else ""
            lines.append(f"| {strategy} | {normalize}{default} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    (RESULTS / "normalization_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
