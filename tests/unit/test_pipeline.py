"""run_trial end to end on the shipped reference GPT-2 and on all-MiniLM-L6-v2 (no Ray)."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from sentinel.contract import SpecError
from sentinel.finetune import FinetuneConfig
from sentinel.pipeline import DataSpec, LocalShared, TrialSpec, _MODELS, run_trial
from sentinel.resampling import perplexity_of
from sentinel.result import TrialRecord
from sentinel.trial import GenerationSpec

# the whole eval split (dense_full) is evaluated only where a test checks it: on Gutenberg it costs ~8 s a model
SMALL = DataSpec(seq_len=32, stride=32, batch_size=8, score_batches=1, eval_tokens=1024, sts_pairs=64,
                 whole_split_reference=False)
WHOLE = DataSpec(**{**SMALL.to_dict(), "whole_split_reference": True})
SHORT = FinetuneConfig(steps=2, lr=1e-4, warmup_steps=1, batch_size=8, eval_every=2)


def spec(**overrides) -> TrialSpec:
    base = dict(model="sentinel/tiny-gpt2", strategy="magnitude", level=0.25, data=SMALL, finetune=SHORT)
    return TrialSpec(**{**base, **overrides})


@pytest.fixture(scope="module")
def shared() -> LocalShared:
    return LocalShared()


def test_gpt2_trial_runs_every_stage(shared):
    # scored on gutenberg, evaluated on WikiText-2: its eval split is a quarter of gutenberg's, and this trial also
    # evaluates the dense model on the whole of it
    result = run_trial(spec(data=DataSpec(**{**WHOLE.to_dict(), "eval_source": "wikitext-2"})), shared)
    assert result.status == "ok", result.error
    assert result.metric_name == "perplexity" and not result.higher_is_better
    assert all(math.isfinite(v) for v in (result.dense, result.pruned, result.recovered))
    assert result.heads_total == 32 and result.heads_pruned == 8  # round(0.25 * 32)
    assert len(result.pruned_heads) == 8 and all(0 <= l < 4 and 0 <= h < 8 for l, h in result.pruned_heads)
    assert result.params_after < result.params_before
    assert result.protocol["seq_len"] == 32 and result.protocol["placement"] == "spread"
    assert result.protocol["windows"] == 1024 // 32 and result.protocol["tokens"] == 32 * 31
    assert result.task == "perplexity" and result.protocol_label.startswith("wikitext-2 eval split, 32 windows of 32 tokens")
    assert math.isfinite(result.dense_full) and result.dense_full != result.dense  # the whole split, for reference
    calibration = result.protocol["calibration"]
    assert calibration["mode"] == "resample" and len(calibration["windows"]) == 8  # one batch of 8 windows
    assert [row["step"] for row in result.curve] == [0, 1, 2]
    assert result.curve[0]["eval_metric"] == result.pruned and result.curve[-1]["eval_metric"] == result.recovered
    assert {"load", "baseline", "score", "select", "prune", "eval_pruned", "finetune"} <= set(result.timings)
    assert len(result.scores) == 4 and len(result.scores[0]) == 8
    row = result.row()
    assert row["model"] == "sentinel/tiny-gpt2" and row["architecture"] == "gpt2" and row["trial_id"]
    # the evaluation units behind both values: one [summed NLL, tokens] per window, which give the value back
    for stage in ("pruned", "recovered"):
        units = np.array(row[f"{stage}_units"])
        assert units.shape == (32, 2) and (units[:, 1] == 31).all()
        assert perplexity_of(units) == pytest.approx(getattr(result, stage), rel=1e-6)
    assert row["pruned_units"] != row["recovered_units"]  # recovery changed the model: the last evaluation's units


def test_calibration_is_drawn_per_seed_from_documents_spread_over_the_score_split(shared):
    """With calibration resampled (the default) each seed scores heads on its own draw: entropy is scored per
    seed; magnitude reads no data and is scored once; `fixed` gives every seed one draw."""
    a, b = (run_trial(spec(strategy="entropy", level=0.5, seed=s, finetune=None, measure_speed=False), shared)
            for s in (0, 1))
    assert a.protocol["calibration"]["windows"] != b.protocol["calibration"]["windows"]
    assert not a.reused["scores"] and not b.reused["scores"] and a.scores != b.scores
    fixed = DataSpec(**{**SMALL.to_dict(), "calibration": "fixed"})
    c, d = (run_trial(spec(strategy="entropy", level=0.5, seed=s, finetune=None, measure_speed=False, data=fixed),
                      shared) for s in (0, 1))
    assert c.protocol["calibration"]["windows"] == d.protocol["calibration"]["windows"]
    assert d.reused["scores"] and c.scores == d.scores
    m0, m1 = (run_trial(spec(strategy="magnitude", level=0.45, seed=s, finetune=None, measure_speed=False), shared)
              for s in (5, 6))
    assert m1.reused["scores"]


def test_levels_reuse_baseline_and_scores(shared):
    low = run_trial(spec(level=0.1, strategy="entropy", seed=2), shared)  # seed 2: a draw no other test scored
    high = run_trial(spec(level=0.3, strategy="entropy", seed=2), shared)
    assert (low.reused["baseline"], low.reused["scores"]) == (True, False)
    assert (high.reused["baseline"], high.reused["scores"]) == (True, True)
    assert low.scores == high.scores and low.dense == high.dense
    # global selection on the same scores: the heads pruned at 10% are among those pruned at 30%
    assert {tuple(h) for h in low.pruned_heads} <= {tuple(h) for h in high.pruned_heads}


def test_cells_with_the_same_layout_share_one_pruned_metric_and_one_speed(shared):
    """magnitude depends on neither the seed nor the data: two seeds prune the same heads, so the pruned model is
    evaluated and timed once (the second cell reuses both); only the recovery differs. Random's seeds prune other
    heads."""
    first, second = (run_trial(spec(strategy="magnitude", level=0.5, seed=s), shared) for s in (0, 1))
    assert first.pruned_heads == second.pruned_heads and first.pruned == second.pruned
    assert not first.reused["pruned_eval"] and second.reused["pruned_eval"] and second.reused["scores"]
    assert not first.reused["speed"] and second.reused["speed"]
    assert (first.speed_before, first.speed_after) == (second.speed_before, second.speed_after)
    assert len(first.speedup_rounds) == 3 and first.speedup_rounds == second.speedup_rounds  # 3 timed rounds, a spread
    assert first.speed_quiet is True and first.flops_after < first.flops_before
    other = run_trial(spec(strategy="random", level=0.5, seed=1), shared)
    assert other.pruned_heads != first.pruned_heads and not other.reused["pruned_eval"]


def test_model_options_are_part_of_every_shared_key(shared):
    """Two entries of the same model with different load options are different models: nothing is shared."""
    plain = run_trial(spec(strategy="magnitude", level=0.4, finetune=None, measure_speed=False), shared)
    eager = run_trial(spec(strategy="magnitude", level=0.4, finetune=None, measure_speed=False,
                           model_options={"attn_implementation": "eager"}), shared)
    assert plain.pruned_heads == eager.pruned_heads
    assert not any(eager.reused[k] for k in ("baseline", "scores", "pruned_eval"))
    assert eager.pruned == pytest.approx(plain.pruned, rel=1e-4)  # same weights, other attention kernel


def test_same_spec_gives_the_same_numbers():
    first, second = run_trial(spec(strategy="random", seed=3)), run_trial(spec(strategy="random", seed=3))
    assert first.pruned_heads == second.pruned_heads
    assert (first.pruned, first.recovered) == (second.pruned, second.recovered)
    assert run_trial(spec(strategy="random", seed=4)).pruned_heads != first.pruned_heads


def test_mask_method_matches_removal_without_shrinking(shared):
    removed = run_trial(spec(finetune=None), shared)
    masked = run_trial(spec(finetune=None, method="mask"), shared)
    assert masked.pruned_heads == removed.pruned_heads
    assert masked.params_after == masked.params_before
    assert masked.pruned == pytest.approx(removed.pruned, rel=1e-4)
    assert masked.recovered == masked.pruned  # no fine-tuning asked for


def test_compensated_removal_is_its_own_model_recorded_in_the_row(shared):
    plain = run_trial(spec(finetune=None, measure_speed=False), shared)
    compensated = run_trial(spec(finetune=None, measure_speed=False, compensate=True), shared)
    assert compensated.status == "ok", compensated.error
    assert compensated.pruned_heads == plain.pruned_heads
    assert not compensated.reused["pruned_eval"]  # not the uncompensated layout's number
    assert compensated.pruned != plain.pruned
    assert compensated.row()["compensate"] is True and plain.row()["compensate"] is False
    # GPT-2's c_proj already has a bias: compensation moves numbers, not parameters
    assert compensated.params_after == plain.params_after
    # a field added later stays out of the trial id at its default: earlier results keep their ids
    assert plain.spec.trial_id() != compensated.spec.trial_id()
    legacy = {k: v for k, v in plain.spec.to_dict().items() if k not in TrialSpec.LATE_DEFAULTS}
    assert legacy["finetune"] is None  # (with a finetune section its late fields are left out the same way)
    from sentinel.trial import digest
    assert plain.spec.trial_id() == digest(legacy)


def test_generation_speed_and_kv_cache_once_per_layout(shared):
    generation = GenerationSpec(prompt_tokens=8, new_tokens=4, batch_size=2, rounds=3)
    first, second = (run_trial(spec(strategy="magnitude", level=0.5, seed=s, finetune=None, measure_speed=False,
                                    generation=generation), shared) for s in (0, 1))
    assert first.status == "ok", first.error
    assert first.kv_bytes_per_token_after < first.kv_bytes_per_token_before  # GPT-2: a removed head has its own K, V
    assert first.kv_bytes_per_token_after / first.kv_bytes_per_token_before == pytest.approx(
        1 - first.heads_pruned / first.heads_total)
    for name in ("prefill_tps", "decode_tps", "decode_batch_tps"):
        assert getattr(first, f"{name}_before") > 0 and getattr(first, f"{name}_after") > 0
    assert first.ideal_decode_batch_speedup > first.ideal_decode_speedup > 1 and first.generation_batch_size == 2
    assert second.reused["generation"] and second.decode_tps_after == first.decode_tps_after  # same layout
    for name in ("prefill", "decode", "decode_batch"):  # every round's ratio kept, the medians in the row
        ratios = getattr(first, f"{name}_speedup_rounds")
        assert len(ratios) == 3 and all(r > 0 for r in ratios)
        assert min(ratios) <= getattr(first, f"{name}_tps_after") / getattr(first, f"{name}_tps_before") * 1.5
    row = first.row()
    assert row["time_generation"] > 0 and row["reused_generation"] is False
    encoder = run_trial(spec(model="sentinel/all-MiniLM-L6-v2", strategy="magnitude", finetune=None,
                             measure_speed=False, generation=generation), shared)
    assert encoder.status == "ok" and math.isnan(encoder.decode_tps_after)  # nothing to generate: nothing recorded


def test_extra_tasks_are_measured_at_every_stage_beside_the_primary_metric(shared):
    first, second = (run_trial(spec(strategy="magnitude", level=0.5, seed=s, measure_speed=False,
                                    extra_tasks=("lm_eval:gutenberg_cloze", "perplexity")), shared) for s in (0, 1))
    assert first.status == "ok", first.error
    rows = {(m["stage"], m["task"], m["metric"]): m for m in first.metrics}
    assert {k[0] for k in rows} == {"dense", "pruned", "recovered"}
    assert {k[1:] for k in rows} == {("lm_eval:gutenberg_cloze", "acc"), ("lm_eval:gutenberg_cloze", "perplexity"),
                                     ("perplexity", "perplexity")}
    # the primary task named again as an extra gives the primary's own numbers, stage by stage
    assert rows["dense", "perplexity", "perplexity"]["value"] == pytest.approx(first.dense)
    assert rows["pruned", "perplexity", "perplexity"]["value"] == pytest.approx(first.pruned)
    assert rows["recovered", "perplexity", "perplexity"]["value"] == pytest.approx(first.recovered)
    cloze = rows["pruned", "lm_eval:gutenberg_cloze", "perplexity"]["value"]
    assert cloze != rows["dense", "lm_eval:gutenberg_cloze", "perplexity"]["value"]
    # one pruned model per layout: the second seed (same magnitude layout) reuses it; recovery is its own
    again = {(m["stage"], m["task"], m["metric"]): m["value"] for m in second.metrics}
    assert again["pruned", "lm_eval:gutenberg_cloze", "perplexity"] == cloze
    assert first.timings["extra"] > 0 and TrialRecord.of(first).metrics == first.metrics


def test_lora_recovery_is_merged_into_a_plain_model_of_the_pruned_shape(shared):
    lora = FinetuneConfig(steps=2, lr=1e-3, warmup_steps=0, batch_size=8, eval_every=2, method="lora", lora_rank=4)
    result = run_trial(spec(strategy="magnitude", level=0.5, measure_speed=False, finetune=lora), shared)
    full = run_trial(spec(strategy="magnitude", level=0.5, measure_speed=False), shared)
    assert result.status == "ok", result.error
    assert result.params_after == full.params_after  # merged: no adapter parameters left
    assert result.recovered != result.pruned and result.recovered != full.recovered
    ids = {s.trial_id() for s in (result.spec, full.spec)}
    assert len(ids) == 2  # the recipe is part of the cell
    default = spec(strategy="magnitude", level=0.5).to_dict()
    from sentinel.trial import digest
    legacy = {k: v for k, v in default.items() if k not in TrialSpec.LATE_DEFAULTS}
    legacy["finetune"] = {**{k: v for k, v in legacy["finetune"].items() if k not in FinetuneConfig.LATE_DEFAULTS},
                          **FinetuneConfig.RETIRED}  # and its removed `seed`, which every earlier cell held at 0
    assert spec(strategy="magnitude", level=0.5).trial_id() == digest(legacy)  # full recovery keeps its old id


def test_encoder_trial_distills_and_leaves_cached_dense_model_trainable(shared):
    result = run_trial(spec(model="sentinel/all-MiniLM-L6-v2", strategy="gradient", level=0.5, data=WHOLE), shared)
    assert result.status == "ok", result.error
    assert result.metric_name == "stsb_spearman" and result.higher_is_better
    # a different model (half its heads gone); on 64 pairs it can score above the dense one, so no direction
    assert 0.5 < result.dense <= 1 and 0 < result.pruned < 1 and result.pruned != result.dense
    assert 0.5 < result.dense_full <= 1 and result.dense_full != result.dense  # all 1379 pairs vs the 64 sampled
    assert result.heads_total == 72 and result.heads_pruned == 36
    assert all(math.isfinite(row["train_loss"]) for row in result.curve[1:])
    dense_models = [m for key, (m, _) in _MODELS.items() if key[0] == "sentinel/all-MiniLM-L6-v2"]
    assert dense_models and all(p.requires_grad for m in dense_models for p in m.parameters())


def test_a_causal_lm_distils_to_its_cached_dense_model_when_asked(shared):
    """finetune.objective 'distill' on an LM: the trial's dense model is the teacher (the KL to it is what falls, not
    the next-token loss), the cached dense model is left as it was, and the cell is another cell."""
    distill = FinetuneConfig(**{**SHORT.to_dict(), "objective": "distill", "temperature": 2.0})
    plain, distilled = run_trial(spec(), shared), run_trial(spec(finetune=distill), shared)
    assert plain.status == distilled.status == "ok", distilled.error
    assert distilled.pruned == plain.pruned and distilled.recovered != plain.recovered
    assert distilled.spec.trial_id() != plain.spec.trial_id()
    assert all(0 <= row["train_loss"] < 1 for row in distilled.curve[1:])  # a KL near 0, not a cross-entropy near 8
    dense_models = [m for key, (m, _) in _MODELS.items() if key[0] == "sentinel/tiny-gpt2"]
    assert dense_models and all(p.requires_grad for m in dense_models for p in m.parameters())


def test_what_only_a_run_can_find_becomes_a_failed_row_not_an_exception(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub name that is nowhere: known only when the trial loads it
    missing = run_trial(spec(model="does-not/exist-anywhere"))
    assert missing.status == "failed" and "does-not/exist-anywhere" in missing.error
    assert set(missing.row()) == set(run_trial(spec(strategy="random", level=0.0, finetune=None)).row())


@pytest.mark.parametrize("field, value, message", [
    ("model", "/nonexistent/model", "model: '/nonexistent/model' is not a model folder"),
    ("strategy_options", {"normalise": True}, "strategy_options.normalise: not an option of strategy 'entropy'; allowed: normalize"),
    ("min_heads_per_layer", 0, "min_heads_per_layer: 0 must be >= 1"),
    ("device", "gpu", "device: 'gpu' is not one of auto, cpu, cuda, cuda:N"),
    ("model_options", {"revision": "x"}, "model_options.revision: not an option of load_model"),
    ("compensate", "yes", "compensate: 'yes' is not true or false"),
    ("extra_tasks", ["lm_eval:nope"], "extra_tasks[0]: 'lm_eval:nope' is not an lm-eval task"),
    ("extra_tasks", ["bleu"], "extra_tasks[0]: 'bleu' is not a registered task (perplexity, stsb) or lm_eval:<task>"),
    ("extra_tasks", ["perplexity", "perplexity"], "extra_tasks: ['perplexity', 'perplexity'] names a task twice"),
    ("finetune", {"method": "lora", "lora_targets": ["q_proj"]},
     "finetune.lora_targets: 'q_proj' matches no module of 'sentinel/tiny-gpt2' (module names end in e.g."),
    ("finetune", {"method": "adapters"}, "finetune.method: 'adapters' is not one of full, lora"),
    ("finetune", {"lora_targets": ["attn.c_attn"]}, "finetune.lora_targets: set with method 'full'"),
    ("finetune", {"objective": "kl"}, "finetune.objective: 'kl' is not one of auto, cross_entropy, distill"),
    ("finetune", {"temperature": 2}, "finetune.temperature: 2 is set with objective 'auto'; a temperature applies"),
])
def test_what_files_can_tell_is_refused_when_the_spec_is_built(field, value, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        spec(**{"strategy": "entropy", field: value})


def test_an_encoder_asked_to_recover_by_next_token_loss_is_refused_before_any_work():
    with pytest.raises(SpecError, match=re.escape("finetune.objective: 'cross_entropy' needs an LM head, and "
                                                  "'sentinel/all-MiniLM-L6-v2' is an encoder (no LM head)")):
        TrialSpec.from_dict({**spec(model="sentinel/all-MiniLM-L6-v2").to_dict(),
                             "finetune": {"steps": 2, "warmup_steps": 0, "objective": "cross_entropy"}})


def test_the_same_rule_runs_from_a_dict_with_the_fields_path():
    with pytest.raises(SpecError, match=re.escape("data.stride: 100 must be in (0, seq_len=32]")):
        TrialSpec.from_dict({**spec().to_dict(), "data": {"seq_len": 32, "stride": 100}})
    with pytest.raises(SpecError, match=re.escape("finetune.warmup_steps: 9 must be in [0, steps=2]")):
        TrialSpec.from_dict({**spec().to_dict(), "finetune": {"steps": 2, "warmup_steps": 9}})
    with pytest.raises(SpecError, match=re.escape("data.sequence_length: unknown key in data; allowed: source,")):
        TrialSpec.from_dict({**spec().to_dict(), "data": {"sequence_length": 32}})
    assert TrialSpec.from_dict(spec().to_dict()) == spec()  # a worker rebuilds exactly the cell it was given


def test_compensation_is_refused_where_it_cannot_apply(tmp_path):
    import transformers

    t5 = tmp_path / "t5"
    transformers.T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4).save_pretrained(t5)
    with pytest.raises(SpecError, match=r"^compensate: '.*t5' is a t5 encoder-decoder"):
        spec(compensate=True, model=str(t5))
    with pytest.raises(SpecError, match=r"^compensate: bias compensation is part of physical removal \(method: remove\); "
                                        "got method 'mask'"):
        spec(compensate=True, method="mask")
    with pytest.raises(SpecError, match=r"^compensate: strategy 'dynamic' removes heads while fine-tuning"):
        spec(compensate=True, strategy="dynamic")


def test_device_option_resolves_on_cpu(shared):
    result = run_trial(spec(device="auto", bf16=True, finetune=None, measure_speed=False), shared)
    assert result.status == "ok" and result.device == "cpu"  # bf16 autocast applies to CUDA only
    no_gpu = run_trial(spec(device="cuda"), shared)
    assert no_gpu.status == "failed" and "cuda" in no_gpu.error


@pytest.mark.parametrize(
    "field, value, message",
    [("strategy", "entropi", "did you mean 'entropy'"), ("level", 1.0, "level: 1.0 is not a fraction in [0, 1)"),
     ("method", "cut", "method: 'cut' is not one of remove, mask")],
)
def test_bad_spec_is_rejected_when_built(field, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        spec(**{field: value})
