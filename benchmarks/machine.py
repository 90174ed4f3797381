"""What is this machine worth? A fixed reference workload, so a time measured here can be compared with another's.

    python benchmarks/machine.py            # writes benchmarks/results/machine.{json,md}

The workload is SmolLM2-135M's shape (a Llama of 30 layers x 9 query / 3 KV heads, hidden 576, vocabulary
49,152; randomly initialised: the arithmetic is the same as the shipped weights', and nothing is loaded) at the
default benchmark's shapes: a forward pass of 8 x 128 tokens (evaluation) and a training step of 2 x 128 tokens
(forward, backward, AdamW: recovery fine-tuning), in fp32 and, where the CPU has BF16 or AMX, under bf16 autocast.
Each figure is the median of 3 timed repetitions after a warm-up, on the threads torch uses by default (every
core) and on 1 thread, and for the training step also as two 1-thread processes side by side (the packing of two
trials on 2 cores: their combined throughput against one 2-thread trial's).

The ceiling is measured, not taken from a data sheet: the best of a large fp32 (and bf16) matrix product on the
same threads, `torch.mm` of 2,048 x 2,048 matrices. A workload's share of it is where its time goes: arithmetic at
the speed the hardware gives a matrix product, or something else (memory traffic, small kernels, Python).

Other benchmarks record `figure()` (the CPU, its flags, the train step's GFLOP/s) beside their timings.
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
REPEATS, WARMUPS = 3, 1
SHAPES = {"forward": (8, 128), "train": (2, 128)}


def cpu() -> dict:
    """The CPU's model name, core count and the instruction-set flags that decide matrix speed."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"model": model, "cores": len(os.sched_getaffinity(0)), "flags": [f for f in FLAGS if f in flags]}


def has_bf16(flags: list[str]) -> bool:
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.lru_cache(maxsize=1)
def smollm2_shape():
    """The model, built once per process (the training steps change its weights: irrelevant to their time)."""
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                                      tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def _median_seconds(step, repeats: int = REPEATS) -> float:
    for _ in range(WARMUPS):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def workload_seconds(kind: str, bf16: bool, threads: int) -> float:
    """Median seconds of one forward (kind "forward") or one training step ("train") at SHAPES[kind]."""
    import torch

    torch.set_num_threads(threads)
    model = smollm2_shape().eval()
    batch, length = SHAPES[kind]
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    if kind == "forward":
        def step():
            with torch.inference_mode(), autocast():
                model(input_ids=ids)
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step():
            with autocast():
                loss = model(input_ids=ids, labels=ids).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return _median_seconds(step)


def workload_flops(kind: str) -> float:
    """FLOPs of one forward (2 per multiply-add, attention included: sentinel.eval.forward_flops), a training step
    three times its forward (backward is two forwards' worth of products)."""
    from sentinel.eval import forward_flops

    batch, length = SHAPES[kind]
    forward = forward_flops(smollm2_shape(), length) * batch
    return forward if kind == "forward" else 3 * forward


def matmul_gflops(bf16: bool, threads: int, size: int = 2048) -> float:
    """The best GFLOP/s of an fp32 (or bf16) size x size matrix product: the ceiling torch reaches on this CPU."""
    import torch

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    seconds = min(_median_seconds(lambda: torch.mm(a, b), repeats=3) for _ in range(3))
    return 2 * size ** 3 / seconds / 1e9


def _train_in_child(args: tuple) -> float:
    bf16, start = args
    os.environ["OMP_NUM_THREADS"] = "1"
    while time.time() < start:  # both children begin together
        time.sleep(0.01)
    return workload_seconds("train", bf16, threads=1)


def packed_train_seconds(bf16: bool) -> list[float]:
    """Each of two 1-thread processes' median training-step seconds, run side by side."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        start = time.time() + 15  # both have imported torch and built the model by then
        return pool.map(_train_in_child, [(bf16, start), (bf16, start)])


def measure() -> dict:
    import torch

    info = cpu()
    threads = torch.get_num_threads()
    precisions = ["fp32", "bf16"] if has_bf16(info["flags"]) else ["fp32"]
    out: dict = {"cpu": info, "torch": torch.__version__, "python": platform.python_version(), "threads": threads,
                 "ceiling_gflops": {}, "workloads": []}
    for precision in precisions:
        bf16 = precision == "bf16"
        ceiling = matmul_gflops(bf16, threads)
        out["ceiling_gflops"][precision] = round(ceiling, 1)
        for kind in SHAPES:
            flops = workload_flops(kind)
            for used in sorted({threads, 1}, reverse=True):
                seconds = workload_seconds(kind, bf16, used)
                out["workloads"].append({"workload": kind, "shape": "x".join(map(str, SHAPES[kind])),
                                         "precision": precision, "threads": used, "seconds": round(seconds, 4),
                                         "gflops": round(flops / seconds / 1e9, 1),
                                         "share_of_ceiling": round(flops / seconds / 1e9 / ceiling, 3)})
        if threads >= 2:
            each = packed_train_seconds(bf16)
            alone = next(w["seconds"] for w in out["workloads"]
                         if w["workload"] == "train" and w["precision"] == precision and w["threads"] == threads)
            out["workloads"].append({"workload": "train, two 1-thread processes", "shape": "2x128",
                                     "precision": precision, "threads": 1, "seconds": round(max(each), 4),
                                     "gflops": round(2 * workload_flops("train") / max(each) / 1e9, 1),
                                     "throughput_vs_one_trial": round(2 * alone / max(each), 2)})
    torch.set_num_threads(threads)
    return out


def figure(result: dict | None = None) -> dict:
    """The machine in one record, for other benchmarks' results: the CPU, its flags and the fp32 train step's
    GFLOP/s on every core (measured now, about 30 s, unless `result` is a measure() already made)."""
    if result is None:
        import torch

        threads = torch.get_num_threads()
        seconds = workload_seconds("train", False, threads)
        torch.set_num_threads(threads)
        gflops = round(workload_flops("train") / seconds / 1e9, 1)
        info = cpu()
    else:
        info = result["cpu"]
        gflops = next(w["gflops"] for w in result["workloads"]
                      if w["workload"] == "train" and w["precision"] == "fp32" and w["threads"] == result["threads"])
    return {"cpu": info["model"], "cores": info["cores"], "flags": info["flags"], "train_step_gflops_fp32": gflops}


def describe(machine: dict) -> str:
    """A figure() in words, for a results page."""
    return (f"{machine['cpu']}, {machine['cores']} cores ({', '.join(machine['flags']) or 'no AVX2'}); SmolLM2 "
            f"train step 2x128 fp32: {machine['train_step_gflops_fp32']} GFLOP/s (benchmarks/machine.py)")


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "machine.json").write_text(json.dumps(result, indent=1) + "\n")
    info = result["cpu"]
    lines = ["# The machine figure", "", "Measured with `python benchmarks/machine.py` on "
             f"{time.strftime('%Y-%m-%d')}: {info['model']}, {info['cores']} cores, flags "
             f"{', '.join(info['flags']) or 'none of ' + ', '.join(FLAGS)}; torch {result['torch']}, Python "
             f"{result['python']}.", "",
             "Ceiling (best `torch.mm` of 2,048 x 2,048 on " + f"{result['threads']} threads): " +
             ", ".join(f"{k} {v} GFLOP/s" for k, v in result["ceiling_gflops"].items()) + ".", "",
             "| workload | shape | precision | threads | seconds | GFLOP/s | share of the ceiling | throughput vs one "
             "trial |", "|---|---|---|---|---|---|---|---|"]
    for w in result["workloads"]:
        lines.append(f"| {w['workload']} | {w['shape']} | {w['precision']} | {w['threads']} | {w['seconds']} | "
                     f"{w['gflops']} | {w.get('share_of_ceiling', '')} | {w.get('throughput_vs_one_trial', '')} |")
    (RESULTS / "machine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    write(measure())


if __name__ == "__main__":
    main()
