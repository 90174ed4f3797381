"""Text sources: the bundled offline corpus, local files, and `datasets` hub sets, as whole documents.

A `Document` is the unit of splitting: scoring, tuning and evaluation never share one (see `splits.py`).
"""
from __future__ import annotations

import contextlib
import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sentinel.files import regular_file_size
from sentinel.models.hub import hub_reachable

CORPUS_DIR = Path(__file__).parent / "corpus"
BUNDLED = ("gutenberg", "wikitext-2", "wikitext-2-raw")
# A top-level WikiText heading line is " = Title = "; sections are " = = Section = = ".
_WIKI_TITLE = re.compile(r"^ = [^=].* = $")


@dataclass(frozen=True)
class Document:
    """One whole text (a book, an article, a file): the unit that splits never cut across."""

    name: str
    text: str


def load_documents(source: str) -> list[Document]:
    """Loads a text source as a list of documents.

    Args:
        source: `gutenberg` (14 bundled public-domain books, one document per book), `wikitext-2` or
            `wikitext-2-raw` (bundled WikiText-2 raw valid + test, one document per article), a local text
            file (one document) or folder (one document per `*.txt`, sorted by name), or a `datasets` set as
            `path:name:split` or `path:split` (e.g. `wikitext:wikitext-2-raw-v1:test`; column `text`).

    Returns:
        The documents, in a fixed order.
    """
    if source == "gutenberg":
        books = sorted((CORPUS_DIR / "gutenberg").glob("*.txt.gz"))
        return [Document(p.name.removesuffix(".txt.gz"), _read_gz(p)) for p in books]
    if source in ("wikitext-2", "wikitext-2-raw"):
        docs: list[Document] = []
        for split in ("valid", "test"):
            lines = _read_gz(CORPUS_DIR / "wikitext-2" / f"wiki.{split}.raw.gz").splitlines(keepends=True)
            docs += _wiki_articles(lines, prefix=f"wiki.{split}")
        return docs
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"source: folder {source!r} has no *.txt files")
        sizes = [_text_file_size(p) for p in files]
        if sum(sizes) > MAX_SOURCE_BYTES:
            raise ValueError(f"source: folder {source!r} holds {sum(sizes) / 2**20:,.0f} MiB of text, over the "
                             f"{MAX_SOURCE_BYTES // 2**20} MiB a local source may hold")
        return [Document(p.name, p.read_text(encoding="utf-8")) for p in files]
    if path.exists() or path.is_symlink():
        _text_file_size(path)
        return [Document(path.name, path.read_text(encoding="utf-8"))]
    if ":" in source and not source.startswith((".", "/", "~")):
        return _load_hub_dataset(source)
    raise ValueError(
        f"source: {source!r} is not one of {', '.join(BUNDLED)}, an existing file or folder, "
        "or a datasets name as path:name:split"
    )


MAX_TEXT_FILE_BYTES = 64 * 2**20  # a local text file (WikiText-2 raw is 13 MB; a worker holds its tokens several times)
MAX_SOURCE_BYTES = 256 * 2**20  # a local folder of text files, in all


def _text_file_size(path: Path) -> int:
    """The size of a local text file, or a one-line ValueError: not a regular file (a FIFO would hang the read, a link
    to /dev/zero never end it), or over MAX_TEXT_FILE_BYTES."""
    try:
        size = regular_file_size(path)
    except ValueError as exc:
        raise ValueError(f"source: file {exc}; give text files") from None
    if size > MAX_TEXT_FILE_BYTES:
        raise ValueError(f"source: file {path.name!r} is {size / 2**20:,.0f} MiB, over the "
                         f"{MAX_TEXT_FILE_BYTES // 2**20} MiB a text file may hold")
    return size


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Puts huggingface_hub and datasets in offline mode (cache only) for the duration of the block.

    Their offline flags are read from the environment once, at import, so setting HF_HUB_OFFLINE here
    would not be seen; the module constants are switched instead and restored afterwards.
    """
    import datasets
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def _read_gz(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return f.read()


def _wiki_articles(lines: list[str], prefix: str) -> list[Document]:
    """Cuts WikiText lines into articles at each top-level ` = Title = ` heading (the heading starts the article)."""
    docs: list[Document] = []
    title, body = None, []
    for line in lines:
        if _WIKI_TITLE.match(line.rstrip("\n")):
            if title is not None or "".join(body).strip():
                docs.append(Document(f"{prefix}/{len(docs):04d} {title or ''}".rstrip(), "".join(body)))
            title, body = line.strip(" =\n"), []
        body.append(line)
    if title is not None or "".join(body).strip():
        docs.append(Document(f"{prefix}/{len(docs):04d} {title or ''}".rstrip(), "".join(body)))
    return docs


def _load_hub_dataset(source: str) -> list[Document]:
    """`path:name:split` or `path:split` via `datasets.load_dataset`; from the cache only if the hub is unreachable."""
    parts = source.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"source: {source!r} is not a datasets name of the form path:name:split or path:split")
    path, name, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    import datasets

    online = hub_reachable()
    try:
        with contextlib.nullcontext() if online else hub_offline():
            rows = datasets.load_dataset(path, name, split=split)["text"]
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, DatasetNotFoundError...)
        where = "could not be loaded" if online else "is not in the datasets cache and the hub is unreachable"
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ValueError(
            f"source: {source!r} {where} ({reason}); pass a local .txt file or folder of .txt files instead, "
            f"or one of {', '.join(BUNDLED)}"
        ) from None
    if any(_WIKI_TITLE.match(r.rstrip("\n")) for r in rows[:200]):
        # WikiText rows are lines (ending in "\n"): regroup them into articles.
        return _wiki_articles([r if r.endswith("\n") else r + "\n" for r in rows], prefix=source)
    return [Document(f"{source}/{i}", r) for i, r in enumerate(rows) if r.strip()]
