"""The strategies that rank heads by what they do (iterative, redundancy, l0, dynamic) on tiny real models
with planted heads: heads made exactly useless must rank lowest, one of a duplicated pair must rank lowest
while its twin does not, each seed gives one answer, and each is checked against a brute-force reference."""
from __future__ import annotations

import pytest
import torch

from sentinel.finetune import FinetuneConfig, finetune
from sentinel.models import get_adapter, head_layout, mask_heads, prune_heads
from sentinel.models.layout import blocks, head_slices, slice_parameters
from sentinel.pruning import score_heads
from sentinel.pruning.dynamic import DynamicPruner, schedule
from sentinel.trial import SpecError, TrialSpec
from tests.tiny_models import CAUSAL, padded_batch, tiny_model

NEW = ["iterative", "redundancy", "l0", "dynamic"]
USELESS = {"gpt2": {0: [1], 1: [2]}, "bert": {0: [1], 1: [2]}, "llama": {0: [0, 1]}}  # llama: a whole KV group


def data() -> list[dict[str, torch.Tensor]]:
    return [padded_batch(seed, batch=4, length=16) for seed in range(4)]


def pieces(model, layer: int, heads: list[int]):
    """(block, HeadSlice) of `heads` in `layer`, with the KV heads only they read."""
    adapter, layout = get_adapter(model), head_layout(model)
    g = layout.group_size(layer)
    kv = sorted({h // g for h in heads if all(x in heads for x in range(h // g * g, h // g * g + g))})
    block = blocks(model, adapter)[layer]
    return [(block, piece) for piece in head_slices(adapter, layout, layer, heads, kv)]


def make_useless(model, heads: dict[int, list[int]]):
    """Zero the value rows and output columns of `heads`: their output is exactly 0, whatever the input."""
    with torch.no_grad():
        for layer, hs in heads.items():
            for block, piece in pieces(model, layer, hs):
                if piece.role in ("v", "o") and len(piece.index):
                    for p, dim, index in slice_parameters(block, piece):
                        p.index_fill_(dim, index, 0.0)
    return model


def duplicate(model, layer: int, source: int, target: int, scale: float = 3.0):
    """Head `target` becomes an exact copy of head `source` (q/k/v rows and o columns), both made large
    (v scaled), so weight- or loss-based criteria rank the pair high; redundancy must not keep both."""
    with torch.no_grad():
        for (block, src), (_, dst) in zip(pieces(model, layer, [source]), pieces(model, layer, [target])):
            for (p, dim, i), (_, _, j) in zip(slice_parameters(block, src), slice_parameters(block, dst)):
                if src.role == "v":
                    p.index_copy_(dim, i, p.index_select(dim, i) * scale)
                p.index_copy_(dim, j, p.index_select(dim, i))
    return model


def lowest(scores: torch.Tensor, heads: dict[int, list[int]]) -> bool:
    planted = torch.stack([scores[l, h] for l, hs in heads.items() for h in hs])
    others = torch.stack([scores[l, h] for l in range(scores.shape[0]) for h in range(scores.shape[1])
                          if h not in heads.get(l, [])])
    return bool(planted.max() < others.min())


@pytest.mark.parametrize("model_type", sorted(USELESS))
@pytest.mark.parametrize("strategy", NEW)
def test_useless_heads_rank_lowest(strategy, model_type):
    model = make_useless(tiny_model(model_type), USELESS[model_type])
    options = {"penalty": 1e-4} if strategy == "l0" and model_type not in CAUSAL else {}
    scores = score_heads(strategy, model, data(), seed=0, **options).scores
    assert lowest(scores, USELESS[model_type]), scores


@pytest.mark.parametrize("model_type", ["gpt2", "bert"])
def test_redundancy_ranks_one_of_a_duplicated_pair_lowest_and_keeps_its_twin(model_type):
    model = duplicate(tiny_model(model_type), layer=1, source=0, target=3)
    gradient = score_heads("gradient", model, data()).scores
    assert gradient[1, [0, 3]].min() > gradient[1, [1, 2]].max()  # a loss-based criterion keeps both twins
    scores = score_heads("redundancy", model, data()).scores
    pair = scores[1, [0, 3]]
    assert pair.min() == scores.min() and pair.max() > scores[1].min(), scores


@pytest.mark.parametrize("strategy", NEW)
def test_each_seed_gives_one_answer(strategy):
    model = tiny_model("bert")  # every new strategy but redundancy draws from the seed on encoders
    a, b = (score_heads(strategy, model, data(), seed=5).scores for _ in range(2))
    assert torch.equal(a, b)


def test_iterative_steps_match_gradient_rescored_on_the_physically_pruned_model():
    """Brute force: step 1 removes the lowest normalised gradient importances of the dense model; step 2 the
    lowest of the model with step 1's heads physically removed (not masked)."""
    model = tiny_model("gpt2")  # 8 heads, step 0.25: 2 heads per step
    result = score_heads("iterative", model, data(), step=0.25, max_level=0.5)
    order = [tuple(x) for x in result.meta["removal_order"]]
    assert len(order) == 4 and result.meta["steps"] == 2
    dense = score_heads("gradient", model, data(), normalize_per_layer=True).scores
    first = sorted(((float(dense[l, h]), l, h) for l in range(2) for h in range(4)))[:2]
    assert set(order[:2]) == {(l, h) for _, l, h in first}
    pruned = prune_heads(tiny_model("gpt2"), {l: [h for (ll, h) in order[:2] if ll == l] for l in range(2)})
    again = score_heads("gradient", pruned, data(), normalize_per_layer=True).scores
    current = {l: [h for h in range(4) if (l, h) not in order[:2]] for l in range(2)}  # original ids of kept heads
    ranked = sorted((float(again[l, i]), l, h) for l in range(2) for i, h in enumerate(current[l]))
    assert set(order[2:4]) == {(l, h) for _, l, h in ranked[:2]}
    assert sorted(result.scores.flatten().tolist()) == [float(i) for i in range(8)]  # a ranking


def test_dynamic_schedule_is_cubic_and_reaches_the_level():
    events = schedule(0.5, steps=100, updates=5, end=0.75)
    assert list(events) == [15, 30, 45, 60, 75]
    assert events[75] == 0.5 and events[15] == pytest.approx(0.5 * (1 - 0.8 ** 3))
    assert all(a < b for a, b in zip(events.values(), list(events.values())[1:]))


def test_dynamic_pruner_removes_useless_heads_first_and_freezes_removed_weights():
    model = make_useless(tiny_model("gpt2"), {0: [1], 1: [2]})
    mask = mask_heads(model, None)
    pruner = DynamicPruner(model, mask, data(), level=0.5, steps=8, policy="global", min_heads_per_layer=1,
                           generator=torch.Generator().manual_seed(0), updates=4, end=0.5)
    first = {}

    def on_step(step: int) -> bool:
        changed = pruner(step)
        if changed and not first:
            first.update(mask.masked())
        return changed

    curve = finetune(model, data(), FinetuneConfig(steps=8, warmup_steps=0, eval_every=4), mask=mask, on_step=on_step)
    assert [e["step"] for e in pruner.history] == [1, 2, 3, 4] and pruner.history[-1]["heads_removed"] == 4
    assert first == {0: [1], 1: [2]}  # the first event: 0.5 * (1 - 0.75^3) of 8 heads rounds to 2
    masked = mask.masked()
    assert sum(len(h) for h in masked.values()) == 4 and len(curve) == 9
    # removed heads' outputs stay exactly zero: masked == physically pruned at the end
    batch = data()[0]
    with torch.no_grad():
        masked_out = model(**batch).logits
        mask.remove()
        pruned_out = prune_heads(model, masked, ids="current")(**batch).logits
    torch.testing.assert_close(masked_out, pruned_out, atol=1e-5, rtol=1e-5)


def test_dynamic_needs_a_finetune():
    with pytest.raises(SpecError, match=r"^finetune: strategy 'dynamic' prunes during fine-tuning"):
        TrialSpec(model="sentinel/tiny-gpt2", strategy="dynamic", level=0.3, finetune=None)


def test_dynamic_trial_row_means_what_the_docs_say():
    """pruned: the final head set on the dense weights; recovered: the end of the fine-tune that removed them."""
    from sentinel.finetune import FinetuneConfig as Config
    from sentinel.pipeline import run_trial
    from sentinel.trial import DataSpec

    data = DataSpec(seq_len=32, batch_size=4, score_batches=1, eval_tokens=256, whole_split_reference=False)
    spec = TrialSpec(model="sentinel/tiny-gpt2", strategy="dynamic", level=0.25, data=data,
                     finetune=Config(steps=6, warmup_steps=0, eval_every=3), measure_speed=False,
                     strategy_options={"updates": 2})
    result = run_trial(spec)
    assert result.status == "ok", result.error
    assert result.heads_pruned == round(0.25 * result.heads_total)
    assert result.curve[0]["eval_metric"] == result.dense and result.recovered == result.curve[-1]["eval_metric"]
    assert result.pruned != result.dense and result.pruned != result.recovered
