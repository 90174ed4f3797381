"""Numbers in docs come from tables a run wrote: every marked table of docs/*.md equals its rendering from the
summary published under docs/data/ (scripts/doc_tables.py), and the findings docs have such tables."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def load_script():
    spec = importlib.util.spec_from_file_location("doc_tables", REPO / "scripts" / "doc_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_marked_table_in_the_docs_equals_its_published_summary():
    doc_tables = load_script()
    for doc in doc_tables.docs():
        text = doc.read_text(encoding="utf-8")
        assert doc_tables.rendered(text) == text, f"{doc.name}: run python scripts/doc_tables.py render"


def test_findings_and_comparison_take_their_tables_from_docs_data():
    doc_tables = load_script()
    for name in ("FINDINGS.md", "COMPARISON.md"):
        specs = [m.group("spec") for m in doc_tables.BLOCK.finditer((REPO / "docs" / name).read_text())]
        assert any("/verdicts " in s for s in specs) and any("/best " in s for s in specs), name


def test_a_changed_number_is_caught(tmp_path):
    doc_tables = load_script()
    text = (REPO / "docs" / "FINDINGS.md").read_text()
    block = next(doc_tables.BLOCK.finditer(text))
    tampered = text.replace(block.group("body"), block.group("body").replace("|", "| 1", 1), 1)
    assert doc_tables.rendered(tampered) != tampered
