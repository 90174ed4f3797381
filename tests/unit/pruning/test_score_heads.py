"""score_heads checks everything before the first forward pass, and says what is allowed."""
from __future__ import annotations

import pytest
import torch
import transformers

from sentinel.pruning import STRATEGIES, score_heads
from tests.tiny_models import padded_batch, tiny_model


@pytest.fixture
def counted():
    """A tiny gpt2 that counts its forward passes."""
    model = tiny_model("gpt2")
    calls = []
    model.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    return model, calls


def test_registry_holds_the_fourteen_strategies():
    assert STRATEGIES.names() == ["ablation", "attention_drop", "dynamic", "entropy", "flap", "gradient", "hybrid", "iterative",
                                  "l0", "magnitude", "random", "redundancy", "taylor", "wanda_sp"]


def test_unknown_strategy_lists_allowed_names(counted):
    model, calls = counted
    with pytest.raises(ValueError) as err:
        score_heads("entropi", model, [padded_batch()])
    assert str(err.value) == (
        "strategy: 'entropi' is not one of ablation, attention_drop, dynamic, entropy, flap, gradient, hybrid, iterative, l0, "
        "magnitude, random, redundancy, taylor, wanda_sp (did you mean 'entropy'?)"
    )
    assert not calls


def test_duplicate_strategy_name_is_an_error():
    with pytest.raises(ValueError, match="strategy 'entropy' is already registered"):
        STRATEGIES.add("entropy", STRATEGIES.get("random"))


@pytest.mark.parametrize(
    "strategy, options, message",
    [
        ("entropy", {"normalise": True}, "options.normalise: not an option of strategy 'entropy'; allowed: normalize"),
        ("magnitude", {"normalize": True}, "options.normalize: not an option of strategy 'magnitude'; allowed: none"),
        ("entropy", {"normalize": "yes"}, "options.normalize: 'yes' is not true or false"),
        ("hybrid", {"alpha": 1.5}, r"options.alpha: 1.5 must be <= 1"),
    ],
)
def test_bad_options_are_rejected_before_work(counted, strategy, options, message):
    model, calls = counted
    with pytest.raises(ValueError, match=message):
        score_heads(strategy, model, [padded_batch()], **options)
    assert not calls


@pytest.mark.parametrize(
    "batches, message",
    [
        ([], "batches: expected a non-empty list"),
        (padded_batch(), "batches: expected a non-empty list"),  # a dict, not a list of dicts
        ([{"input_ids": torch.ones(2, 3, dtype=torch.long)}], r"batches\[0\]: expected a dict with input_ids and attention_mask"),
        ([{"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 4)}], "same shape"),
        (
            [{"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.zeros(2, 3, dtype=torch.long)}],
            "batches: every attention_mask is 0",
        ),
    ],
)
@pytest.mark.parametrize("strategy", ["entropy", "gradient"])
def test_batches_without_tokens_or_malformed_are_rejected_before_work(counted, batches, message, strategy):
    model, calls = counted
    with pytest.raises(ValueError, match=message):
        score_heads(strategy, model, batches)
    assert not calls


def test_unsupported_model_type_lists_supported_types():
    # GPT-Neo used to be the example; the generic fallback adapts it now. Mamba has no attention at all.
    config = transformers.MambaConfig(vocab_size=97, hidden_size=16, num_hidden_layers=1, state_size=4)
    model = transformers.MambaModel(config).eval()
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match=r"model_type: 'mamba' has no registered adapter .*; registered: bert, distilbert, gpt2"):
        score_heads("entropy", model, [padded_batch()])
    assert not calls


def test_non_module_model_is_rejected():
    with pytest.raises(ValueError, match="model: expected a transformers nn.Module, got str"):
        score_heads("magnitude", "gpt2", [padded_batch()])


def test_meta_records_options_tokens_seed_and_passes():
    data = [padded_batch(), padded_batch(1)]
    result = score_heads("entropy", tiny_model("gpt2"), data, seed=4, normalize=True)
    tokens = sum(int(b["attention_mask"].sum()) for b in data)
    assert result.strategy == "entropy"
    assert result.meta["options"] == {"normalize": True} and result.meta["seed"] == 4
    assert result.meta["tokens"] == tokens == result.meta["positions"] and result.meta["forward_passes"] == 2


def test_registry_says_which_strategies_depend_on_the_seed():
    """Seed-independent strategies are scored once per grid; the property lives in the registry and holds."""
    lm, encoder = tiny_model("gpt2"), tiny_model("bert")
    for model in (lm, encoder):
        for name in STRATEGIES:
            strategy = STRATEGIES.get(name)
            if strategy.unit == "layer":  # whole attention sublayers: Llama-family models only (test_attention_drop)
                continue
            a = score_heads(name, model, [padded_batch()], seed=0).scores
            b = score_heads(name, model, [padded_batch()], seed=1).scores
            assert strategy.depends_on_seed(model) == (not torch.equal(a, b)), (name, type(model).__name__)
    assert not STRATEGIES.get("gradient").depends_on_seed(lm) and STRATEGIES.get("gradient").depends_on_seed(encoder)


@pytest.mark.parametrize("returned, says", [
    (lambda layers, heads: {"scores": torch.zeros(layers, heads)}, "returned dict; it must return HeadScores"),
    (lambda layers, heads: torch.zeros(layers, heads), "returned Tensor; it must return HeadScores"),
    (lambda layers, heads: ("scores", torch.zeros(heads, layers + 1)), r"returned scores as a torch.float32 tensor of shape \[\d+, \d+\]"),
    (lambda layers, heads: ("scores", torch.zeros(layers, heads, dtype=torch.long)), "returned scores as a torch.int64 tensor"),
    (lambda layers, heads: ("scores", [[0.0] * heads] * layers), "returned scores as list"),
])
def test_a_strategy_that_returns_the_wrong_thing_is_named_in_one_line(monkeypatch, returned, says):
    """An extender's strategy returning something else fails in score_heads, naming the strategy and the contract,
    not with an AttributeError inside selection."""
    from sentinel.pruning.base import HeadScores, Strategy

    model = tiny_model("gpt2")
    layers, heads = model.config.n_layer, model.config.n_head

    def wrong(model, batches, *, generator):
        value = returned(layers, heads)
        return HeadScores(scores=value[1], strategy="mine") if isinstance(value, tuple) else value

    monkeypatch.setitem(STRATEGIES._items, "mine", Strategy("mine", wrong, {}))
    with pytest.raises(TypeError, match=f"strategy 'mine' {says}") as err:
        score_heads("mine", model, [padded_batch()])
    assert "\n" not in str(err.value) and f"[{layers}, {heads}]" in str(err.value)
