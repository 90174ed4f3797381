"""An untrusted model config is sized before anything is built (sentinel.models.size): a claim of 100,000 layers, a
model larger than the machine, a FIFO or an 8 GB sparse file where config.json belongs are each one line, in
seconds; the real models pass, and the estimate is a lower bound of their real size."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from sentinel.models import load_model
from sentinel.models.loading import local_meta_model, local_model_type
from sentinel.models.size import LIMITS, estimated_parameters, memory_bytes

REFERENCE = Path(__file__).resolve().parents[3] / "sentinel" / "reference" / "tiny-gpt2"


def folder_with(tmp_path: Path, **config: object) -> Path:
    """The shipped tiny GPT-2 folder with some config fields replaced."""
    folder = tmp_path / "model"
    shutil.copytree(REFERENCE, folder)
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, **config}))
    return folder


def test_a_config_claiming_100000_layers_is_refused_before_anything_is_built(tmp_path):
    folder = folder_with(tmp_path, n_layer=100_000)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"config num_hidden_layers is 100,000; allowed: at most 1,024"):
        local_meta_model(str(folder))
    with pytest.raises(ValueError, match=r"num_hidden_layers is 100,000"):
        load_model(str(folder))
    assert time.perf_counter() - started < 10


def test_weights_larger_than_the_machine_are_refused_with_both_sizes(tmp_path):
    folder = folder_with(tmp_path, n_layer=1_000, n_embd=16_384, n_head=128)
    with pytest.raises(ValueError, match=r"at least [\d,.]+ GiB of float32 weights, more than this machine's"):
        local_meta_model(str(folder))
    assert memory_bytes() > 2**30


@pytest.mark.parametrize("value", [0, -3, "12", 2.5, True])
def test_a_dimension_that_is_not_a_positive_integer_is_named(tmp_path, value):
    folder = folder_with(tmp_path, n_layer=value)
    with pytest.raises(ValueError, match=r"n_layer|num_hidden_layers") as caught:
        local_meta_model(str(folder))
    assert "\n" not in str(caught.value)  # one line


def test_a_fifo_or_a_huge_sparse_file_at_config_json_is_refused_without_reading_it(tmp_path):
    fifo = tmp_path / "fifo"
    shutil.copytree(REFERENCE, fifo)
    (fifo / "config.json").unlink()
    os.mkfifo(fifo / "config.json")
    with pytest.raises(ValueError, match="config.json"):
        local_model_type(str(fifo))  # refused, never opened: no writer ever comes
    sparse = tmp_path / "sparse"
    shutil.copytree(REFERENCE, sparse)
    with open(sparse / "config.json", "r+b") as f:
        f.truncate(8 * 2**30)
    with pytest.raises(ValueError, match="at most 4,194,304 are read"):
        local_model_type(str(sparse))


@pytest.mark.parametrize("name", ["sentinel/tiny-gpt2", "sentinel/tiny-llama", "sentinel/all-MiniLM-L6-v2"])
def test_real_models_pass_and_the_estimate_is_a_lower_bound(name):
    model = local_meta_model(name)
    real = sum(p.numel() for p in model.parameters())
    assert 0 < estimated_parameters(model.config) <= real
    assert all(getattr(model.config, field, 0) <= limit for field, limit in LIMITS.items())
