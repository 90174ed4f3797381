"""lm-eval-harness on in-memory models: our offline cloze task built from held-out bundled text, the accuracy it
reports against an independent greedy check, and the names it refuses."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import sentinel
from sentinel.data import load_documents, split_documents
from sentinel import zero_shot


def test_cloze_items_come_from_the_held_out_books_and_end_in_their_target():
    items = zero_shot.cloze_items()
    assert len(items) == zero_shot.CLOZE_ITEMS and items == zero_shot.cloze_items()  # deterministic
    held_out = {d.name for d in split_documents(load_documents("gutenberg"), seed=0).eval}
    used_elsewhere = {d.name for split in ("train", "score")
                      for d in getattr(split_documents(load_documents("gutenberg"), seed=0), split)}
    assert {i["source"] for i in items} <= held_out and not ({i["source"] for i in items} & used_elsewhere)
    for item in items:
        words = item["text"].split(" ")
        assert words[-1] == item["target"] and item["target"].isalpha() and 40 <= len(words) <= 150


@pytest.fixture(scope="module")
def tiny_lm():
    return sentinel.load_model("sentinel/tiny-gpt2")


def test_accuracy_is_the_share_of_targets_that_are_the_greedy_continuation(tiny_lm):
    model, tokenizer = tiny_lm
    rows = {r["metric"]: r for r in zero_shot.evaluate_lm_eval(model, tokenizer, "lm_eval:gutenberg_cloze")}
    assert set(rows) == {"acc", "perplexity"}
    assert rows["acc"]["higher_is_better"] and not rows["perplexity"]["higher_is_better"]
    assert rows["acc"]["protocol"]["lm_eval"] == "0.4.13" and rows["acc"]["protocol"]["samples"]["effective"] == 200
    greedy = []
    with torch.no_grad():
        for item in zero_shot.cloze_items():
            context = tokenizer(item["text"].rsplit(" ", 1)[0])["input_ids"]
            target = tokenizer(" " + item["target"])["input_ids"]
            logits = model(input_ids=torch.tensor([context + target])).logits[0]
            predicted = logits[len(context) - 1: len(context) + len(target) - 1].argmax(-1).tolist()
            greedy.append(predicted == target)
    assert rows["acc"]["value"] == pytest.approx(sum(greedy) / len(greedy))
    assert rows["acc"]["stderr"] == pytest.approx((rows["acc"]["value"] * (1 - rows["acc"]["value"]) / 199) ** 0.5,
                                                  abs=1e-9)


def test_unknown_task_is_refused_with_the_offline_ones_named():
    with pytest.raises(ValueError, match=r"^'lm_eval:no_such_task' is not an lm-eval task \(offline tasks of ours: "
                                         "gutenberg_cloze"):
        zero_shot.check_task("lm_eval:no_such_task")
    assert zero_shot.check_task("lm_eval:arc_easy") == "lm_eval:arc_easy" and zero_shot.needs_hub("lm_eval:arc_easy")
    assert not zero_shot.needs_hub("lm_eval:gutenberg_cloze")


def test_without_lm_eval_the_error_names_the_extra_to_install():
    probe = ("import sys; sys.modules['lm_eval'] = None\n"
             "from sentinel import zero_shot\n"
             "try:\n    zero_shot.check_task('lm_eval:gutenberg_cloze')\n"
             "except ValueError as exc:\n    print(exc)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "lm-eval is not installed; install the extra: pip install 'sentinel-bench[lmeval]'"
