"""Peak memory of streamed attention-entropy collection, next to one forward pass that returns all maps.

Model (random init, no download): a distilgpt2-shaped GPT-2 (6 layers, 12 heads, d=768, vocab 50257).
Each configuration runs in a FRESH subprocess, so allocator state and earlier peaks cannot leak into
it. In that process the model and inputs are built first; then the peak-RSS counter is reset
(`echo 5 > /proc/self/clear_refs` resets VmHWM on Linux) and the measured step runs; the result is
peak RSS (VmHWM) minus RSS just before the step. Where clear_refs is not writable the fallback is
getrusage's ru_maxrss, whose peak also covers model construction (noted in the output).

Allocator: glibc raises its mmap threshold each time a large block is freed, after which blocks of
attention-map size come from the brk heap and stay resident (fragmentation), so RSS creeps up with
the number of forward passes although no tensor outlives its pass. The main rows therefore fix the
threshold (MALLOC_MMAP_THRESHOLD_=131072: every block >= 128 KiB is its own mapping, returned on
free), which makes RSS follow live memory. The `default_allocator` rows repeat all_maps and the
longest stream with glibc's defaults, to show what a plain process sees.
torch has no CPU allocator statistics and tracemalloc does not see torch's allocations.

Configurations, batch size 1, sequence lengths 512 and 1024:
- stream: `score_heads("entropy", model, batches)` over 1, 5 and 20 batches.
- all_maps: ONE eager forward of the transformer stack (`model.base_model`) with output_attentions=True,
  keeping the returned maps (the seed's way). The stream also runs the stack only (no LM head), so
  the two are like for like.
Targets: stream peak flat in the number of batches, and <= 1.2x the all_maps peak.

    python benchmarks/collect_memory.py       # writes benchmarks/results/collect_memory.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SEQ_LENS = (512, 1024)
NUM_BATCHES = (1, 5, 20)
BATCH_SIZE = 1
MiB = 2**20
MMAP_THRESHOLD = 131072  # bytes; see the module docstring


# ---------------------------------------------------------------------------- inside the subprocess


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> str:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM after clear_refs"
    except OSError:
        return "ru_maxrss (includes model construction)"


def _peak_kib(method: str) -> int:
    if method.startswith("VmHWM"):
        return _status_kib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def measure(mode: str, seq_len: int, num_batches: int, threads: int) -> dict:
    """Builds the model, then measures one configuration; returns a result row."""
    import gc

    import torch
    import transformers

    from sentinel.pruning import score_heads

    torch.set_num_threads(threads)
    torch.manual_seed(0)  # a private process: seeding here touches no one else's RNG
    config = transformers.GPT2Config(n_layer=6, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
    model = transformers.GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(0, config.vocab_size, (BATCH_SIZE, seq_len), generator=generator),
            "attention_mask": torch.ones(BATCH_SIZE, seq_len, dtype=torch.long),
        }
        for _ in range(num_batches)
    ]
    gc.collect()
    method = _reset_peak()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    if mode == "stream":
        score_heads("entropy", model, batches)
        kept = None
    else:  # all_maps: what the seed did, one forward with every attention map returned
        model.set_attn_implementation("eager")
        with torch.no_grad():
            kept = model.base_model(**batches[0], output_attentions=True).attentions  # 6 x [B, 12, T, T]
    seconds = time.perf_counter() - start
    peak = _peak_kib(method)
    del kept
    return {
        "mode": mode,
        "seq_len": seq_len,
        "batch_size": BATCH_SIZE,
        "num_batches": num_batches,
        "peak_delta_mib": round((peak - before) / 1024, 1),
        "rss_before_mib": round(before / 1024, 1),
        "seconds": round(seconds, 2),
        "method": method,
    }


# ---------------------------------------------------------------------------- driver


def run_one(mode: str, seq_len: int, num_batches: int, threads: int, fixed_threshold: bool = True) -> dict:
    """One configuration in a fresh interpreter."""
    cmd = [sys.executable, __file__, "--worker", mode, str(seq_len), str(num_batches), "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if fixed_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    row = json.loads(out.strip().splitlines()[-1])
    row["allocator"] = f"glibc, MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}" if fixed_threshold else "glibc default"
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| seq_len | all_maps peak (MiB) | stream 1 batch | stream 5 | stream 20 | worst stream / all_maps |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for seq in SEQ_LENS:
        ref = next(r for r in rows if r["mode"] == "all_maps" and r["seq_len"] == seq)["peak_delta_mib"]
        stream = [next(r for r in rows if r["mode"] == "stream" and r["seq_len"] == seq and r["num_batches"] == n) for n in NUM_BATCHES]
        worst = max(r["peak_delta_mib"] for r in stream)
        cells = " | ".join(f"{r['peak_delta_mib']:.1f}" for r in stream)
        lines.append(f"| {seq} | {ref:.1f} | {cells} | {worst / ref:.2f}x |")
    return "\n".join(lines)


def default_table(rows: list[dict]) -> str:
    lines = ["| seq_len | mode | batches | peak (MiB) |", "|---:|---|---:|---:|"]
    lines += [f"| {r['seq_len']} | {r['mode']} | {r['num_batches']} | {r['peak_delta_mib']:.1f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "SEQ_LEN", "NUM_BATCHES"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.worker:
        mode, seq, n = args.worker
        print(json.dumps(measure(mode, int(seq), int(n), args.threads)))
        return

    rows = []
    for seq in SEQ_LENS:
        for mode, counts in (("all_maps", (1,)), ("stream", NUM_BATCHES)):
            for n in counts:
                rows.append(run_one(mode, seq, n, args.threads))
                print(json.dumps(rows[-1]), flush=True)
    default_rows = []
    for seq in SEQ_LENS:
        for mode, n in (("all_maps", 1), ("stream", max(NUM_BATCHES))):
            default_rows.append(run_one(mode, seq, n, args.threads, fixed_threshold=False))
            print(json.dumps(default_rows[-1]), flush=True)
    import torch
    import transformers

    result = {
        "benchmark": "collect_memory",
        "model": "gpt2 random init, 6 layers, 12 heads, d=768, vocab 50257 (distilgpt2 shape)",
        "unit": "MiB of peak RSS above RSS before the measured step, one fresh process per row",
        "targets": {"flat_in_num_batches": True, "max_ratio_to_all_maps": 1.2},
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "machine": platform.machine(), "threads": args.threads,
        },
        "rows": rows,
        "default_allocator": default_rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "collect_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        "# Entropy collection: peak memory\n\n"
        f"{result['model']}; batch size {BATCH_SIZE}; {result['unit']}.\n"
        "`all_maps`: one eager forward of the transformer stack with output_attentions=True, maps kept.\n"
        "`stream N`: `score_heads(\"entropy\", ...)` over N batches (per-head sums, no maps kept).\n\n"
        f"{table(rows)}\n\n"
        f"Allocator: rows above run with MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD} (RSS follows live memory; see the\n"
        "script's docstring). With glibc's default dynamic threshold, for comparison:\n\n"
        f"{default_table(default_rows)}\n\n"
        "Targets: flat in the number of batches; <= 1.2x all_maps.\n"
        "Command: `python benchmarks/collect_memory.py`\n"
    )
    (args.out / "collect_memory.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
