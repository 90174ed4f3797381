"""Configs are untrusted input: typed model options (no remote code unasked), bounded seeds, finite numbers."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.spec import SpecError, parse_spec
from sentinel.trial import MODEL_OPTIONS, TrialSpec

REPO = Path(__file__).resolve().parents[3]
TINY_LLAMA = REPO / "sentinel" / "reference" / "tiny-llama"


@pytest.fixture
def evil_model(tmp_path: Path) -> tuple[Path, Path]:
    """The shipped tiny Llama with an `auto_map` to code in its folder that leaves a marker file when it runs."""
    folder = tmp_path / "evil-llama"
    shutil.copytree(TINY_LLAMA, folder, ignore=shutil.ignore_patterns("v4"))
    marker = tmp_path / "remote-code-ran"
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def base(tmp_path: Path, model: str, **extra) -> dict:
    raw = {"experiment": "t", "models": [model], "strategies": ["random"], "levels": [0.5],
           "data": {"source": "gutenberg", "seq_len": 32}, "output": str(tmp_path / "out"), "device": "cpu"}
    raw.update(extra)
    return raw


@pytest.mark.parametrize("value", ["false", "no", "0", "False", [], 0, 1, None, {"x": 1}])
def test_trust_remote_code_is_a_yaml_bool_and_nothing_else(tmp_path, evil_model, capsys, value):
    folder, marker = evil_model
    raw = base(tmp_path, "x", models=[{"name": str(folder), "options": {"trust_remote_code": value}}])
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert cli.main(["run", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "models[0].options.trust_remote_code" in err and "true or false" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_model_folders_own_code_never_runs_without_trust_remote_code_true(evil_model):
    from sentinel.models import load_model

    folder, marker = evil_model
    model, _ = load_model(str(folder), trust_remote_code=False)
    assert type(model).__name__ == "LlamaForCausalLM" and not marker.exists()


def test_model_options_cover_load_models_keywords_each_with_its_rule():
    import inspect

    from sentinel.models import load_model

    keywords = [p for p in inspect.signature(load_model).parameters if p not in ("name_or_path", "device")]
    assert sorted(MODEL_OPTIONS) == sorted(keywords)
    for key, bad in (("dtype", "float8"), ("dtype", 16), ("attn_implementation", "magic"),
                     ("gguf_file", "../../etc/passwd"), ("gguf_file", True)):
        with pytest.raises(SpecError, match=rf"^model_options\.{key}: "):
            TrialSpec(model="sentinel/tiny-gpt2", strategy="random", level=0.5, model_options={key: bad})


def test_float16_on_cpu_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(SpecError, match=r"dtype: 'float16'"):
        parse_spec(base(tmp_path, "x", models=[{"name": "sentinel/tiny-gpt2", "options": {"dtype": "float16"}}]))
    with pytest.raises(SpecError, match=r"models\[0\]\.options\.dtype: 'float16' with no GPU"):
        parse_spec(base(tmp_path, "x", device="auto",
                        models=[{"name": "sentinel/tiny-gpt2", "options": {"dtype": "float16"}}]))
    spec = parse_spec(base(tmp_path, "x", models=[{"name": "sentinel/tiny-gpt2", "options": {"dtype": "bfloat16"}}]))
    assert spec.cells[0].model_options == {"dtype": "bfloat16"}


def test_seeds_are_bounded_by_the_rows_integer_column(tmp_path):
    with pytest.raises(SpecError, match=r"seeds\[0\]: 9223372036854775808 must be <= 9223372036854775807"):
        parse_spec(base(tmp_path, "sentinel/tiny-gpt2", seeds=[2**63]))
    spec = parse_spec(base(tmp_path, "sentinel/tiny-gpt2", seeds=[2**63 - 1]))
    import pyarrow as pa

    from orchestrator.results import schema

    pa.array([spec.cells[0].seed], schema("trials").field("seed").type)  # the row's column holds it


@pytest.mark.parametrize("field, value", [("finetune.lr", math.inf), ("finetune.lr", "inf"), ("finetune.lr", "1e400"),
                                          ("finetune.lr", math.nan), ("resources.cpu", math.nan),
                                          ("resources.gpu", math.inf), ("pending_report_s", math.inf)])
def test_every_float_field_refuses_nan_and_infinity(tmp_path, field, value):
    raw = base(tmp_path, "sentinel/tiny-gpt2", finetune={"steps": 2, "warmup_steps": 0})
    section, _, key = field.rpartition(".")
    (raw.setdefault(section, {}) if section else raw)[key] = value
    with pytest.raises(SpecError, match=rf"^{field}: .* finite"):
        parse_spec(raw)


def test_a_trial_whose_metric_is_not_finite_fails_with_the_reason():
    from sentinel.pipeline import _check_finite
    from sentinel.result import TrialResult

    result = TrialResult(spec=None, metric_name="perplexity", dense=10.0, pruned=math.inf, recovered=math.nan)  # type: ignore[arg-type]
    with pytest.raises(ArithmeticError, match=r"^pruned: the perplexity is inf \(not finite\)"):
        _check_finite(result)


@pytest.fixture
def unknown_type_model(evil_model) -> tuple[Path, Path]:
    """The evil folder with a model_type transformers does not know: transformers then *asks* whether to run the
    folder's code, and a `y` on stdin used to run it (through `run` and through `load_pruned`)."""
    folder, marker = evil_model
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil-llama"
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_no_prompt_and_no_code_when_stdin_says_yes_through_run(tmp_path, unknown_type_model):
    import subprocess
    import sys

    folder, marker = unknown_type_model
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(base(tmp_path, str(folder))))
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(config)], input="y\ny\ny\n",
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "models[0]" in done.stderr
    assert "[y/N]" not in done.stdout + done.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_no_prompt_and_no_code_when_stdin_says_yes_through_load_pruned(unknown_type_model, monkeypatch):
    import io

    from sentinel.models.io import SIDECAR, SIDECAR_VERSION, load_pruned

    folder, marker = unknown_type_model
    (folder / SIDECAR).write_text(json.dumps({"format_version": SIDECAR_VERSION, "pruned_heads": {}}))
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 5))
    with pytest.raises(ValueError, match="config.json"):
        load_pruned(folder)
    assert not marker.exists()


def test_load_pruned_builds_only_model_classes(tmp_path):
    from sentinel.models.io import SIDECAR, SIDECAR_VERSION, load_pruned

    folder = tmp_path / "pipeline"
    shutil.copytree(TINY_LLAMA, folder, ignore=shutil.ignore_patterns("v4"))
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["pipeline"]  # a top-level transformers callable, not a model class
    (folder / "config.json").write_text(json.dumps(config))
    (folder / SIDECAR).write_text(json.dumps({"format_version": SIDECAR_VERSION, "pruned_heads": {}}))
    with pytest.raises(ValueError, match=r"architectures \['pipeline'\] is not a transformers model class"):
        load_pruned(folder)
