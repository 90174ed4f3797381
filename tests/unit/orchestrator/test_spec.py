"""Experiment spec validation: every bad input is one line naming the field, exit code 2, nothing started."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.spec import SpecError, apply_overrides, load_spec
from sentinel.trial import TrialSpec

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder that validation accepts as a GPT-2 model (validation reads config.json only)."""
    folder = tmp_path / "gpt2-folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    return folder


@pytest.fixture
def base(tmp_path: Path, model_dir: Path) -> dict:
    return {
        "experiment": "t", "models": [str(model_dir)], "strategies": ["entropy", "random"],
        "levels": [0.25, 0.5], "seeds": [0, 1], "data": {"source": "gutenberg", "seq_len": 32},
        "finetune": {"steps": 2, "warmup_steps": 0, "eval_every": 1}, "output": str(tmp_path / "out"),
    }


def write(tmp_path: Path, raw) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def run_cli(tmp_path: Path, raw, capsys, *overrides: str) -> str:
    """Runs `sentinel-bench run` on a bad config; checks exit 2, one line, no files, no Ray. Returns the line."""
    import ray

    argv = ["run", str(write(tmp_path, raw))] + [a for o in overrides for a in ("--set", o)]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    assert not ray.is_initialized()
    return err


def test_valid_spec_expands_to_grid(tmp_path, base):
    spec = load_spec(write(tmp_path, base))
    cells = spec.cells
    assert len(cells) == 1 * 2 * 2 * 2
    assert {(c.strategy, c.level, c.seed) for c in cells} == {
        (s, l, d) for s in ("entropy", "random") for l in (0.25, 0.5) for d in (0, 1)}
    assert (cells[0].data.seq_len, cells[0].data.stride) == (32, 32)  # the stride follows a short window
    assert cells[0].finetune.batch_size == 8  # follows data.batch_size
    assert spec.output_dir == str(tmp_path / "out" / "t")


def test_unknown_strategy_lists_allowed_names(tmp_path, base, capsys):
    base["strategies"] = ["entropy", "entropi"]
    err = run_cli(tmp_path, base, capsys)
    assert "strategies[1]" in err and "'entropi'" in err
    for name in ("entropy", "magnitude", "random", "gradient"):
        assert name in err


def test_unknown_model_type_names_supported_types(tmp_path, base, capsys):
    folder = tmp_path / "mamba"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    base["models"] = [str(folder)]
    err = run_cli(tmp_path, base, capsys)
    assert "models[0]" in err and "'mamba'" in err and "gpt2" in err


def test_unknown_shipped_model_lists_shipped(tmp_path, base, capsys):
    base["models"] = ["sentinel/no-such-model"]
    err = run_cli(tmp_path, base, capsys)
    assert "models[0]" in err and "sentinel/tiny-gpt2" in err and "sentinel/all-MiniLM-L6-v2" in err


@pytest.mark.parametrize("level", [1, 1.5, -0.1, "half", True])
def test_level_outside_the_unit_interval(tmp_path, base, capsys, level):
    base["levels"] = [0.25, level]
    err = run_cli(tmp_path, base, capsys)
    assert "levels[1]" in err and "is not a fraction in [0, 1)" in err  # the trial contract's rule, word for word


def test_level_zero_is_a_fine_tune_only_control(tmp_path, base):
    spec = load_spec(write(tmp_path, {**base, "levels": [0, 0.5]}))
    assert sorted({c.level for c in spec.cells}) == [0.0, 0.5]


@pytest.mark.parametrize("field,value", [
    ("levels", [0.25, 0.25]), ("seeds", [3, 3]), ("strategies", ["random", "random"]),
])
def test_duplicate_grid_cells(tmp_path, base, capsys, field, value):
    base[field] = value
    err = run_cli(tmp_path, base, capsys)
    assert err.startswith(f"sentinel-bench: error: {field}") and "twice" in err


def test_duplicate_models(tmp_path, base, capsys):
    base["models"] = base["models"] * 2
    assert "models" in run_cli(tmp_path, base, capsys)


def test_missing_data_source(tmp_path, base, capsys):
    base["data"]["source"] = str(tmp_path / "no-such-corpus.txt")
    err = run_cli(tmp_path, base, capsys)
    assert "data.source" in err and "gutenberg" in err


def test_unwritable_output(tmp_path, base, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    base["output"] = str(blocker / "results")
    err = run_cli(tmp_path, base, capsys)
    assert "output" in err and "not writable" in err


def test_unwritable_storage_path(tmp_path, base, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    base["storage_path"] = str(blocker / "tune")
    assert "storage_path" in run_cli(tmp_path, base, capsys)


def test_s3_storage_path_is_accepted_without_network(tmp_path, base):
    base["storage_path"] = "s3://bucket/prefix"
    spec = load_spec(write(tmp_path, base))
    assert spec.tune_location == ("s3://bucket/prefix", "t")


def test_malformed_yaml(tmp_path, capsys):
    err = run_cli(tmp_path, "models: [a, b\nlevels: {", capsys)
    assert "config" in err and "not valid YAML" in err and "line" in err


def test_unknown_top_level_key_lists_allowed(tmp_path, base, capsys):
    base["strategy"] = "entropy"
    err = run_cli(tmp_path, base, capsys)
    assert "strategy: unknown key" in err and "strategies" in err and "levels" in err


def test_unknown_nested_key_lists_allowed(tmp_path, base, capsys):
    base["data"]["seqlen"] = 32
    err = run_cli(tmp_path, base, capsys)
    assert "data.seqlen" in err and "seq_len" in err


@pytest.mark.parametrize("field,value,expect", [
    ("method", "prune", "method: 'prune' is not one of remove, mask"),
    ("device", "tpu", "device: 'tpu'"),
    ("resources", {"cpu": -1}, "resources.cpu"),
    ("max_failures", -1, "max_failures"),
    ("finetune", {"steps": 0}, "finetune.steps"),
    ("experiment", "a/b", "experiment"),
])
def test_bad_scalar_fields(tmp_path, base, capsys, field, value, expect):
    base[field] = value
    assert expect in run_cli(tmp_path, base, capsys)


def test_cuda_device_needs_a_gpu_share(tmp_path, base, capsys):
    base["device"] = "cuda"
    assert "resources.gpu" in run_cli(tmp_path, base, capsys)


def test_overrides_are_yaml_values(tmp_path, base):
    spec = load_spec(write(tmp_path, base), ["levels=[0.1, 0.2]", "data.seq_len=16", "finetune.lr=1e-3",
                                             "bf16=true", "resources.gpu=0.5"])
    cell = spec.cells[0]
    assert spec.levels == (0.1, 0.2) and cell.data.seq_len == 16 and cell.bf16 is True
    assert cell.finetune.lr == 1e-3 and spec.resources.gpu == 0.5


def test_bad_override_is_reported(tmp_path, base, capsys):
    assert "--set" in run_cli(tmp_path, base, capsys, "levels")
    assert "levels[0]" in run_cli(tmp_path, base, capsys, "levels=[2]")


def test_override_cannot_descend_into_scalar():
    with pytest.raises(SpecError, match="method is not a mapping"):
        apply_overrides({"method": "remove"}, ["method.x=1"])


def test_a_trial_field_has_one_default_for_yaml_and_library_users(tmp_path, base):
    for key in ("finetune", "device", "method", "data"):
        base.pop(key, None)
    cell = load_spec(write(tmp_path, base)).cells[0]
    library = TrialSpec(model=cell.model, strategy=cell.strategy, level=cell.level, seed=cell.seed)
    assert cell.device == library.device == "auto" and cell.method == library.method
    assert cell.data == library.data
    # the one YAML-only rule: an unset finetune.batch_size follows data.batch_size
    assert cell.finetune == replace(library.finetune, batch_size=cell.data.batch_size)


@pytest.mark.parametrize("device", ["cuda:1", "gpu"])
def test_device_is_the_trials_rule_and_a_grid_refuses_one_pinned_gpu(tmp_path, base, capsys, device):
    err = run_cli(tmp_path, {**base, "device": device}, capsys)
    assert ("pins one GPU" in err) if device == "cuda:1" else ("device: 'gpu' is not one of auto, cpu, cuda, cuda:N" in err)


@pytest.mark.parametrize("name", ["default", "smoke", "seed-distilgpt2", "comparison", "zero_shot"])
def test_shipped_configs_validate(name):
    spec = load_spec(CONFIGS / f"{name}.yaml")
    assert spec.experiment == name and spec.cells


def test_seed_config_reproduces_seed_grid():
    spec = load_spec(CONFIGS / "seed-distilgpt2.yaml")
    assert [m.name for m in spec.models] == ["distilgpt2"]
    assert [s.name for s in spec.strategies] == ["entropy", "magnitude", "random"]
    cell = spec.cells[0]
    assert spec.levels == (0.1, 0.3, 0.5) and cell.finetune.steps == 100 and cell.data.source == "gutenberg"


def test_stride_longer_than_window(tmp_path, base, capsys):
    base["data"] = {"source": "gutenberg", "seq_len": 32, "stride": 64}
    assert "data.stride" in run_cli(tmp_path, base, capsys)


def test_compensation_for_the_experiment_or_per_strategy_entry(tmp_path, base):
    raw = {**base, "strategies": ["random", {"name": "random", "compensate": True}, {"name": "entropy"}],
           "compensate": False}
    cells = load_spec(write(tmp_path, raw)).cells
    assert sorted({(c.strategy, c.compensate) for c in cells}) == [("entropy", False), ("random", False),
                                                                    ("random", True)]
    everywhere = load_spec(write(tmp_path, {**base, "compensate": True})).cells
    assert all(c.compensate for c in everywhere)


@pytest.mark.parametrize("change, expect", [
    ({"compensate": "true"}, "compensate: 'true' is not true or false"),
    ({"strategies": [{"name": "random", "compensate": 1}]}, "strategies[0].compensate: 1 is not true or false"),
    ({"compensate": True, "method": "mask"}, "compensate: bias compensation is part of physical removal"),
    ({"models": [{"name": "x", "compensate": True}]}, "models[0].compensate: unknown key"),
])
def test_bad_compensation_is_one_line_before_ray(tmp_path, base, capsys, change, expect):
    assert expect in run_cli(tmp_path, {**base, **change}, capsys)


def test_generation_section_reaches_every_cell_and_is_checked(tmp_path, base, capsys):
    cells = load_spec(write(tmp_path, {**base, "generation": {"new_tokens": 16}})).cells
    assert all(c.generation.new_tokens == 16 and c.generation.batch_size == 8 for c in cells)
    assert all(c.generation is None for c in load_spec(write(tmp_path, base)).cells)  # off unless asked
    assert "generation.batch_size: 0 must be >= 1" in run_cli(tmp_path, {**base, "generation": {"batch_size": 0}}, capsys)
    assert "generation.beams: unknown key in generation" in run_cli(tmp_path, {**base, "generation": {"beams": 2}}, capsys)


def test_extra_tasks_for_all_models_or_one(tmp_path, base, model_dir):
    raw = {**base, "extra_tasks": ["perplexity"],
           "models": [str(model_dir), {"name": "sentinel/tiny-gpt2", "extra_tasks": ["lm_eval:gutenberg_cloze"]}]}
    cells = load_spec(write(tmp_path, raw)).cells
    assert {(c.model, c.extra_tasks) for c in cells} == {(str(model_dir), ("perplexity",)),
                                                         ("sentinel/tiny-gpt2", ("lm_eval:gutenberg_cloze",))}


def test_an_lm_eval_task_that_needs_the_hub_is_refused_offline_before_ray(tmp_path, base, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = run_cli(tmp_path, {**base, "extra_tasks": ["lm_eval:arc_easy"]}, capsys)
    assert "extra_tasks: 'lm_eval:arc_easy' reads its data from the hub, which is not reachable" in err
    assert "use lm_eval:gutenberg_cloze" in err
    assert "models[0].extra_tasks[0]: 'lm_eval:x' is not an lm-eval task" in run_cli(
        tmp_path, {**base, "models": [{"name": base["models"][0], "extra_tasks": ["lm_eval:x"]}]}, capsys)


@pytest.mark.parametrize("entry, expect", [
    ({"name": "hybrid", "options": {"alpha": 2}}, "strategies[1].options.alpha: 2 must be <= 1"),
    ({"name": "taylor", "options": {"form": "fisher"}}, "strategies[1].options.form: 'fisher' is not one of element, vector"),
    ({"name": "l0", "options": {"warmup": 3}}, "strategies[1].options.warmup: not an option of strategy 'l0'; allowed:"),
])
def test_strategy_options_are_checked_by_the_contracts_rules_with_their_yaml_path(tmp_path, base, capsys, entry, expect):
    assert expect in run_cli(tmp_path, {**base, "strategies": ["random", entry]}, capsys)


def test_per_model_finetune_overrides_the_section(tmp_path, base, model_dir):
    base["models"] = [str(model_dir), {"name": "sentinel/tiny-llama", "finetune": {"steps": 5, "lr": 1e-5}}]
    cells = load_spec(write(tmp_path, base)).cells
    by_model = {c.model: c.finetune for c in cells}
    assert by_model[str(model_dir)].steps == 2 and by_model["sentinel/tiny-llama"].steps == 5
    assert by_model["sentinel/tiny-llama"].lr == 1e-5
    assert by_model["sentinel/tiny-llama"].eval_every == 1  # the rest comes from the section


def test_per_model_levels_and_seeds_replace_the_experiments(tmp_path, base, model_dir):
    base["models"] = [str(model_dir), {"name": "sentinel/tiny-llama", "levels": [0.3], "seeds": [0, 1, 2]}]
    spec = load_spec(write(tmp_path, base))
    grid = {(c.model, c.level, c.seed) for c in spec.cells}
    assert {(l, s) for m, l, s in grid if m == str(model_dir)} == {(l, s) for l in (0.25, 0.5) for s in (0, 1)}
    assert {(l, s) for m, l, s in grid if m == "sentinel/tiny-llama"} == {(0.3, s) for s in (0, 1, 2)}
    assert len(spec.cells) == 2 * (4 + 3)  # two strategies
    assert spec.to_dict()["models"][1]["seeds"] == [0, 1, 2]


@pytest.mark.parametrize("entry,expect", [
    ({"levels": [1.5]}, "models[0].levels[0]: 1.5 is not a fraction in [0, 1)"),
    ({"seeds": [1, 1]}, "models[0].seeds: 1 appears twice"),
    ({"seeds": []}, "models[0].seeds: is empty"),
])
def test_bad_per_model_levels_or_seeds_name_the_entry(tmp_path, base, capsys, entry, expect):
    base["models"] = [{"name": "sentinel/tiny-llama", **entry}]
    assert expect in run_cli(tmp_path, base, capsys)


def test_bad_per_model_finetune_names_the_model_entry(tmp_path, base, capsys):
    base["models"] = [{"name": "sentinel/tiny-llama", "finetune": {"stepz": 5}}]
    assert "models[0].finetune.stepz: unknown key" in run_cli(tmp_path, base, capsys)


def test_min_heads_per_layer_below_one_is_refused_before_ray(tmp_path, base, capsys):
    base["min_heads_per_layer"] = 0
    assert "min_heads_per_layer: 0 must be >= 1" in run_cli(tmp_path, base, capsys)


@pytest.mark.parametrize("override,expect", [
    ("resources.cpu=4096", "resources.cpu: 4096 per trial, but this machine has"),
    ("resources.gpu=64", "resources.gpu: 64 per trial, but this machine has"),
])
def test_resources_a_local_machine_cannot_give_are_refused_instead_of_waiting(tmp_path, base, capsys, override, expect):
    assert expect in run_cli(tmp_path, base, capsys, override)


def test_local_resource_check_counts_what_the_machine_has(tmp_path, base):
    from orchestrator.spec import check_local_run, parse_spec

    spec = parse_spec({**base, "resources": {"cpu": 2, "gpu": 1}})
    check_local_run(spec, cpus=2, gpus=1)
    with pytest.raises(SpecError, match="resources.cpu: 2 per trial, but this machine has 1 CPU"):
        check_local_run(spec, cpus=1, gpus=1)
    with pytest.raises(SpecError, match="resources.gpu: 1 per trial, but this machine has 0 GPU"):
        check_local_run(spec, cpus=2, gpus=0)
    check_local_run(parse_spec({**base, "resources": {"cpu": 1, "gpu": 1}, "gpu_dry_run": True}), cpus=2, gpus=0)


def test_hub_model_neither_cached_nor_reachable_is_refused_before_ray(tmp_path, base, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub, whatever the machine's network
    err = run_cli(tmp_path, base, capsys, "models=[does-not/exist-anywhere]")
    assert "models[0]: 'does-not/exist-anywhere' is neither a shipped model" in err


def test_output_the_os_will_not_let_us_write_is_refused_in_one_line(tmp_path, base, capsys):
    assert "output: '/proc/sentinel-x' is not writable ('/proc'" in run_cli(tmp_path, base, capsys, "output=/proc/sentinel-x")


@pytest.mark.parametrize("model,limit", [("sentinel/all-MiniLM-L6-v2", 512), ("sentinel/smollm2-135m", 8192)])
def test_seq_len_beyond_the_models_context_is_refused_before_ray(tmp_path, base, capsys, model, limit):
    base["models"] = [model]
    err = run_cli(tmp_path, base, capsys, f"data.seq_len={limit + 1}")
    assert f"data.seq_len: {limit + 1} is longer than {model!r} accepts ({limit} positions)" in err and "models[0]" in err


def test_random_reference_adds_layout_cells_per_model_and_level(tmp_path, base):
    from sentinel.trial import reference_seed

    spec = load_spec(write(tmp_path, {**base, "random_reference": {"layouts": 20, "recovered": 5}}))
    reference = [c for c in spec.cells if c.reference]
    assert len(spec.cells) == 8 + 2 * 20 and len(reference) == 40
    assert {(c.level, c.seed) for c in reference} == {(l, d) for l in (0.25, 0.5) for d in range(20)}
    assert all(c.strategy == "random" and not c.measure_speed and c.generation is None for c in reference)
    recovered = [c for c in reference if c.finetune is not None]
    assert sorted({c.seed for c in recovered}) == [0, 1, 2, 3, 4] and len(recovered) == 10
    assert recovered[0].finetune == spec.cells[0].finetune  # the model's own recovery recipe
    # draw d is not the random strategy's seed d: its heads come from a stream of their own
    assert reference_seed(0) != 0 and len({reference_seed(d) for d in range(20)}) == 20
    strategy_ids = {c.trial_id() for c in spec.cells if not c.reference}
    assert strategy_ids == {c.trial_id() for c in load_spec(write(tmp_path, base)).cells}  # strategy cells unchanged
    assert load_spec(write(tmp_path, base)).to_dict()["random_reference"] is None
    assert spec.to_dict()["random_reference"] == {"layouts": 20, "recovered": 5}


@pytest.mark.parametrize("value, expect", [
    ({"layouts": 5}, "random_reference.layouts: 5 is fewer than a test needs; use at least 20"),
    ({"layouts": -1}, "random_reference.layouts: -1 must be >= 0"),
    ({"layouts": 30, "recovered": 31}, "random_reference.recovered: 31 is more than the 30 layouts; use 0 to 30"),
    ({"layouts": 30, "recovered": 2}, "random_reference.recovered: 2 is fewer than a test needs; use 0"),
    ({"layouts": 30, "draws": 2}, "random_reference.draws: unknown key in random_reference; allowed: layouts, recovered"),
    ([30], "random_reference: [30] is not a mapping"),
])
def test_bad_random_reference_is_one_line_before_ray(tmp_path, base, capsys, value, expect):
    assert expect in run_cli(tmp_path, {**base, "random_reference": value}, capsys)


def test_a_reference_layout_is_drawn_by_random_only():
    with pytest.raises(SpecError, match="^reference: a reference layout is drawn by strategy 'random', not 'entropy'"):
        TrialSpec.from_dict({"model": "sentinel/tiny-gpt2", "strategy": "entropy", "level": 0.3, "reference": True})


@pytest.mark.parametrize("key", ["cpu", "gpu"])
def test_a_resource_share_ray_cannot_schedule_is_one_line_before_ray(tmp_path, base, capsys, key):
    err = run_cli(tmp_path, {**base, "resources": {"cpu": 1, key: 1e-8}}, capsys)
    assert f"resources.{key}: 1e-08 is below the smallest share Ray schedules (0.0001)" in err


def test_a_strategy_entry_can_have_its_own_policy_and_models(tmp_path, base, capsys):
    other = tmp_path / "llama-folder"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    raw = {**base, "models": [base["models"][0], str(other)], "levels": [0.5], "seeds": [0],
           "strategies": ["entropy", {"name": "entropy", "policy": "uniform", "models": [str(other)]}]}
    cells = load_spec(write(tmp_path, raw)).cells
    assert sorted((Path(c.model).name, c.strategy, c.policy) for c in cells) == [
        ("gpt2-folder", "entropy", "global"), ("llama-folder", "entropy", "global"),
        ("llama-folder", "entropy", "uniform")]
    from sentinel.result import strategy_label
    assert strategy_label("entropy", {}, False, "uniform") == "entropy (uniform)"
    bad = {**raw, "strategies": [{"name": "entropy", "models": ["elsewhere"]}]}
    assert "strategies[0].models: 'elsewhere' is not one of the experiment's models" in run_cli(tmp_path, bad, capsys)
    bad = {**raw, "strategies": [{"name": "entropy", "policy": "sideways"}]}
    assert "strategies[0].policy: 'sideways' is not one of global, per_layer, uniform" in run_cli(tmp_path, bad, capsys)


def test_an_object_store_endpoint_the_uri_names_is_dialled_before_its_client_retries(monkeypatch):
    from orchestrator.spec import check_storage, store_endpoint

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert store_endpoint("s3://bucket/x") == ("127.0.0.1", 9)
    assert store_endpoint("s3://bucket/x?endpoint_override=example.org&scheme=https") == ("example.org", 443)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert store_endpoint("s3://bucket/x") is None  # AWS's own endpoint: left to the client
    for hostile in ("127.0.0.1:99999", "127.0.0.1:abc"):  # urllib raises on reading such a port: never a traceback
        assert store_endpoint(f"s3://bucket/x?endpoint_override={hostile}") is None
    with pytest.raises(SpecError, match=r"cannot be reached \(its endpoint 127\.0\.0\.1:9: Connection refused\)"):
        check_storage("s3://bucket/x?endpoint_override=127.0.0.1:9&scheme=http", "output")


@pytest.mark.parametrize("address", ["http://127.0.0.1:99999", "127.0.0.1:abc"])
def test_an_address_whose_port_is_no_port_is_one_line(address):
    from orchestrator.ray_jobs import SubmitError, resolve_address
    from orchestrator.ray_session import check_address

    with pytest.raises(SubmitError, match="is not a job server URL"):
        resolve_address(address)
    with pytest.raises(SpecError, match="is not a Ray address"):
        check_address(address.removeprefix("http://"))


@pytest.mark.parametrize("extra, field", [
    ({"random_reference": {"layouts": 1_000_000}}, "layouts"),  # a typo for 100: was still expanding after 120 s
    ({"seeds": list(range(2_000)), "levels": [i / 100 for i in range(1, 31)]}, "grid"),  # 120,000 cells
])
def test_an_oversized_grid_or_reference_is_one_line_before_a_cell_is_built(tmp_path, base, capsys, extra, field):
    import time

    start = time.perf_counter()
    err = run_cli(tmp_path, {**base, **extra}, capsys)
    assert time.perf_counter() - start < 30  # refused from the counts, not after expanding them
    assert err.startswith("sentinel-bench: error: ") and field in err and ("at most" in err or "<=" in err)


def test_a_key_given_twice_is_one_line_naming_it_and_where(tmp_path, base, capsys):
    """YAML keeps the last of two equal keys silently: `levels` written twice would run the second and say nothing."""
    text = yaml.safe_dump(base) + "levels: [0.9]\n"
    err = run_cli(tmp_path, text, capsys)
    assert "'levels' is given twice" in err and "line" in err


@pytest.mark.parametrize("answer", [None, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"],
                         ids=["a silent listener", "a web server"])
def test_an_address_that_is_not_ray_is_refused_in_seconds_not_retried_for_minutes(monkeypatch, answer):
    """RAY_ADDRESS naming a TCP service that is not Ray had ray.init retry for minutes; a Ray GCS speaks gRPC
    (HTTP/2), and anything that does not answer its preface is refused in one line (the positive case: the
    integration tests run on a real GCS address)."""
    import socket
    import threading
    import time

    from orchestrator import ray_session

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def serve():  # the dial, then the preface: each connection answered as this service would
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                if conn.recv(1024) and answer:
                    conn.sendall(answer)
                    time.sleep(0.5)

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setattr(ray_session, "CONNECT_TIMEOUT_S", 1.0)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(SpecError, match=r"RAY_ADDRESS: '127\.0\.0\.1:\d+' accepts connections but does not speak gRPC"):
        ray_session.check_address(None)
    assert time.perf_counter() - start < 5
    server.close()
