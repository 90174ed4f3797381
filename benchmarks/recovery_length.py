"""Does the strategies' order after a 3-step recovery hold after a longer one, and with distillation? (issue #39)

The default benchmark recovers SmolLM2 with 3 steps of 2 x 128 tokens: a short recovery, after which the order of
the strategies held (docs/FINDINGS.md, "Does the order survive recovery?"). Here one layout per strategy (gradient,
magnitude, entropy at level 0.3, seed 0, the default's protocol and windows) recovers for 30 steps, evaluated every 3,
under two objectives: next-token cross-entropy (the default) and distillation to the dense model (KL at T = 2).
One seed, one layout each: the order is by mean only (no test), a question for the grid, not a verdict.

    python benchmarks/recovery_length.py      # about 8 minutes on 2 cores
                                              # writes benchmarks/results/recovery_length.{json,md}
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STEPS, EVERY = 30, 3
STRATEGIES = ("gradient", "magnitude", "entropy")
OBJECTIVES = (("cross_entropy", 1.0), ("distill", 2.0))

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def trial(strategy: str, objective: str, temperature: float, shared) -> dict:
    from sentinel.finetune import FinetuneConfig
    from sentinel.pipeline import run_trial
    from sentinel.trial import DataSpec, TrialSpec

    default = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    recipe = default["models"][0]["finetune"]
    finetune = FinetuneConfig(steps=STEPS, batch_size=recipe["batch_size"], lr=recipe["lr"], warmup_steps=0,
                              eval_every=EVERY, objective=objective, temperature=temperature)
    started = time.perf_counter()
    result = run_trial(TrialSpec(model="sentinel/smollm2-135m", strategy=strategy, level=0.3, seed=0,
                                 data=DataSpec(**default["data"]), finetune=finetune, device="cpu",
                                 measure_speed=False), shared)
    if result.status != "ok":
        raise SystemExit(result.error)
    curve = {row["step"]: row["eval_metric"] for row in result.curve if row["eval_metric"] is not None}
    return {"strategy": strategy, "objective": objective, "temperature": temperature, "dense": result.dense,
            "curve": curve, "seconds": round(time.perf_counter() - started, 1)}


def order(rows: list[dict], objective: str, step: int) -> list[str]:
    """The strategies from lowest to highest perplexity at `step` (by mean only: one layout each)."""
    return [r["strategy"] for r in sorted((r for r in rows if r["objective"] == objective),
                                          key=lambda r: r["curve"][step])]


def main() -> None:
    from machine import describe, figure
    from sentinel.pipeline import LocalShared

    machine = figure()
    shared = LocalShared()  # the dense model, its baseline and each strategy's scores computed once
    rows = [trial(s, o, t, shared) for o, t in OBJECTIVES for s in STRATEGIES]
    result = {"machine": describe(machine), "python": platform.python_version(), "steps": STEPS, "every": EVERY,
              "rows": rows,
              "orders": {o: {step: order(rows, o, step) for step in (0, 3, STEPS)} for o, _ in OBJECTIVES}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recovery_length.json").write_text(json.dumps(result, indent=1) + "\n")
    steps = sorted(rows[0]["curve"])
    lines = ["# Recovery length and objective: SmolLM2-135M at 30% of heads, one layout per strategy", "",
             f"Measured with `python benchmarks/recovery_length.py` on {time.strftime('%Y-%m-%d')}; "
             f"{describe(machine)}. The default's protocol (WikiText-2, 8 windows of 128 tokens, 2 x 128-token steps at "
             "lr 1e-4, no warm-up), "
             f"seed 0, {STEPS} recovery steps evaluated every {EVERY}; distillation is KL to the dense model at T = 2. "
             f"By mean only: one layout per strategy, no test.", "",
             "| objective | strategy | " + " | ".join(f"step {s}" for s in steps) + " | seconds |",
             "|---|---|" + "---:|" * len(steps) + "---:|"]
    for r in rows:
        lines.append(f"| {r['objective']} | {r['strategy']} | " + " | ".join(f"{r['curve'][s]:.4g}" for s in steps)
                     + f" | {r['seconds']} |")
    lines += ["", "Order from lowest perplexity, by mean only:", ""]
    for objective, by_step in result["orders"].items():
        lines.append(f"- {objective}: " + "; ".join(f"step {s}: {', '.join(o)}" for s, o in by_step.items()))
    lines.append(f"\nDense perplexity on the same windows: {rows[0]['dense']:.4g}.")
    (RESULTS / "recovery_length.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
