"""Cost of each registered strategy's scoring, relative to `gradient`, on the default config's real models and data.

    python benchmarks/strategy_cost.py               # every registered strategy
    python benchmarks/strategy_cost.py ablation      # these (and gradient, the unit), merged into the stored rows

Each (model, strategy) runs in a fresh process: load the model (as the pipeline does), prepare the default
config's task (its scoring batches), then time `score_heads` and record the process's peak-RSS growth during
scoring (ru_maxrss after scoring minus after loading: the scoring's extra memory on top of the model). One
thread-pool, 2 cores, CPU. `dynamic`'s scoring is the gradient importance it starts from; its real cost is
the fine-tune plus `updates` (5) such passes, reported as a formula.

Writes benchmarks/results/strategy_cost.{json,md}.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODELS = ["sentinel/smollm2-135m", "sentinel/all-MiniLM-L6-v2"]


def child(model_name: str, strategy: str) -> dict:
    import yaml

    from sentinel.models import head_layout
    from sentinel.pipeline import dense_model
    from sentinel.pruning import score_heads
    from sentinel.tasks import prepare_task
    from sentinel.trial import DataSpec

    raw = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    data = DataSpec(**raw["data"])
    dense, tokenizer = dense_model(model_name, __import__("torch").device("cpu"), {})
    task = prepare_task("auto", dense, tokenizer, data)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = score_heads(strategy, dense, task.calibration(0).batches, seed=0)
    seconds = time.perf_counter() - start
    extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - loaded) / 1024
    return {"model": model_name, "strategy": strategy, "seconds": seconds, "extra_peak_rss_mb": extra,
            "forward_passes": result.meta.get("forward_passes"), "backward_passes": result.meta.get("backward_passes"),
            "heads": head_layout(dense).total_heads, "score_batches": len(task.calibration(0).batches)}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3])))
        return
    sys.path.insert(0, str(REPO))
    from sentinel.pruning import STRATEGIES

    chosen = sys.argv[1:]
    for name in chosen:
        STRATEGIES.get(name)  # an unknown name: one line listing the registered ones
    names = sorted({*chosen, "gradient"}) if chosen else STRATEGIES.names()
    stored = json.loads((RESULTS / "strategy_cost.json").read_text())["rows"] if chosen else []
    rows = []
    for model in MODELS:
        for strategy in names:
            out = subprocess.run([sys.executable, __file__, "--child", model, strategy], capture_output=True,
                                 text=True, cwd=REPO, timeout=1800)
            if out.returncode:
                raise SystemExit(f"{model} {strategy} failed:\n{out.stderr[-3000:]}")
            rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "measured": time.strftime("%Y-%m-%d")})
            print(json.dumps(rows[-1]), flush=True)
    fresh = {(r["model"], r["strategy"]) for r in rows}
    rows += [r for r in stored if (r["model"], r["strategy"]) not in fresh]
    rows.sort(key=lambda r: (MODELS.index(r["model"]) if r["model"] in MODELS else len(MODELS), r["strategy"]))
    for row in rows:  # against gradient timed in the same session (rows keep the ratio they were measured with)
        if row["strategy"] in names or "time_vs_gradient" not in row:
            base = next(r for r in rows if r["model"] == row["model"] and r["strategy"] == "gradient")
            row["time_vs_gradient"] = row["seconds"] / base["seconds"]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    lines = ["| model | strategy | scoring time (s) | x gradient | extra peak RSS (MB) | forward / backward passes | "
             "measured |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['strategy']} | {r['seconds']:.2f} | {r['time_vs_gradient']:.2f} | "
                     f"{r['extra_peak_rss_mb']:.0f} | {r['forward_passes']} / {r['backward_passes']} | "
                     f"{r.get('measured', 'earlier')} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "strategy_cost.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    (RESULTS / "strategy_cost.md").write_text(
        f"# Strategy cost\n\n`python benchmarks/strategy_cost.py` ({machine}); the default config's models and scoring "
        f"data ({rows[0]['score_batches']} batches of 4 x 128 tokens), CPU, one process per row.\n\n"
        + "\n".join(lines) + "\n\n`dynamic`'s row is the gradient importance it starts from; during the trial it adds "
        "`updates` (default 5) such gradient passes inside the fine-tune. Extra peak RSS: the growth of the process's "
        "peak resident memory during scoring, on top of the loaded model and data (0 when scoring stayed under the "
        "peak reached while loading).\n")
    print((RESULTS / "strategy_cost.md").read_text())


if __name__ == "__main__":
    main()
