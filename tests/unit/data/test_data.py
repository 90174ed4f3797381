"""sentinel.data: sources, document splits, token stream, packing, batching."""
from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from sentinel.data import (
    BUNDLED,
    Document,
    batches,
    check_seq_len,
    load_documents,
    pack_blocks,
    split_documents,
    token_stream,
)


def word_tokenizer(words: list[str], eos: str | None = "<eos>") -> transformers.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `words` (id = position), eos last."""
    vocab = {w: i for i, w in enumerate(dict.fromkeys([*words, "<unk>"]))}
    if eos:
        vocab[eos] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, unk_token="<unk>")


def synthetic_docs(n: int) -> list[Document]:
    return [Document(f"doc{i:03d}", f"text of document {i}\n" * (5 + 7 * (i % 4))) for i in range(n)]


@pytest.fixture(scope="module")
def books() -> list[Document]:
    return load_documents("gutenberg")


def test_gutenberg_is_the_14_bundled_books_with_lf_only(books):
    assert len(books) == 14
    assert len({d.name for d in books}) == 14
    moby = next(d for d in books if d.name == "melville-moby_dick")
    assert "\r" not in moby.text and moby.text.startswith("[Moby Dick by Herman Melville 1851]")


def test_wikitext_is_cut_into_articles_at_top_level_headings():
    docs = load_documents("wikitext-2")
    assert len(docs) > 100
    for d in docs:
        lines = d.text.splitlines()
        is_title = lambda line: line.startswith(" = ") and line.endswith(" = ") and not line.startswith(" = = ")  # noqa: E731
        assert is_title(lines[0])
        assert not any(is_title(line) for line in lines[1:])  # one article per document
    assert load_documents("wikitext-2-raw") == docs


def test_book_splits_are_disjoint_whole_books_and_train_gets_most(books):
    splits = split_documents(books, seed=0)
    names = [{d.name for d in part} for part in splits]
    assert all(names) and not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert set().union(*names) == {d.name for d in books}  # whole books, none cut
    sizes = [sum(len(d.text) for d in part) for part in splits]
    assert sizes[0] > 0.6 * sum(sizes)


def test_splits_are_stable_and_ignore_input_order_and_global_rng():
    docs = synthetic_docs(40)
    first = split_documents(docs, seed=3)
    torch.manual_seed(123)
    random.seed(123)
    shuffled = docs[:]
    random.Random(9).shuffle(shuffled)
    assert split_documents(shuffled, seed=3) == first
    torch.rand(10), random.random()  # draw from the global RNGs: must not matter
    assert split_documents(docs, seed=3) == first
    assert split_documents(docs, seed=4) != first


def test_split_fractions_follow_characters_for_many_documents():
    docs = synthetic_docs(200)
    train, score, eval_ = split_documents(docs, seed=0, fractions=(0.6, 0.2, 0.2))
    total = sum(len(d.text) for d in docs)
    biggest = max(len(d.text) for d in docs)
    for part, share in ((score, 0.2), (eval_, 0.2)):
        chars = sum(len(d.text) for d in part)
        assert share * total <= chars < share * total + biggest


def test_three_documents_give_one_each():
    docs = synthetic_docs(3)
    assert sorted(len(p) for p in split_documents(docs)) == [1, 1, 1]


def test_single_document_is_cut_into_contiguous_disjoint_ranges():
    text = "".join(f"line {i}\n" for i in range(1000))
    train, score, eval_ = split_documents([Document("one", text)], fractions=(0.8, 0.1, 0.1))
    assert train[0].text + score[0].text + eval_[0].text == text
    assert all(p[0].text.endswith("\n") for p in (train, score))  # cut at line breaks
    assert 0.75 < len(train[0].text) / len(text) < 0.85


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="fractions"):
        split_documents(synthetic_docs(5), fractions=(0.9, 0.1, 0.0))


def test_token_stream_joins_documents_with_eos():
    docs = [Document("a", "x y z"), Document("b", "y y")]
    tok = word_tokenizer(["x", "y", "z"])
    ids = token_stream(tok, docs)
    eos = tok.eos_token_id
    assert ids.dtype == torch.long
    assert ids.tolist() == [0, 1, 2, eos, 1, 1]


def test_token_stream_needs_a_separator_token():
    tok = word_tokenizer(["x"], eos=None)
    with pytest.raises(ValueError, match="neither an eos nor a sep"):
        token_stream(tok, [Document("a", "x")])


def test_pack_blocks_drops_the_remainder():
    ids = torch.arange(103)
    blocks = pack_blocks(ids, 10)
    assert blocks.shape == (10, 10)
    assert torch.equal(blocks.flatten(), ids[:100])


def test_too_short_corpus_names_length_and_seq_len():
    with pytest.raises(ValueError, match=r"mytext: 7 tokens .* seq_len 128"):
        pack_blocks(torch.arange(7), 128, source="mytext")


def test_batches_have_all_ones_attention_masks_and_a_short_last_batch():
    out = batches(torch.arange(50).reshape(5, 10), batch_size=2)
    assert [b["input_ids"].shape[0] for b in out] == [2, 2, 1]
    assert all(torch.equal(b["attention_mask"], torch.ones_like(b["input_ids"])) for b in out)


def test_check_seq_len_names_both_numbers():
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=11, n_positions=32, n_embd=8, n_layer=1, n_head=2))
    check_seq_len(model, 32)
    with pytest.raises(ValueError, match=r"seq_len: 33 .*32"):
        check_seq_len(model, 33)


def test_local_file_and_folder_sources(tmp_path):
    (tmp_path / "b.txt").write_text("second file\n")
    (tmp_path / "a.txt").write_text("first file\n")
    (tmp_path / "skip.md").write_text("not text\n")
    assert load_documents(str(tmp_path / "a.txt")) == [Document("a.txt", "first file\n")]
    assert [d.name for d in load_documents(str(tmp_path))] == ["a.txt", "b.txt"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.txt"):
        load_documents(str(tmp_path / "empty"))


def test_unknown_source_lists_bundled_names():
    with pytest.raises(ValueError) as err:
        load_documents("gutenbreg")
    assert all(name in str(err.value) for name in BUNDLED)


def test_unreachable_dataset_fails_fast_with_one_line(tmp_path):
    # A fresh interpreter, offline and with an empty cache: the error must come at once, as one line.
    code = (
        "from sentinel.data import load_documents\n"
        "try:\n    load_documents('wikitext:wikitext-2-raw-v1:test')\n"
        "except ValueError as e:\n    print('ERR', e)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert time.perf_counter() - start < 60
    lines = [l for l in out.stdout.splitlines() if l.startswith("ERR")]
    assert len(lines) == 1 and len(out.stdout.strip().splitlines()) == 1, out.stdout + out.stderr
    assert "wikitext:wikitext-2-raw-v1:test" in lines[0] and "local" in lines[0]


def test_sts_pairs_have_official_counts_and_scores_in_range():
    from sentinel.eval import load_stsb

    dev, test = load_stsb("dev"), load_stsb("test")
    assert (len(dev), len(test)) == (1500, 1379)
    assert all(0.0 <= s <= 5.0 and a and b for a, b, s in dev + test)
