"""How the report writes things: numbers with their intervals and effects (`mean_ci`, `effect`, `versus`,
`speed_text`), text from result tables made inert (`md_text`, `code`: untrusted strings never become a link or
markup, docs/SECURITY.md), markdown tables with numbers right-aligned, and the blocks of a report rendered to
markdown (`Block`, `render_markdown`)."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from orchestrator.analyze import stats

FORMATS = ("png", "svg")


@dataclass
class Block:
    kind: str  # "h2", "h3", "p", "ul", "table", "image"
    content: object  # str, list[str], DataFrame, or (alt, file name)


def fmt(value: object, digits: int = 4) -> str:
    """A number for a table: 4 significant digits (one decimal from 1000 up, no exponent), '' for missing."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return f"{value:,.1f}" if 1e3 <= abs(value) < 1e12 else f"{value:.{digits}g}"
    return str(value)


def mean_ci(mean: float, low: float, high: float, spread: float = float("nan")) -> str:
    """'12.3 [11.9, 12.8]' (mean and 95% CI on the metric's scale); '12.3 (no spread)' when every seed gave the
    same value (never a zero-width interval); the mean alone when there is no CI (too few seeds)."""
    if pd.isna(mean):
        return ""
    if spread == 0:
        return f"{fmt(mean)} (no spread)"
    return fmt(mean) if pd.isna(low) else f"{fmt(mean)} [{fmt(low, 3)}, {fmt(high, 3)}]"


def effect(value: float, low: float, high: float, log_scale: bool) -> str:
    """'0.21x [0.08x, 0.55x]' (ratio of geometric means, log-scale metrics) or '+0.012 [-0.003, +0.027]'."""
    if pd.isna(value):
        return ""
    one = (lambda v: f"{v:.3g}x") if log_scale else (lambda v: f"{v:+.3g}")  # noqa: E731
    return one(value) + ("" if pd.isna(low) else f" [{one(low)}, {one(high)}]")


def evaluation_sample(units: float, draws: float, opposite: float, low: float, high: float, log_scale: bool,
                      holds: object) -> str:
    """The evaluation-sample check in words: 'sign kept in 99.9% of 2,000 draws of 8 units [0.05x, 0.3x]' (the draws'
    95% interval of the effect), and ', not robust' where the check fails (a verdict then needs both)."""
    if pd.isna(units) or not units or holds is None or pd.isna(holds):
        return ""
    one = (lambda v: f"{v:.3g}x") if log_scale else (lambda v: f"{v:+.3g}")  # noqa: E731
    return (f"sign kept in {1 - opposite:.1%} of {int(draws):,} draws of {int(units):,} units [{one(low)}, {one(high)}]"
            + ("" if holds else ", not robust"))


def versus(value: float, low: float, high: float, log_scale: bool, p: float, p_adj: float, n: float,
           verdict: object) -> str:
    if pd.isna(n):
        return ""
    p_text = "p n/a" if pd.isna(p) else f"p={p:.2g}, Holm {p_adj:.2g}"
    return f"{effect(value, low, high, log_scale)} ({p_text}, n={int(n)}; {verdict})"


def md_text(value: object) -> str:
    """A data-derived string as literal markdown text: one line, with every character that opens code, emphasis,
    HTML, a link or an image escaped (brackets too: data may sit inside our own link or image text)."""
    return re.sub(r"([\\`*_<>|\[\]!])", r"\\\1", " ".join(str(value).split()))


def code(value: object) -> str:
    """A data-derived name as a markdown code span (nothing inside a code span is parsed)."""
    text = " ".join(str(value).split())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (DataFrame.to_markdown needs tabulate, which this project does not depend on).
    Cells are data: escaped by md_text."""
    cell = lambda v: md_text(fmt(v))  # noqa: E731
    align = ["---:|" if _numeric(df[column]) else "---|" for column in df.columns]  # numbers right-aligned
    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "".join(align)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


NUMBER = re.compile(r"^[-+]?(\d|\.\d|inf|nan)", re.I)


def _numeric(column: pd.Series) -> bool:
    """A column of numbers, or of texts that start with one ("1.04x [1.03, 1.05]", "44.67 [44.1, 45.2]")."""
    values = [v for v in column if not (isinstance(v, float) and pd.isna(v)) and v != ""]
    return bool(values) and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                                or isinstance(v, str) and NUMBER.match(v) for v in values)


def render_markdown(title: str, blocks: list[Block]) -> str:
    parts = [f"# {title}"]
    for block in blocks:
        if block.kind in ("h2", "h3"):
            parts.append(("## " if block.kind == "h2" else "### ") + md_text(block.content))
        elif block.kind == "p":
            parts.append(str(block.content))
        elif block.kind == "ul":
            parts.append("\n".join(f"- {item}" for item in block.content))
        elif block.kind == "table":
            parts.append(markdown_table(block.content))
        elif block.kind == "image":
            alt, name = block.content
            parts.append(f"![{md_text(alt)}]({name}.png)\n\n[SVG]({name}.svg)")  # name: a slug
    return "\n\n".join(parts) + "\n"


def figure_bytes(fig: Figure, fmt_: str) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt_, dpi=120, bbox_inches="tight", pad_inches=0.05)  # a long title is never cut
    return buffer.getvalue()


def slug(text: str) -> str:
    """A file-name-safe model name; a local path contributes its last folder name (tmp paths are long)."""
    text = text.rstrip("/").rsplit("/", 1)[-1] if text.startswith(("/", ".")) else text
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def speed_text(median: float, low: float, high: float, share: float, share_low: float, share_high: float,
               ideal: float) -> str:
    """'1.04x [1.03, 1.05] of ideal 1.10x: 42% [31%, 50%] of the ideal gain': a speedup with the spread of its timed
    rounds and the realised share of the ideal gain, (measured - 1) / (ideal - 1)."""
    if pd.isna(median):
        return "not measured" if pd.isna(ideal) else f"(ideal {fmt(ideal, 3)}x)"
    text = f"{fmt(median, 3)}x" + ("" if pd.isna(low) else f" [{fmt(low, 3)}, {fmt(high, 3)}]")
    if pd.isna(ideal):
        return text
    text += f" of ideal {fmt(ideal, 3)}x"
    if pd.isna(share):  # a table written before timed rounds: the share of its one ratio, no spread to give
        share = stats.realised_share(median, ideal)
        return text + ("" if pd.isna(share) else f": {share:.0%} of the ideal gain (one timing, no spread)")
    return text + f": {share:.0%} [{share_low:.0%}, {share_high:.0%}] of the ideal gain"
