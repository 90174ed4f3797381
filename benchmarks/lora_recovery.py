"""LoRA against full fine-tuning as the recovery of a pruned SmolLM2-135M, at equal steps.

One cell of the default benchmark's protocol (WikiText-2, 128-token windows, the default's evaluation windows):
`gradient` at level 0.3, seed 0, then 20 recovery steps of 4 sequences, each recipe in a fresh process (so peak
memory is its own): full fine-tuning at the default's lr 1e-4, and LoRA (rank 8, alpha 16, on q/k/v/o) at 1e-4 and
at 1e-3 (adapters usually want a larger rate). Reported: perplexity after pruning and after recovery, seconds per
step, and the process's peak resident memory.

    python benchmarks/lora_recovery.py      # writes benchmarks/results/lora_recovery.{json,md}
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STEPS = 20
RECIPES = [("full", 1e-4), ("lora", 1e-4), ("lora", 1e-3)]


def child(method: str, lr: float) -> dict:
    import yaml

    from sentinel.finetune import FinetuneConfig
    from sentinel.pipeline import run_trial
    from sentinel.trial import DataSpec, TrialSpec

    data = DataSpec(**yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["data"])
    finetune = FinetuneConfig(steps=STEPS, batch_size=4, lr=lr, warmup_steps=0, eval_every=STEPS, method=method)
    result = run_trial(TrialSpec(model="sentinel/smollm2-135m", strategy="gradient", level=0.3, seed=0, data=data,
                                 finetune=finetune, device="cpu", measure_speed=False))
    if result.status != "ok":
        raise SystemExit(result.error)
    return {"method": method, "lr": lr, "steps": STEPS, "dense": result.dense, "pruned": result.pruned,
            "recovered": result.recovered, "seconds_per_step": result.timings["finetune"] / STEPS,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "params_after": result.params_after}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], float(sys.argv[3]))))
        return
    rows = []
    for method, lr in RECIPES:
        out = subprocess.run([sys.executable, __file__, "--child", method, str(lr)], capture_output=True, text=True,
                             cwd=REPO, timeout=1800)
        if out.returncode:
            raise SystemExit(f"{method} {lr} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lora_recovery.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    lines = ["| recovery | lr | perplexity: dense → pruned → recovered | s / step | peak RSS (MB) | parameters after |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['lr']:g} | {r['dense']:.2f} → {r['pruned']:.1f} → {r['recovered']:.1f} | "
                     f"{r['seconds_per_step']:.2f} | {r['peak_rss_mb']:,.0f} | {r['params_after']:,} |")
    (RESULTS / "lora_recovery.md").write_text(
        f"# LoRA against full recovery, SmolLM2-135M\n\n`python benchmarks/lora_recovery.py` ({machine}): gradient at "
        f"level 0.3, seed 0, the default config's data and evaluation; {STEPS} steps of 4 x 128 tokens, CPU, one "
        "process per recipe (peak RSS includes loading the model and data).\n\n" + "\n".join(lines) + "\n")
    print((RESULTS / "lora_recovery.md").read_text())


if __name__ == "__main__":
    main()
