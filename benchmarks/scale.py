"""Scale: a grid of near-no-op cells through the real runner on a multi-node Ray cluster simulated on this machine.

    python benchmarks/scale.py                       # 1,000 and 10,000 cells, then the kill/resume check at 2,000
    python benchmarks/scale.py --cells 1000          # one size only
    python benchmarks/scale.py --kill-check 0        # skip the kill/resume check

Each size runs in a fresh driver process against a `ray.cluster_utils.Cluster`: a head that runs no trial (0 CPUs;
the driver, the shared-work actor) and 4 worker nodes with 4 logical CPUs each (16 trials at a time). A cell is
the real grid expansion (every cell is a validated TrialSpec) and the real runner (Tune, progress, rows streamed
as Parquet parts, compaction), but the trainable builds the TrialSpec, runs no model and reports the TrialResult
row of a finished trial (`noop_trainable`): what is measured is what we and Tune add around a trial.

Measured per size:
- driver peak RSS (the driver process's ru_maxrss), and its growth from 1k to 10k cells (target <= 300 MB);
- orchestration overhead per trial: (wall - in-trial work / concurrency) / cells, where in-trial work is the sum
  of the time spent inside the trainable (target <= 20 ms; Ray Tune's own release benchmark: ~9 ms);
- the Parquet parts written while the grid ran, and the compaction that merges them (its time);
- `analyze` on the result (target <= 30 s at 10k rows).
The kill/resume check runs 2,000 cells, SIGKILLs the driver once >= 1,000 rows are stored in parts, resumes, and
checks that every row stored before the kill is in the final table unchanged (same run_id) and every cell has one row.

Writes benchmarks/results/scale.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
NODES, CPUS_PER_NODE = 4, 4
MODEL = "sentinel/tiny-gpt2"


def grid(name: str, cells: int, output: str) -> dict:
    """cells = 4 strategies x 5 levels x cells/20 seeds of the shipped tiny GPT-2 (contract-checked, never loaded)."""
    seeds = max(1, cells // 20)
    return {"experiment": name, "models": [MODEL], "strategies": ["random", "magnitude", "entropy", "gradient"],
            "levels": [0.1, 0.2, 0.3, 0.4, 0.5], "seeds": list(range(seeds)), "device": "cpu", "output": output,
            "measure_speed": False, "resources": {"cpu": 1}, "max_failures": 0}


def noop_trainable(config: dict) -> None:
    """The real trainable's contract without a model: TrialSpec.from_dict, a TrialResult row, one tune.report."""
    start = time.perf_counter()
    import ray
    from ray import tune

    from orchestrator.trainable import RECORD_KEY
    from sentinel.result import RunContext, TrialRecord, TrialResult
    from sentinel.trial import TrialSpec

    spec = TrialSpec.from_dict(config["cell"])
    result = TrialResult(spec=spec, architecture="gpt2", task="perplexity", metric_name="perplexity",
                         higher_is_better=False, metric_scale="log", dense=10.0, pruned=12.0, recovered=11.0,
                         heads_total=32, heads_pruned=int(32 * spec.level), scores=[[0.5] * 8] * 4)
    result.timings["load"] = time.perf_counter() - start  # the in-trial work: time_total of the row
    record = TrialRecord.of(result)
    record.context = RunContext(experiment=config["run"]["experiment"], run_id=config["run"]["run_id"],
                                tune_trial_id=tune.get_context().get_trial_id(), attempts=1, version_ray=ray.__version__,
                                started_at=int(time.time() * 1000), finished_at=int(time.time() * 1000))
    tune.report({"status": "ok", "metric_name": "perplexity", "recovered": 11.0, RECORD_KEY: record.to_json()})


def driver(cells: int, output: str, address: str, resume: bool) -> dict:
    """Child process: one experiment through run_experiment against the cluster at `address`."""
    import io

    from orchestrator.analyze import analyze
    from orchestrator.runner import run_experiment
    from orchestrator.spec import parse_spec

    started = time.perf_counter()
    spec = parse_spec(grid(f"scale-{cells}", cells, output))
    expanded = time.perf_counter() - started
    summary = run_experiment(spec, address=address, trainable_fn=noop_trainable, resume=resume,
                             stream=io.StringIO() if not resume else sys.stdout)
    wall = time.perf_counter() - started
    import pandas as pd

    grid_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before analyze loads and plots
    trials = pd.read_parquet(summary.written["trials"])
    in_trial = float(trials.time_total.sum())  # each trainable timed itself (see noop_trainable)
    analyzed = time.perf_counter()
    analyze(summary.output_dir)
    analyze_s = time.perf_counter() - analyzed
    return {"cells": cells, "ok": summary.ok, "missing": summary.missing, "rows": len(trials), "wall_s": wall,
            "expand_s": expanded, "compact_s": summary.compact_s, "parts_written": summary.parts,
            "analyze_s": analyze_s, "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "driver_peak_rss_grid_mb": grid_peak,
            "in_trial_s_sum": in_trial}


def start_cluster():
    from ray.cluster_utils import Cluster

    node = {"include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 0})
    for _ in range(NODES):
        cluster.add_node(**node, num_cpus=CPUS_PER_NODE)
    cluster.wait_for_nodes()
    return cluster


def run_size(cells: int, address: str, root: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(cells), "--address", address,
                          "--output", str(root / f"out-{cells}")], capture_output=True, text=True, timeout=3600,
                         cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"driver for {cells} cells failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def kill_check(cells: int, address: str, root: Path) -> dict:
    """SIGKILL the driver once half the rows are in parts, resume, and compare."""
    import pandas as pd

    output = root / f"kill-{cells}"
    parts = output / f"scale-{cells}" / "parts" / "trials"
    command = [sys.executable, __file__, "--child", str(cells), "--address", address, "--output", str(output)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                            start_new_session=True)
    stored = pd.DataFrame()
    try:
        while proc.poll() is None:
            files = list(parts.glob("*.parquet")) if parts.exists() else []
            if files:
                stored = pd.concat([pd.read_parquet(f) for f in files])
                if len(stored) >= cells // 2:
                    break
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stored = pd.concat([pd.read_parquet(f) for f in parts.glob("*.parquet")])  # everything on disk at the kill
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=3600, cwd=REPO)
    if resumed.returncode != 0:
        raise SystemExit(f"resume failed:\n{resumed.stdout[-3000:]}\n{resumed.stderr[-3000:]}")
    final = pd.read_parquet(output / f"scale-{cells}" / "trials.parquet").set_index("trial_id")
    kept = final.loc[stored.trial_id]
    return {"cells": cells, "rows_stored_at_kill": len(stored), "final_rows": len(final),
            "final_unique": bool(final.index.is_unique), "all_ok": bool((final.status == "ok").all()),
            "stored_rows_kept_unchanged": bool((kept.run_id.values == stored.run_id.values).all()),
            "rerun_after_resume": len(final) - len(stored)}


def table(sizes: list[dict], kill: dict | None) -> str:
    lines = ["| cells | wall (s) | overhead / trial (ms) | driver peak RSS (MB) | parts | compaction (s) | analyze (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in sizes:
        lines.append(f"| {r['cells']:,} | {r['wall_s']:.0f} | {r['overhead_ms']:.1f} | {r['driver_peak_rss_mb']:.0f} | "
                     f"{r['parts_written']} | {r['compact_s']:.1f} | {r['analyze_s']:.1f} |")
    if kill:
        lines += ["", f"Kill/resume at {kill['cells']:,} cells: {kill['rows_stored_at_kill']:,} rows were in parts when "
                  f"the driver was SIGKILLed; after `--resume` the table has {kill['final_rows']:,} rows (unique: "
                  f"{kill['final_unique']}, all ok: {kill['all_ok']}), the stored rows kept unchanged: "
                  f"{kill['stored_rows_kept_unchanged']}, {kill['rerun_after_resume']:,} cells run by the resumed driver."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--kill-check", type=int, default=2000, help="cells of the kill/resume check (0: skip)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(driver(args.child, args.output, args.address, args.resume)))
        return

    import ray

    root = Path(tempfile.mkdtemp(prefix="sb-scale-", dir="/tmp"))
    os.environ.setdefault("RAY_TMPDIR", str(root))
    cluster = start_cluster()
    try:
        sizes = []
        for cells in args.cells:
            r = run_size(cells, cluster.address, root)
            concurrency = NODES * CPUS_PER_NODE
            r["overhead_ms"] = 1000 * (r["wall_s"] - r["in_trial_s_sum"] / concurrency) / r["cells"]
            sizes.append(r)
            print(json.dumps(r), flush=True)
        kill = kill_check(args.kill_check, cluster.address, root) if args.kill_check else None
        if kill:
            print(json.dumps(kill), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    growth = None
    by_cells = {r["cells"]: r for r in sizes}
    if 1000 in by_cells and 10000 in by_cells:
        growth = by_cells[10000]["driver_peak_rss_mb"] - by_cells[1000]["driver_peak_rss_mb"]
    record = {"sizes": sizes, "kill_resume": kill, "driver_rss_growth_1k_to_10k_mb": growth,
              "cluster": f"ray.cluster_utils.Cluster: head 0 CPUs + {NODES} nodes x {CPUS_PER_NODE} logical CPUs",
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "command": "python benchmarks/scale.py"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(record, indent=1))
    (RESULTS / "scale.md").write_text(
        f"# Scale: near-no-op cells on a simulated {NODES}-node cluster\n\n`{record['command']}` on "
        f"{record['machine']}; {record['cluster']}.\n\n{table(sizes, kill)}\n\n"
        f"Driver RSS growth from 1k to 10k cells: {growth if growth is None else f'{growth:.0f} MB'} (target <= 300 MB). "
        "Targets: overhead <= 20 ms per trial, analyze <= 30 s at 10k rows.\n")
    print((RESULTS / "scale.md").read_text())


if __name__ == "__main__":
    main()
