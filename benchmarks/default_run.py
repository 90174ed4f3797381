"""How long does the README's run command take, and does its answer mean something?

    python benchmarks/default_run.py [--config configs/default.yaml] [--output DIR]

Runs `sentinel-bench run CONFIG --overwrite` in a fresh process into DIR (default: a temporary folder) (the whole
command as a newcomer runs it: Ray start, model loads, every trial, Parquet, analysis and plots) and reads
the results back. Targets (issue: real pretrained models and a default whose answer means something):
- wall time <= 400 s on 2 cores of a machine like benchmarks/results/machine.md's (600 s on the slower kind),
  every trial ok;
- on the real LM, recovered < pruned in >= 80% of the cells at level >= 0.3;
- a strategy better than random after Holm's adjustment on each model, where there is one (the report's verdict;
  found, not required);
- cells with the same pruned layout report the same speed (one quiet measurement per layout, 3 timed rounds).

Writes benchmarks/results/default_run.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import describe, figure  # noqa: E402
RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--output", help="keep the results here (default: a temporary folder)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override passed to the run (e.g. resources.cpu=1, max_concurrent_trials=2)")
    parser.add_argument("--name", default="default_run", help="results file stem under benchmarks/results")
    args = parser.parse_args()
    machine = figure()  # before the run: nothing else computes while either is timed
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HOME": tmp}  # Ray's auth token goes to a temp HOME, not the user's
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        output = os.path.abspath(args.output) if args.output else f"{tmp}/results"
        command = ["sentinel-bench", "run", args.config, "--overwrite", "--set", f"output={output}",
                   *(f"--set={override}" for override in args.set)]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - started
        if done.returncode:
            sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        experiment = yaml.safe_load(Path(args.config).read_text())["experiment"]
        folder = Path(output) / experiment
        trials = pd.read_parquet(folder / "trials.parquet")
        summary = pd.read_csv(folder / "analysis" / "summary.csv")
        report = (folder / "analysis" / "report.md").read_text()
    write({**measure(trials, summary, report, wall), "machine_figure": machine, "overrides": args.set}, args.config,
          args.name)


def measure(trials: pd.DataFrame, summary: pd.DataFrame, report: str, wall: float) -> dict:
    reference = trials["reference"].fillna(False).astype(bool) if "reference" in trials else False
    ok = trials[(trials.status == "ok") & ~reference]  # strategy cells; the random reference is read by the analysis
    lm = ok[(ok.metric_name == "perplexity") & (ok.level >= 0.3)]
    same_layout = ok.assign(layout=ok.pruned_heads.map(lambda p: json.dumps([list(map(int, h)) for h in p])))
    spread = same_layout.groupby(["model", "layout"]).apply(
        lambda g: (g.speed_after / g.speed_before).max() / (g.speed_after / g.speed_before).min(), include_groups=False)
    verdict = report.split("## Verdict", 1)[1].split("## Summary table", 1)[0].strip()
    better = summary[summary.vs_random_pruned_verdict.eq("better") | summary.vs_random_recovered_verdict.eq("better")]
    stages = [c for c in trials.columns if c.startswith("time_") and c != "time_total"]
    return {
        "wall_s": round(wall, 1),
        "trials": len(trials), "ok": int(trials.status.eq("ok").sum()),
        "reference_layouts": int(reference.sum()) if hasattr(reference, "sum") else 0,
        "lm_cells_level_ge_0.3": len(lm),
        "lm_recovered_below_pruned": round(float((lm.recovered < lm.pruned).mean()), 3) if len(lm) else None,
        "models_with_a_strategy_better_than_random": sorted(better.model.unique()),
        "speedup_spread_within_a_layout_max": round(float(spread.max()), 4) if len(spread) else None,
        "stage_seconds": {c.removeprefix("time_"): round(float(trials[c].sum()), 1) for c in stages},
        "summary": summary[["model", "label", "level", "n_seeds", "dense_mean", "pruned_mean", "pruned_low",
                            "pruned_high", "recovered_mean", "vs_random_pruned_effect", "vs_random_pruned_effect_low",
                            "vs_random_pruned_effect_high", "vs_random_pruned_p_adj", "vs_random_pruned_verdict",
                            "pruned_percentile", "vs_random_recovered_effect", "vs_random_recovered_p_adj",
                            "vs_random_recovered_verdict", "recovered_percentile", "speedup", "speedup_min",
                            "speedup_max", "ideal_speedup", "speedup_share", "speedup_share_min", "speedup_share_max",
                            ]].round(6).to_dict(orient="records"),
        "verdict": verdict,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }


def write(result: dict, config: str, name: str = "default_run") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    rows = pd.DataFrame(result["summary"])
    lines = [
        f"# `sentinel-bench run configs/{Path(config).name}`", "",
        f"Measured with `python benchmarks/default_run.py` on {time.strftime('%Y-%m-%d')} ({result['machine']}), config "
        f"`{Path(config).name}`{''.join(' --set ' + o for o in result.get('overrides', []))}; the machine: "
        f"{describe(result['machine_figure'])}.", "",
        f"- wall time (whole command, fresh process: Ray start, model loads, {result['trials']} trials, Parquet, "
        f"analysis and plots; {result['reference_layouts']} of the trials are random-reference layouts): "
        f"**{result['wall_s']} s** (target: <= 400 s on a machine whose train step is near 117 GFLOP/s, so that it "
        "stays under 600 s on the slower kind)",
        f"- trials ok: {result['ok']} of {result['trials']}",
        (f"- real LM, cells at level >= 0.3 where recovered < pruned: **{result['lm_recovered_below_pruned']:.0%}** "
         f"of {result['lm_cells_level_ge_0.3']} (target >= 80%)" if result["lm_cells_level_ge_0.3"] else
         "- no causal LM in this config: the recovery target does not apply"),
        f"- models with a strategy significantly better than random: {', '.join(result['models_with_a_strategy_better_than_random']) or 'none'}",
        f"- largest speedup spread among cells with the same pruned layout: {result['speedup_spread_within_a_layout_max']} "
        "(max/min; 1.0 = one measurement per layout)",
        "- seconds per stage, summed over trials: " + ", ".join(f"{k} {v}" for k, v in result["stage_seconds"].items()),
        "", "## Verdict (from the report)", "", result["verdict"], "", "## Summary", "",
        "| " + " | ".join(rows.columns) + " |", "|" + "---|" * len(rows.columns),
        *("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
          for row in rows.itertuples(index=False)),
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main()
