"""ablation: each unit's score is the calibration loss of the model with that unit physically removed, minus the dense
model's, computed independently here by removing it from a copy."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sentinel.models import prune_heads
from sentinel.models.device import mean_pool
from sentinel.pruning import score_heads
from tests.tiny_models import padded_batch, tiny_model


def lm_loss(model, batches) -> float:
    """Next-token cross-entropy per target over every batch, by hand (labels shifted here, padding ignored)."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(**batch).logits[:, :-1]
            labels = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
            nll += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    return nll / count


def embeddings(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([mean_pool(model(**b).last_hidden_state, b["attention_mask"]) for b in batches])


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "bert"])
def test_a_units_score_is_the_loss_increase_when_it_alone_is_removed(model_type):
    model = tiny_model(model_type)
    batches = [padded_batch(seed=0), padded_batch(seed=1)]
    scores = score_heads("ablation", model, batches).scores
    group = model.config.num_attention_heads // getattr(model.config, "num_key_value_heads", None) \
        if model_type == "llama" else 1
    dense_embeddings = None if model_type != "bert" else embeddings(model, batches)
    dense = lm_loss(model, batches) if model_type != "bert" else 0.0
    for layer in range(2):
        for first in range(0, 4, group):
            pruned = copy.deepcopy(model)
            prune_heads(pruned, {layer: list(range(first, first + group))})
            if model_type == "bert":
                loss = float((1 - F.cosine_similarity(embeddings(pruned, batches), dense_embeddings, dim=-1)).mean())
            else:
                loss = lm_loss(pruned, batches)
            for head in range(first, first + group):  # every query head of a KV group carries the group's score
                assert scores[layer, head].item() == pytest.approx(loss - dense, abs=2e-6), (layer, head)
    assert torch.equal(score_heads("ablation", model, batches, seed=5).scores, scores)  # reads no seed
