"""Result tables are untrusted: nothing in them may become a link or live markup in report.md / report.html."""
from __future__ import annotations

import html
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

HOSTILE = [
    "[click me](javascript:alert(1))",
    "<script>alert(2)</script>",
    "![x](javascript:alert(3))",
    "`` ` [y](https://evil.example) ` ``",
    "<https://evil.example/auto>",
    "a|b\n[ref]: javascript:alert(4)",
]
MATHTEXT = r"$\frac{x}{$ $^$"


@pytest.fixture(scope="module")
def hostile_report(results_dir, tmp_path_factory) -> Path:
    from orchestrator.analyze import analyze

    folder = tmp_path_factory.mktemp("hostile") / "results"
    folder.mkdir()
    for name in ("trials", "curves", "heads"):
        table = pq.read_table(results_dir / f"{name}.parquet")
        models = table["model"].to_pylist()
        # every name also carries malformed mathtext: round three's `$...$` names were parsed by matplotlib as math
        # (78- to 2,993-line tracebacks); names are data, drawn as their literal text
        mapping = {m: f"{HOSTILE[i % len(HOSTILE)]} {MATHTEXT}" for i, m in enumerate(sorted(set(models)))}
        table = table.set_column(table.schema.get_field_index("model"), "model",
                                 pa.array([mapping[m] for m in models], pa.string()))
        if name == "trials":
            errors = [HOSTILE[1] if e else e for e in table["error"].to_pylist()]
            table = table.set_column(table.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))
            versions = [HOSTILE[0]] * table.num_rows
            table = table.set_column(table.schema.get_field_index("version_torch"), "version_torch",
                                     pa.array(versions, pa.string()))
            for column, text in (("started_at", "<a href=https://evil.example/a>x</a>"),  # a string where a date was
                                 ("finished_at", "![x](https://evil.example/img.png)")):
                table = table.set_column(table.schema.get_field_index(column), column,
                                         pa.array([text] * table.num_rows, pa.string()))
        pq.write_table(table, folder / f"{name}.parquet")
    return analyze([str(folder)], out=str(folder / "analysis"))


def test_report_html_has_only_our_own_links_and_no_markup_from_data(hostile_report):
    page = (Path(hostile_report).parent / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page
    assert "javascript:" not in " ".join(re.findall(r"(?:href|src)=\"[^\"]*\"", page))
    hrefs = re.findall(r"href=\"([^\"]*)\"", page)
    assert hrefs and all(re.fullmatch(r"[A-Za-z0-9_.-]+\.(csv|md|svg)", h) for h in hrefs), hrefs
    srcs = re.findall(r"src=\"([^\"]*)\"", page)
    assert srcs and all(re.fullmatch(r"[A-Za-z0-9_.-]+\.png", s) for s in srcs), srcs
    assert "evil.example" not in " ".join(hrefs + srcs)
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page  # shown as text, not dropped


def test_report_markdown_renders_data_as_text(hostile_report):
    from markdown_it import MarkdownIt

    markdown = Path(hostile_report).read_text(encoding="utf-8")
    tokens = MarkdownIt("commonmark", {"html": True}).enable("table").parse(markdown)
    inline = [child for t in tokens if t.children for child in t.children]
    links = [c.attrs.get("href") for c in inline if c.type == "link_open"]
    assert links and all(re.fullmatch(r"[A-Za-z0-9_.-]+\.(csv|md|svg)", h) for h in links), links
    assert not [c for c in inline if c.type == "html_inline"] and not [t for t in tokens if t.type == "html_block"]
    images = [c.attrs.get("src") for c in inline if c.type == "image"]
    assert images and all(re.fullmatch(r"[A-Za-z0-9_.-]+\.png", s) for s in images), images  # slugs: file names


def test_md_text_and_code_render_as_the_literal_text():
    from markdown_it import MarkdownIt

    from orchestrator.analyze.formatting import code, md_text

    md = MarkdownIt("commonmark", {"html": False})
    for value in HOSTILE:
        flat = " ".join(value.split())
        for rendered in (md.renderInline(md_text(value)), md.renderInline(code(value))):
            assert "<a" not in rendered and "<img" not in rendered and "<script" not in rendered
        assert html.unescape(md.renderInline(md_text(value))) == flat
        assert html.unescape(md.renderInline(code(value))).removeprefix("<code>").removesuffix("</code>").strip() == flat.strip()
        # inside our own image text, as the report uses it
        image = md.renderInline(f"![plot of {md_text(value)}](plot.png)")
        assert image.count("<img") == 1 and 'src="plot.png"' in image and "<a" not in image


@pytest.mark.parametrize("case, sentence", [
    ("only failed trials", "No trial finished (15 failed): there is nothing to compare"),  # the default's 15 cells
    ("one strategy", "No verdicts: the run has no random baseline to test against"),
])
def test_a_run_with_nothing_to_compare_says_so_and_still_renders(tmp_path, case, sentence):
    import pandas as pd

    from orchestrator.analyze import analyze

    trials = pd.read_parquet(Path(__file__).resolve().parents[3] / "docs" / "data" / "default" / "trials.parquet")
    if case == "only failed trials":
        trials = trials.assign(status="failed", error="RuntimeError: boom")
    else:
        trials = trials[trials["strategy"].eq("gradient")]
    (tmp_path / "run").mkdir()
    trials.to_parquet(tmp_path / "run" / "trials.parquet")
    report = Path(analyze([str(tmp_path / "run")], str(tmp_path / "out")))
    assert sentence in report.read_text() and sentence in (tmp_path / "out" / "report.html").read_text()

