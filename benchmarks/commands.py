"""Do the commands the README and docs show keep their time? Each is run as a user runs it (a fresh process, a temp
HOME for Ray's token, its own temporary output folder) and timed against its budget.

    python benchmarks/commands.py                       # every command that runs offline
    python benchmarks/commands.py --only seed smoke     # some of them

Writes benchmarks/results/commands.{json,md}: per command its wall time, budget, exit code and whether it kept
the budget. configs/seed-distilgpt2.yaml needs distilgpt2 from the hub (no machine here reaches it): listed, not run.
The comparison grid's budget is its measured time plus a quarter (docs/COMPARISON.md); it takes over an hour on 2
cores, so it runs only when named.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
OUT = "{out}"  # replaced by the command's own temporary output folder

# name: (command, budget in seconds, where it is documented, run by default)
COMMANDS = {
    "seed": (["python", "scripts/benchmark_with_metrics.py", "--model_name", "sentinel/tiny-gpt2",
              "--pruning_strategies", "entropy,magnitude,random", "--pruning_levels", "0.1,0.3", "--learning_steps",
              "5", "--eval_dataset", "gutenberg", "--use_real_data", "--output_dir", OUT], 150,
             "configs/seed-distilgpt2.yaml (the seed's command line; 95 s on 2026-12-01)", True),
    "smoke": (["sentinel-bench", "run", "configs/smoke.yaml", "--set", f"output={OUT}"], 90, "configs/smoke.yaml", True),
    "export": (["sentinel-bench", "export", "sentinel/smollm2-135m", "--to", "gguf", "--out", f"{OUT}/smollm2.gguf",
                "--dtype", "q8_0"], 60, "docs/EXPORT.md", True),
    "default": (["sentinel-bench", "run", "configs/default.yaml", "--set", f"output={OUT}"], 600,
                "README's first command", True),
    "encoder": (["sentinel-bench", "run", "configs/encoder.yaml", "--set", f"output={OUT}"], 400,
                "configs/encoder.yaml (README)", False),
    "zero_shot": (["sentinel-bench", "run", "configs/zero_shot.yaml", "--set", f"output={OUT}"], 1800,
                  "docs/ZERO_SHOT.md", False),
    "comparison": (["sentinel-bench", "run", "configs/comparison.yaml", "--set", f"output={OUT}"], 5400,
                    "docs/COMPARISON.md (4,329 s measured)", False),
}
OFFLINE_ONLY = {"seed-distilgpt2": "configs/seed-distilgpt2.yaml needs distilgpt2 from the hub"}


def run(name: str) -> dict:
    command, budget, where, _ = COMMANDS[name]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HOME": tmp}  # Ray's auth token goes to a temp HOME, not the user's
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        argv = [part.replace(OUT, f"{tmp}/out") for part in command]
        Path(tmp, "out").mkdir()
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - started
    return {"name": name, "command": " ".join(command).replace(OUT, "OUT"), "documented": where, "budget_s": budget,
            "wall_s": round(wall, 1), "exit": done.returncode, "kept": done.returncode == 0 and wall <= budget,
            "last_line": (done.stdout.strip().splitlines() or [""])[-1][-200:] if done.returncode == 0
            else done.stderr.strip()[-300:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(COMMANDS), help="run only these commands")
    args = parser.parse_args()
    names = args.only or [name for name, (*_, default) in COMMANDS.items() if default]
    rows = []
    for name in names:
        rows.append(run(name))
        print(json.dumps(rows[-1]), flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "commands.json").write_text(json.dumps({"machine": machine, "rows": rows, "not_run": OFFLINE_ONLY},
                                                      indent=1))
    lines = ["| command | documented in | budget (s) | wall (s) | exit | kept the budget |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| `{r['command']}` | {r['documented']} | {r['budget_s']} | {r['wall_s']} | {r['exit']} | "
                     f"{'yes' if r['kept'] else '**no**'} |")
    (RESULTS / "commands.md").write_text(
        f"# The documented commands against their budgets\n\n`python benchmarks/commands.py"
        f"{' --only ' + ' '.join(args.only) if args.only else ''}` ({machine}): each in a fresh process with its own "
        f"output folder.\n\n" + "\n".join(lines) + "\n\nNot run: " + "; ".join(OFFLINE_ONLY.values()) + ".\n")
    print((RESULTS / "commands.md").read_text())


if __name__ == "__main__":
    main()
