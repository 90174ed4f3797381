"""Configs that used to pass validation and then fail every trial after Ray started (issue #30, item 8): each is
now one line and exit 2 before Ray, decided from the model's own files (its architecture on the meta device)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator import cli

REPO = Path(__file__).resolve().parents[3]
TINY_LLAMA = REPO / "sentinel" / "reference" / "tiny-llama"


def run(tmp_path: Path, capsys, model: str, **extra) -> str:
    import ray

    raw = {"experiment": "t", "models": [model], "strategies": ["random"], "levels": [0.5],
           "data": {"source": "gutenberg", "seq_len": 32}, "output": str(tmp_path / "out"), "device": "cpu",
           "finetune": {"steps": 2, "warmup_steps": 0, "eval_every": 1}}
    raw.update(extra)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    code, err = cli.main(["run", str(config)]), capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not ray.is_initialized()
    return err


@pytest.mark.parametrize("model, extra, message", [
    ("sentinel/all-MiniLM-L6-v2", {"extra_tasks": ["lm_eval:gutenberg_cloze"]},
     "extra_tasks[0]: 'lm_eval:gutenberg_cloze' does not fit 'sentinel/all-MiniLM-L6-v2', an encoder (no LM head); "
     "tasks that fit: stsb"),
    ("sentinel/tiny-gpt2", {"task": "stsb"}, "task: 'stsb' does not fit 'sentinel/tiny-gpt2', a causal LM; tasks that "
                                             "fit: perplexity, lm_eval:<task>"),
    ("sentinel/tiny-llama", {"generation": {"prompt_tokens": 200, "new_tokens": 100}},
     "generation: prompt_tokens + new_tokens = 300 is longer than 'sentinel/tiny-llama' accepts (256 positions)"),
    ("sentinel/tiny-llama", {"finetune": {"method": "lora", "lora_targets": ["self_attn"], "steps": 2,
                                          "warmup_steps": 0, "eval_every": 1}},
     "finetune.lora_targets: 'self_attn' names a LlamaAttention of 'sentinel/tiny-llama', not a layer LoRA adapts"),
    ("sentinel/tiny-llama", {"strategies": ["dynamic"], "finetune": {"method": "lora", "steps": 2,
                                                                     "warmup_steps": 0, "eval_every": 1}},
     "finetune.method: 'lora' trains adapters, while strategy 'dynamic' prunes by gates"),
    ("sentinel/tiny-llama", {"generation": {"engine": "llama.cpp"}, "method": "mask"},
     "generation.engine: 'llama.cpp' runs a GGUF export of the pruned model, which needs method 'remove'"),
    ("sentinel/tiny-gpt2", {"generation": {"engine": "llama.cpp"}},
     "generation.engine: 'llama.cpp' takes the Llama family (llama, mistral, qwen2); 'sentinel/tiny-gpt2' is a 'gpt2'"),
])
def test_a_cell_the_model_cannot_run_is_refused_before_ray(tmp_path, capsys, model, extra, message):
    assert message in run(tmp_path, capsys, model, **extra)


def test_gguf_file_must_be_in_the_folder_model(tmp_path, capsys):
    err = run(tmp_path, capsys, "x", models=[{"name": str(TINY_LLAMA), "options": {"gguf_file": "model.gguf"}}])
    assert "model_options.gguf_file: 'model.gguf' is not a file in" in err


def test_a_pruned_folder_with_a_bad_sidecar_is_refused_as_a_model(tmp_path, capsys):
    folder = tmp_path / "pruned"
    shutil.copytree(TINY_LLAMA, folder)
    (folder / "sentinel_heads.json").write_text(json.dumps(
        {"format_version": 1, "layers": {"9": {"heads": [0], "kv_heads": [0]}}, "dense": {"heads": 8, "kv_heads": 4}}))
    err = run(tmp_path, capsys, str(folder))
    assert "sentinel_heads.json: layers['9'] is not a layer of this model (0-3)" in err
