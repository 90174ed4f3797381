"""Disjoint, deterministic train / score / eval splits, cut by document (never by line)."""
from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import NamedTuple

from sentinel.data.sources import Document


class Splits(NamedTuple):
    """Documents for recovery fine-tuning (`train`), head scoring (`score`) and evaluation (`eval`)."""

    train: list[Document]
    score: list[Document]
    eval: list[Document]


def split_documents(
    docs: Sequence[Document], seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> Splits:
    """Splits documents into disjoint train / score / eval sets.

    The rule, for three or more documents:
      1. Put the documents in a canonical order: sorted by (name, sha256 of text). The input order and the
         global RNGs do not matter.
      2. Shuffle that order with `random.Random(seed)`.
      3. Walk the shuffled list: `eval` takes documents until it holds at least `fractions[2]` of all
         characters, then `score` takes documents until it holds at least `fractions[1]`; `train` gets the rest.
         Each of `eval` and `score` takes at least one document and leaves at least one for the others.
      4. Each split is returned sorted by name.
    With few large documents (the 14 bundled books) `eval` and `score` therefore get one or a few whole books
    each and `train` most of them; with many small ones (WikiText articles) the character fractions are met
    to within one document.

    With one or two documents (e.g. a user's single text file) there is nothing to split by, so each document
    is cut into three contiguous character ranges in the ratio of `fractions` (train first, then score,
    then eval), each cut moved forward to the next line break; names get a `[start:end]` suffix. The seed is
    not used then.

    Args:
        docs: the documents (names need not be unique; identical documents are kept together).
        seed: the permutation seed.
        fractions: target (train, score, eval) shares of the characters; positive, summing to 1.

    Returns:
        `Splits(train, score, eval)`, each non-empty.
    """
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions: {tuple(fractions)!r} must be three positive numbers summing to 1")
    if not docs:
        raise ValueError("docs: no documents to split")
    if len(docs) < 3:
        return _split_by_characters(docs, fractions)

    canonical = sorted(docs, key=lambda d: (d.name, hashlib.sha256(d.text.encode()).hexdigest()))
    order = list(range(len(canonical)))
    random.Random(seed).shuffle(order)
    shuffled = [canonical[i] for i in order]

    total = sum(len(d.text) for d in docs)
    taken: list[list[Document]] = []
    start = 0
    for share, keep_after in ((fractions[2], 2), (fractions[1], 1)):  # eval, then score
        end = start + 1
        chars = len(shuffled[start].text)
        while chars < share * total and end < len(shuffled) - keep_after:
            chars += len(shuffled[end].text)
            end += 1
        taken.append(shuffled[start:end])
        start = end
    eval_docs, score_docs = taken
    by_name = lambda ds: sorted(ds, key=lambda d: d.name)  # noqa: E731
    return Splits(by_name(shuffled[start:]), by_name(score_docs), by_name(eval_docs))


def _split_by_characters(docs: Sequence[Document], fractions: tuple[float, float, float]) -> Splits:
    """Cuts each document into contiguous (train, score, eval) character ranges, cuts moved to line breaks."""
    parts: tuple[list[Document], ...] = ([], [], [])
    for doc in docs:
        n = len(doc.text)
        cuts = [0, _next_break(doc.text, round(fractions[0] * n)), 0, n]
        cuts[2] = max(cuts[1], _next_break(doc.text, round((fractions[0] + fractions[1]) * n)))
        for k in range(3):
            a, b = cuts[k], cuts[k + 1]
            if b <= a:
                raise ValueError(f"docs: {doc.name!r} ({n} characters) is too short to cut into train/score/eval")
            parts[k].append(Document(f"{doc.name}[{a}:{b}]", doc.text[a:b]))
    return Splits(*parts)


def _next_break(text: str, pos: int) -> int:
    """The position just after the first line break at or after `pos` (or `pos` itself when there is none)."""
    nl = text.find("\n", pos)
    return pos if nl < 0 or nl + 1 >= len(text) else nl + 1
