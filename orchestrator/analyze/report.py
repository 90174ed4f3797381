"""The report: tables (CSV + markdown), plots (PNG + SVG) and report.md / report.html in one folder.

The report is built as a list of blocks (heading, text, bullet list, table, image) rendered to markdown;
report.html is that markdown rendered by markdown-it-py with raw HTML off, so both say the same thing.
Result tables are untrusted input: every string that comes from them (model names, errors, versions...) goes
through `md_text`, which escapes what markdown would turn into a link or markup, so data never becomes a link
or live HTML (docs/SECURITY.md). Files are written through orchestrator.storage.write_bytes: atomically for
local folders, one PUT per object for s3:// and other pyarrow.fs URIs.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from orchestrator.analyze import plots, stats
from orchestrator.analyze.html import render_html
from orchestrator.analyze.load import Results
from orchestrator.analyze.reference import reference_notes, seed_percentiles, stability_table
from orchestrator.analyze.stats import ALPHA, BASELINE, CONFIDENCE, MIN_SEEDS_FOR_CI, ok_trials, summary_table
from orchestrator.storage import write_bytes

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


def versus(value: float, low: float, high: float, log_scale: bool, p: float, p_adj: float, n: float,
           verdict: object) -> str:
    if pd.isna(n):
        return ""
    p_text = "p n/a" if pd.isna(p) else f"p={p:.2g}, Holm {p_adj:.2g}"
    return f"{effect(value, low, high, log_scale)} ({p_text}, n={int(n)}; {verdict})"


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as strings for the report: one column per quantity, mean ± CI in one cell."""
    out = pd.DataFrame({
        "model": summary["model"], "strategy": summary["label"], "level": summary["level"].map(lambda v: f"{v:g}"),
        "seeds": summary["n_seeds"], "metric": summary["metric_name"].fillna(""),
    })
    out["dense"] = summary["dense_mean"].map(fmt)  # one model, one number: never an interval around it
    for value in ("pruned", "recovered"):
        spread = summary[f"{value}_spread"] if f"{value}_spread" in summary else pd.Series(float("nan"), summary.index)
        out[value] = [mean_ci(*v) for v in zip(*(summary[f"{value}_{k}"] for k in ("mean", "low", "high")), spread)]
    log_scale = summary["scale"].eq("log")
    for value in ("pruned", "recovered"):
        cols = [summary[f"vs_random_{value}_{c}"] for c in ("effect", "effect_low", "effect_high")]
        cols += [log_scale] + [summary[f"vs_random_{value}_{c}"] for c in ("p", "p_adj", "n_pairs", "verdict")]
        out[f"{value} vs random"] = [versus(*v) for v in zip(*cols)]
        if summary[f"{value}_percentile"].notna().any():
            out[f"{value} percentile"] = [
                "" if pd.isna(m) else f"{m:.0%} [{lo:.0%}, {hi:.0%}]" for m, lo, hi in
                zip(*(summary[f"{value}_{c}"] for c in ("percentile", "percentile_min", "percentile_max")))]
    out["params before → after"] = [f"{b:,.0f} → {a:,.0f}" if pd.notna(b) else ""
                                    for b, a in zip(summary["params_before"], summary["params_after"])]
    out["tokens/s before → after"] = [f"{fmt(b)} → {fmt(a)}" if pd.notna(b) else "not measured"
                                      for b, a in zip(summary["speed_before"], summary["speed_after"])]
    out["speedup [rounds] of ideal: share of the ideal gain"] = [
        speed_text(*values) for values in
        zip(*(summary[f"speedup{suffix}"] for suffix in stats.SPREAD_COLUMNS), summary["ideal_speedup"])]
    out["note"] = summary["note"]
    return out


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


def headline_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model, level and stage: the strategies better and worse than random after Holm's adjustment, each with its
    effect [95% interval] and the share of random layouts it beats, and how many are not separated from random."""
    rows = []
    for (model, level), cell in summary[summary["n_seeds"].gt(0)].groupby(["model", "level"], sort=True):
        strategies = cell[~cell["label"].eq(BASELINE)]
        log_scale = bool(cell["scale"].eq("log").any())
        for stage in ("pruned", "recovered"):
            verdict = f"vs_random_{stage}_verdict"
            if verdict not in cell or cell[verdict].isna().all():
                continue

            def named(kind: str) -> str:
                out = []
                for r in strategies[strategies[verdict].eq(kind)].to_dict("records"):
                    share = r.get(f"{stage}_percentile")
                    beats = "" if share is None or pd.isna(share) else f", beats {share:.0%} of random layouts"
                    size = effect(*(r[f"vs_random_{stage}_effect{part}"] for part in ("", "_low", "_high")), log_scale)
                    out.append(f"{r['label']} ({size}{beats})")
                return "; ".join(out) or "none"

            rows.append({"model": model, "level": f"{level:g}", "stage": stage, "better than random": named("better"),
                         "worse than random": named("worse"),
                         "not separated": int((~strategies[verdict].isin(["better", "worse"])).sum())})
    return pd.DataFrame(rows)


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
    fig.savefig(buffer, format=fmt_, dpi=120)
    return buffer.getvalue()


def slug(text: str) -> str:
    """A file-name-safe model name; a local path contributes its last folder name (tmp paths are long)."""
    text = text.rstrip("/").rsplit("/", 1)[-1] if text.startswith(("/", ".")) else text
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def _unique(series: pd.Series | None) -> str:
    if series is None:
        return "unknown"
    values = sorted({str(v) for v in series.dropna() if str(v)})
    return ", ".join(values) if values else "unknown"


def _shown_path(source: str, out: str | None) -> str:
    """An input as the report shows it: relative to the report's folder when both are local (a report shared with a
    colleague does not carry the author's directories), a URI as it is."""
    if out is None or "://" in source or "://" in out:
        return source
    return os.path.relpath(source, out)


def run_metadata(results: Results, out: str | None = None) -> list[str]:
    """Bullets: experiments, runs, trial counts (vs the configured grid), dates, versions, hardware, protocols."""
    t = results.trials
    ok, failed = int(t["status"].eq("ok").sum()), int((~t["status"].eq("ok")).sum())
    items = [f"experiment(s): {md_text(_unique(t.get('experiment')))}; run id(s): {md_text(_unique(t.get('run_id')))}",
             f"trials: {ok} ok, {failed} failed, {len(t)} in all" + _grid_size(results)]
    if "started_at" in t and t["started_at"].notna().any():
        items.append(md_text(f"dates (UTC): first trial started {t['started_at'].min()}, last finished "
                             f"{t['finished_at'].max() if 'finished_at' in t else 'unknown'}"))  # data: any string
    versions = [md_text(f"{c.removeprefix('version_')} {_unique(t[c])}") for c in t.columns if c.startswith("version_")]
    if versions:
        items.append("versions: " + "; ".join(versions))
    items.append(md_text(f"device(s): {_unique(t.get('device'))}; node(s): {_unique(t.get('node'))}; "
                         f"GPU ids: {_unique(t.get('gpu_ids'))}"))
    good = ok_trials(t)
    for model, rows in good.groupby("model", sort=True):
        weights = f"; weights: {_unique(rows['weights'])}" if "weights" in rows and rows["weights"].notna().any() else ""
        items.append(f"protocol for {code(model)}: {md_text(plots.protocol_label(rows.iloc[0].to_dict()) + weights)}")
    items.append("inputs: " + ", ".join(code(_shown_path(s, out)) for s in results.sources))
    return items


def _grid_size(results: Results) -> str:
    """' of N configured' when config.yaml gives the grid (models x strategies x levels x seeds)."""
    total = 0
    for config in results.configs:
        try:
            per_model = [m if isinstance(m, dict) else {} for m in config["models"]]
            total += len(config["strategies"]) * sum(len(m.get("levels") or config["levels"])
                                                     * len(m.get("seeds") or config["seeds"]) for m in per_model)
        except (KeyError, TypeError):
            return ""
    if not total:
        return ""
    missing = total - len(results.trials)
    return f" of {total} configured" + (f" ({missing} not run: partial results)" if missing > 0 else "")


def verdicts(summary: pd.DataFrame, pairs: pd.DataFrame) -> list[str]:
    """Per model, level and stage: the best strategy only where it beats every other one after Holm's adjustment
    (otherwise the best by mean and the strategies it is not separated from), then every strategy better or
    worse than random after adjustment, with its effect and interval."""
    items = []
    rows = summary[summary["n_seeds"].gt(0)]
    for (model, level), cell in rows.groupby(["model", "level"], sort=True):
        strategies = cell[~cell["label"].eq(BASELINE)]  # random is judged against the reference, never "best"
        log_scale = bool(cell["scale"].eq("log").any())
        for value in ("pruned", "recovered"):
            verdict = f"vs_random_{value}_verdict"
            if verdict not in cell or cell[verdict].isna().all():
                continue
            higher = bool(cell["higher_is_better"].dropna().iloc[0]) if cell["higher_is_better"].notna().any() else False
            winner = stats.best(pairs, model, level, value)
            by_mean = (strategies if len(strategies) else cell).sort_values(f"{value}_mean", ascending=not higher).iloc[0]
            if winner is not None:
                row = cell[cell["label"].eq(winner)].iloc[0]
                parts = [f"best **{md_text(winner)}** ({md_text(row['metric_name'])} {fmt(row[f'{value}_mean'])}; "
                         "beats every other strategy after Holm adjustment)"]
            else:
                tied = stats.not_separated(pairs, model, level, value, by_mean["label"])
                parts = [f"no strategy beats all others; best by mean only: {md_text(by_mean['label'])} "
                         f"({md_text(by_mean['metric_name'])} {fmt(by_mean[f'{value}_mean'])}), not separated from "
                         f"{', '.join(md_text(t) for t in tied) or 'none'}"]
            for r in cell[cell[verdict].isin(["better", "worse"])].itertuples(index=False):
                d = r._asdict()
                e = effect(d[f"vs_random_{value}_effect"], d[f"vs_random_{value}_effect_low"],
                           d[f"vs_random_{value}_effect_high"], log_scale)
                share = d.get(f"{value}_percentile")
                beats = "" if share is None or pd.isna(share) else f", beats {share:.0%} of random layouts"
                parts.append(f"{md_text(r.label)} {d[verdict]} than random ({e}, Holm p={d[f'vs_random_{value}_p_adj']:.2g}, "
                             f"n={int(d[f'vs_random_{value}_n_pairs'])}{beats})")
            if not cell[verdict].isin(["better", "worse"]).any():
                parts.append(f"no strategy differs from random after Holm adjustment (p < {ALPHA})")
            items.append(f"{code(model)} level {level:g}, {value}: " + "; ".join(parts))
    return items or [f"No strategy differs from random after Holm adjustment (p < {ALPHA}) in any cell: none can "
                     "be called better than random on these seeds."]


def _no_headline(results: Results) -> str:
    """Why the headline has no table, in a sentence."""
    ok = ok_trials(results.trials)
    if ok.empty:
        return (f"No trial finished ({len(results.trials)} failed): there is nothing to compare; the failed trials and "
                "their errors are listed below.")
    return ("No verdicts: the run has no random baseline to test against (strategy random in the grid, or "
            "random_reference); the tables below give each strategy's numbers by mean only.")


def _versus_text(results: Results) -> str:
    if results.reference.empty:
        return (f"`vs random` compares each strategy with {BASELINE} over trials paired by seed at the same model and "
                "level, with a paired t test (scipy.stats.ttest_rel) on the metric's scale. The effect comes with "
                "its 95% interval: for perplexity the ratio of geometric means to random (0.2x [0.1x, 0.4x] = a "
                "fifth of random's perplexity), otherwise the mean difference in metric units; then the raw p, the "
                "Holm-adjusted p (over every strategy and level of that model and stage) and the number of pairs.")
    return ("`vs random` tests each strategy against the random reference: random layouts of the same model and level "
            "drawn under the same selection rules (see the notes for how many), unpaired, by a permutation test of "
            "the difference in means on the metric's scale (log perplexity, Fisher's z). The unit is the distinct "
            "layout (n): seeds that prune the same heads count once. The effect is the ratio of geometric means to "
            "random for perplexity (0.2x = a fifth of random's), otherwise the difference, with Welch's 95% interval "
            "on the same scale; then the raw p, the Holm-adjusted p (over every strategy and level of that model and "
            "stage). `percentile`: the share of random layouts a seed's layout beats (mean over seeds, [min, max]); "
            "for a strategy whose layout does not change with the seed it is the honest number.")


def stability_display(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": table["model"], "strategy": table["label"], "level": table["level"].map(lambda v: f"{v:g}"),
        "seeds": table["n_seeds"], "distinct layouts": table["distinct_layouts"],
        "Jaccard across seeds": table["jaccard"].map(lambda v: fmt(v, 3)),
        "random's Jaccard": table["random_jaccard"].map(lambda v: fmt(v, 3)),
        "score Spearman across seeds": table["score_spearman"].map(lambda v: fmt(v, 3)),
    })


def pairwise_display(pairs: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """The head-to-head table for the report: one row per pair, effect of a against b with its interval."""
    log = set(summary.loc[summary["scale"].eq("log"), "model"])
    return pd.DataFrame({
        "model": pairs["model"], "stage": pairs["stage"], "level": pairs["level"].map(lambda v: f"{v:g}"),
        "a vs b": pairs["a"] + " vs " + pairs["b"],
        "effect [95% CI]": [effect(e, lo, hi, m in log) for e, lo, hi, m in
                            zip(pairs["effect"], pairs["effect_low"], pairs["effect_high"], pairs["model"])],
        "p": pairs["p"].map(lambda p: "" if pd.isna(p) else f"{p:.2g}"),
        "Holm p": pairs["p_adj"].map(lambda p: "" if pd.isna(p) else f"{p:.2g}"),
        "n": pairs["n_pairs"], "a is": pairs["verdict"],
    })


def failed_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Failed trials with the first line of their error."""
    failed = trials[~trials["status"].eq("ok")]
    first = failed["error"].fillna("").astype(str).map(lambda e: e.strip().splitlines()[0] if e.strip() else "")
    return pd.DataFrame({"model": failed["model"], "strategy": failed["label"],
                         "level": failed["level"].map(lambda v: f"{v:g}"), "seed": failed["seed"],
                         "trial_id": failed["trial_id"], "error (first line)": first})


def figures(results: Results, generation: pd.DataFrame, extra: pd.DataFrame) -> list[tuple[str, str, Callable[[], Figure]]]:
    """(alt text, file stem, builder) for every plot the data supports; `generation` and `extra` are
    stats.generation_table and stats.extra_table of the results."""
    out = []
    if ok_trials(results.trials).empty:
        return out
    out.append(("strategies against random, seed by seed", "strategies",
                lambda: plots.plot_strategy_comparison(results.trials, results.reference)))
    if ok_trials(results.trials)["level"].nunique() > 1:  # one level: nothing to draw a line through (the
        # strategies plot above already shows every strategy's seeds and mean at that level)
        out.append(("metric vs pruning level", "metric_vs_level", lambda: plots.plot_metric_vs_level(results.trials)))
    if not results.curves.empty and results.curves["eval_metric"].notna().any():
        out.append(("recovery curves", "recovery_curves", lambda: plots.plot_recovery_curves(results.curves)))
    for model in sorted(results.heads["model"].dropna().unique()) if not results.heads.empty else []:
        out.append((f"head scores and pruned heads, {model}", f"heads_{slug(model)}",
                    lambda m=model: plots.plot_head_heatmaps(results.heads, m)))
    out.append(("quality vs speed (Pareto)", "pareto", lambda: plots.plot_pareto(results.trials)))
    if not generation.empty:
        out.append(("generation: measured and ideal speedups, KV cache", "generation",
                    lambda: plots.plot_generation(generation)))
    if not extra.empty:
        out.append(("extra evaluations against the pruning level", "extra_metrics", lambda: plots.plot_extra(extra)))
    return out


def extra_display(table: pd.DataFrame) -> pd.DataFrame:
    """The extra evaluations for the report: per cell, task and metric, dense and mean [CI] after pruning and recovery."""
    return pd.DataFrame({
        "model": table["model"], "task": table["task"], "metric": table["metric"], "strategy": table["label"],
        "level": table["level"].map(lambda v: f"{v:g}"), "seeds": table["n_seeds"], "dense": table["dense"].map(fmt),
        **{stage: [mean_ci(m, lo, hi, float("nan")) for m, lo, hi in
                   zip(table[f"{stage}_mean"], table[f"{stage}_low"], table[f"{stage}_high"])]
           for stage in ("pruned", "recovered")},
    })


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


def generation_display(table: pd.DataFrame) -> pd.DataFrame:
    """The generation table for the report: per cell, the KV cache kept and each speedup beside its ideal ratio."""
    def speed(kind: str) -> list[str]:
        missing = pd.Series(float("nan"), index=table.index)  # tables written before speed had rounds
        return [speed_text(*values) for values in
                zip(*(table.get(f"{kind}{suffix}", missing) for suffix in stats.SPREAD_COLUMNS), table[f"{kind}_ideal"])]

    return pd.DataFrame({
        "model": table["model"], "strategy": table["label"], "level": table["level"].map(lambda v: f"{v:g}"),
        "seeds": table["n_seeds"], "engine": table.get("engine", pd.Series("transformers", index=table.index)),
        "KV cache bytes/token (kept)": [f"{fmt(b)} → {fmt(a)} ({fmt(100 * a / b, 3)}%)" for b, a in
                                        zip(table["kv_bytes_per_token_before"], table["kv_bytes_per_token_after"])],
        "prefill speedup": speed("prefill"), "decode speedup (batch 1)": speed("decode"),
        "decode speedup (batch B)": speed("decode_batch"),
        "B": [b if e == "transformers" else "—" for b, e in zip(table["batch_size"], table.get(
            "engine", pd.Series("transformers", index=table.index)))],
    })


def write_report(results: Results, out: str) -> str:
    """Writes summary.csv, summary.md, the plots, report.md and report.html into `out`.

    Args:
        results: the merged inputs (orchestrator.analyze.load).
        out: output folder, local path or URI.
    Returns:
        The path of report.md.
    """
    out = out.rstrip("/")
    summary = summary_table(results.trials, results.reference)
    write_bytes(f"{out}/summary.csv", summary.to_csv(index=False).encode())
    stability = stability_table(results.trials, results.heads, results.reference)
    write_bytes(f"{out}/stability.csv", stability.to_csv(index=False).encode())
    if not results.reference.empty:
        write_bytes(f"{out}/percentiles.csv",
                    seed_percentiles(results.trials, results.reference).to_csv(index=False).encode())
    pairs = stats.pairwise(results.trials)
    write_bytes(f"{out}/pairwise.csv", pairs.to_csv(index=False).encode())
    table = display_table(summary)
    write_bytes(f"{out}/summary.md", (markdown_table(table) + "\n").encode())
    generation, extra = stats.generation_table(results.trials), stats.extra_table(results.metrics)
    for name, frame in (("generation", generation), ("extra", extra)):
        if not frame.empty:
            write_bytes(f"{out}/{name}.csv", frame.to_csv(index=False).encode())

    images = []
    for alt, stem, build in figures(results, generation, extra):
        fig = build()
        for kind in FORMATS:
            write_bytes(f"{out}/{stem}.{kind}", figure_bytes(fig, kind))
        images.append(Block("image", (alt, stem)))

    blocks = _blocks(results, summary, table, images, pairs, stability, generation, extra, out)
    title = f"sentinel-bench analysis: {_unique(results.trials.get('experiment'))}"
    report = f"{out}/report.md"
    markdown = render_markdown(md_text(title), blocks)
    write_bytes(report, markdown.encode())
    write_bytes(f"{out}/report.html", render_html(title, markdown).encode())
    return report


def _blocks(results: Results, summary: pd.DataFrame, table: pd.DataFrame, images: list[Block],
            pairs: pd.DataFrame, stability: pd.DataFrame, generation: pd.DataFrame, extra: pd.DataFrame,
            out: str | None = None) -> list[Block]:
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    headline = headline_table(summary)
    lead = [image for image in images if image.content[1] == "strategies"]  # the headline figure
    images = [image for image in images if image not in lead]
    blocks = [Block("p", f"Generated {generated}."), Block("h2", "Headline"),
              Block("p", f"Strategies better or worse than {BASELINE} after Holm's adjustment (p < {ALPHA}, in the "
                         "metric's direction), with the effect against random [95% interval] and the share of random "
                         "layouts the strategy's seeds beat; the figure shows where each seed lands among them."),
              Block("table", headline) if len(headline) else Block("p", _no_headline(results)),
              *lead,
              Block("h2", "Run"), Block("ul", run_metadata(results, out)),
              Block("h2", "How to read this"),
              Block("ul", [
                  f"Each cell is model x strategy x pruning level; numbers are means over seeds [{CONFIDENCE:.0%} "
                  "confidence interval] (t distribution, n - 1 degrees of freedom), on the metric's scale: "
                  "perplexity is averaged in log space (a geometric mean; pruned perplexities are heavy-tailed), "
                  "correlations through Fisher's z (the interval stays inside [-1, 1]). Below "
                  f"{MIN_SEEDS_FOR_CI} seeds no interval is given.",
                  "`pruned` is measured right after pruning, `recovered` after recovery fine-tuning, `dense` is the "
                  "unpruned model on the same data and protocol.",
                  _versus_text(results),
                  "Calibration (the text heads are scored on) is drawn per seed from documents spread over the score "
                  "split unless the protocol says `fixed`; a value identical in every seed is marked `no spread` "
                  "(a strategy that reads no data and no seed, or a fixed calibration).",
                  "Speed: the measured speedup (pruned / dense forward tokens/s, the median of alternating timed "
                  "rounds per distinct pruned layout, the node quiet, [min, max] of the rounds), the ideal speedup "
                  "(the FLOP ratio dense / pruned that removing those heads allows), and the realised share of the "
                  "ideal gain, (measured - 1) / (ideal - 1), with its median and [min, max] over the rounds.",
                  f"A strategy is called **better than random** only where it beats {BASELINE} with Holm-adjusted "
                  f"p < {ALPHA}, in the metric's direction (lower perplexity, higher Spearman). A strategy is named **best** only where it beats every other one "
                  "after adjustment (head to head below); otherwise the report gives the best by mean and the "
                  "strategies it is not separated from.",
              ]),
              Block("h2", "Verdict"), Block("ul", verdicts(summary, pairs)),
              Block("h2", "Summary table"),
              Block("p", "Also as [summary.csv](summary.csv) (all numbers, unrounded) and [summary.md](summary.md)."),
              Block("table", table),
              Block("h2", "Head to head"),
              Block("p", "Every pair of strategies at each model, level and stage, paired by seed; effect of a against b "
                         "(a ratio of geometric means for perplexity, a difference otherwise) with its 95% interval; "
                         "Holm's adjustment over every pair and level of one model and stage. Also as "
                         "[pairwise.csv](pairwise.csv)."),
              Block("table", pairwise_display(pairs, summary)) if len(pairs) else Block("p", "No pairs."),
              Block("h2", "Which heads, how stable"),
              Block("p", "Per cell: how many distinct layouts its seeds chose, the mean pairwise Jaccard overlap of "
                         "the pruned head sets across seeds (each seed scores on its own calibration draw), the same "
                         "overlap between random layouts (what chance gives), and the mean pairwise Spearman "
                         "correlation of the head scores across seeds. Also as [stability.csv](stability.csv)."),
              Block("table", stability_display(stability))]
    if not generation.empty:
        blocks += [Block("h2", "Generation: KV cache and tokens/s"),
                   Block("p", "Greedy generation with the KV cache after random prompts, dense and pruned measured "
                              "alternately (once per distinct pruned layout, the node quiet). Prefill's ideal ratio is "
                              "the FLOP ratio of the prompt; decode's is the ratio of bytes read per step (every "
                              "linear weight plus each sequence's KV cache at the mean context), which is what a "
                              "memory-bound decode step can gain. Each speedup: median [min, max] of the timed rounds, "
                              "and the realised share of the ideal gain, (measured - 1) / (ideal - 1)."),
                   Block("table", generation_display(generation))]
    if not extra.empty:
        blocks += [Block("h2", "Extra evaluations"),
                   Block("p", "Evaluations beside each model's primary metric (`extra_tasks`), at every stage: mean over "
                              "seeds [95% interval] (geometric for metrics where lower is better). The verdicts above "
                              "rest on the primary metric only. All rows: metrics.parquet."),
                   Block("table", extra_display(extra))]
    if images:
        blocks.append(Block("h2", "Plots"))
        for image in images:
            blocks += [Block("h3", image.content[0]), image]
    failed = failed_table(results.trials)
    blocks.append(Block("h2", f"Failed trials ({len(failed)})"))
    blocks.append(Block("table", failed) if len(failed) else Block("p", "None."))
    notes = list(results.notes) + reference_notes(results.reference)
    single = summary[summary["n_seeds"].eq(1)]
    if len(single):
        notes.append(f"{len(single)} cell(s) have a single seed: no CI and no paired test "
                     f"({', '.join(f'{r.model}/{r.label}/{r.level:g}' for r in single.itertuples())})")
    if not failed.empty:
        notes.append(f"{len(failed)} failed trial(s) are listed above and left out of every mean")
    notes = [md_text(n) for n in notes]  # paths, model names: data
    blocks += [Block("h2", "Notes"), Block("ul", notes) if notes else Block("p", "None.")]
    return blocks
