"""sentinel.work_cache: what every run would compute the same is computed once, found by its exact key, and read
back unchanged; a GGUF conversion loaded from the cache is the model the GGUF gives."""
from __future__ import annotations

import json
import os

import pytest
import torch

from sentinel import work_cache
from sentinel.export import export_gguf
from sentinel.models.loading import load_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SENTINEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(work_cache, "SHIPPED", tmp_path / "shipped.json")
    return tmp_path / "cache"


def test_a_value_is_computed_once_and_found_by_its_whole_key(cache):
    calls = []

    def compute(value):
        return lambda: calls.append(value) or value

    key = work_cache.key_of("whole-split", weights="abc", protocol="ppl-full/x")
    assert work_cache.get_or_compute(key, compute(1.5))[1]["from"] == "computed"
    value, provenance = work_cache.get_or_compute(key, compute(9.0))
    assert (value, provenance["from"], calls) == (1.5, "cache", [1.5])
    assert provenance["torch"] == torch.__version__
    other = work_cache.key_of("whole-split", weights="abd", protocol="ppl-full/x")  # other weights: another value
    assert other != key and work_cache.get_or_compute(other, compute(2.0))[0] == 2.0


def test_shipped_values_are_used_only_on_an_exact_key_and_off_means_off(cache, monkeypatch):
    key = work_cache.key_of("whole-split", weights="w", protocol="p")
    work_cache.SHIPPED.write_text(json.dumps({key: {"value": 52.6, "provenance": {"computed_at": "2026-12-07"}}}))
    assert work_cache.get_or_compute(key, lambda: pytest.fail("computed"))[:1] == (52.6,)
    assert work_cache.lookup(key)[1]["from"] == "shipped"
    assert work_cache.lookup(work_cache.key_of("whole-split", weights="w", protocol="q")) is None
    monkeypatch.setenv("SENTINEL_CACHE", "off")
    value, provenance = work_cache.get_or_compute(key, lambda: 7.0)
    assert (value, provenance["from"]) == (7.0, "computed")
    assert not (cache / "whole-split").exists()


def test_a_damaged_or_planted_entry_is_computed_again_not_trusted(cache):
    key = work_cache.key_of("whole-split", weights="w", protocol="p")
    work_cache.get_or_compute(key, lambda: 1.0)
    path = next((cache / "whole-split").glob("*.json"))
    path.write_text("{not json")
    value, provenance = work_cache.get_or_compute(key, lambda: 2.0)
    assert (value, provenance["from"]) == (2.0, "computed")
    path.unlink()
    os.mkfifo(path)  # a FIFO would hang a plain read
    assert work_cache.get_or_compute(key, lambda: 3.0)[0] == 3.0


def test_a_weights_digest_sees_every_byte():
    model = torch.nn.Linear(3, 2)
    before = work_cache.weights_digest(model)
    with torch.no_grad():
        model.bias[1] = torch.nextafter(model.bias[1], torch.tensor(1.0))
    assert work_cache.weights_digest(model) != before


def test_a_gguf_is_converted_once_and_the_cached_model_is_the_same_model(cache, tmp_path):
    model, tokenizer = load_model("sentinel/tiny-llama")
    path = export_gguf(model, tokenizer, tmp_path / "tiny.gguf", dtype="f32")
    first, first_tokenizer = load_model(str(path))
    assert len(list(cache.glob("gguf/*/complete"))) == 1
    second, second_tokenizer = load_model(str(path))  # from the converted folder
    assert first.sentinel_weights == second.sentinel_weights and first.sentinel_gguf == second.sentinel_gguf
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(0, first.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(first(input_ids=ids).logits, second(input_ids=ids).logits)
    for text in ("It was the best of times.", "  two  spaces\nand a line"):
        assert first_tokenizer(text).input_ids == second_tokenizer(text).input_ids
    assert (first_tokenizer.pad_token, first_tokenizer.eos_token) == (second_tokenizer.pad_token, second_tokenizer.eos_token)
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")  # other bytes: another key, converted anew
    load_model(str(path))
    assert len(list(cache.glob("gguf/*/complete"))) == 2
