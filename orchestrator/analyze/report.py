"""The report: tables (CSV + markdown), plots (PNG + SVG) and report.md / report.html in one folder.

The report is built as a list of blocks (heading, text, bullet list, table, image: orchestrator.analyze.formatting)
rendered to markdown, with the tables of orchestrator.analyze.report_tables;
report.html is that markdown rendered by markdown-it-py with raw HTML off, so both say the same thing.
Result tables are untrusted input: every string that comes from them (model names, errors, versions...) goes
through `md_text`, which escapes what markdown would turn into a link or markup, so data never becomes a link
or live HTML (docs/SECURITY.md). Files are written through orchestrator.storage.write_bytes: atomically for
local folders, one PUT per object for s3:// and other pyarrow.fs URIs.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Callable

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from orchestrator.analyze import plots, stats
from orchestrator.analyze.formatting import (FORMATS, Block, code, effect, figure_bytes, fmt, markdown_table, md_text,
                                             render_markdown, slug)
from orchestrator.analyze.html import render_html
from orchestrator.analyze.load import Results
from orchestrator.analyze.reference import reference_notes, seed_percentiles
from orchestrator.analyze.ranking import stage_ranking
from orchestrator.analyze.stability import AGREEMENT, stability_table
from orchestrator.analyze.report_tables import (display_table, extra_display, failed_table, generation_display,
                                                headline_table, pairwise_display, ranking_display, stability_display)
from orchestrator.analyze.stats import ALPHA, BASELINE, CELL, CONFIDENCE, MIN_SEEDS_FOR_CI, ok_trials
from orchestrator.analyze.summary import summary_table
from orchestrator.storage import write_bytes


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
             f"trials: {ok} ok, {failed} failed, {len(t)} strategy cells" + _grid_size(results)
             + _reference_count(results.reference)]
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


def _reference_count(reference: pd.DataFrame) -> str:
    """'; random reference: N layouts (K ok)': the reference's trials are trials of the run too."""
    if reference.empty:
        return ""
    return f"; random reference: {len(reference)} layouts ({int(reference['status'].eq('ok').sum())} ok)"


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
            "drawn under the same selection rules (see the notes for how many), unpaired, on the metric's scale (log "
            "perplexity, Fisher's z). The unit is the distinct layout (n): seeds that prune the same heads count once. "
            "One layout: the exact rank test of it among random's. Five or more, spread no more than random's: a "
            "permutation test of Welch's t (exact where the partitions can be enumerated, otherwise resampled until "
            "the Monte-Carlo error cannot move a verdict). Two to four layouts, or layouts spread more than random's: "
            "no test holds its level there, so no verdict, the percentile only. The effect is the ratio of geometric "
            "means to random for perplexity (0.2x = a fifth of random's), otherwise the difference, with the 95% "
            "interval that inverts the same test (it excludes no effect exactly when p < 0.05); then the raw p and "
            "the Holm-adjusted p over every strategy and level of that model and stage. The pruned family is each "
            "model's confirmatory family; the recovered one is exploratory. `percentile`: the share of random "
            "layouts a seed's layout beats (mean over seeds, [min, max]); for a strategy whose layout does not change "
            "with the seed it is the honest number. `other evaluation samples`: every cell is measured on the same "
            "windows (or STS-B pairs); drawn again with replacement 2,000 times, the share of draws in which the "
            "difference from random keeps its sign, and the draws' 95% interval of the effect. A verdict needs both "
            "the test and this check (otherwise: not robust to the evaluation sample); runs whose rows carry no "
            "units show no check.")


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


def write_report(results: Results, out: str, settings=None) -> str:
    """Writes summary.csv, summary.md, the plots, report.md and report.html into `out`.

    Args:
        results: the merged inputs (orchestrator.analyze.load).
        out: output folder, local path or URI.
        settings: the test against the random reference (reference.TestSettings; default when None).
    Returns:
        The path of report.md.
    """
    out = out.rstrip("/")
    summary = summary_table(results.trials, results.reference, settings)
    stability = stability_table(results.trials, results.heads, results.reference)
    agreement = stability[[*CELL, *AGREEMENT]]  # each criterion's correlation with ablation, in summary.csv too
    write_bytes(f"{out}/summary.csv", summary.merge(agreement, on=CELL, how="left").to_csv(index=False).encode())
    write_bytes(f"{out}/stability.csv", stability.to_csv(index=False).encode())
    if not results.reference.empty:
        write_bytes(f"{out}/percentiles.csv",
                    seed_percentiles(results.trials, results.reference).to_csv(index=False).encode())
    pairs = stats.pairwise(results.trials, results.notes)
    write_bytes(f"{out}/pairwise.csv", pairs.to_csv(index=False).encode())
    ranking = stage_ranking(results.trials, pairs, seed=getattr(settings, "seed", 0))
    if not ranking.empty:
        write_bytes(f"{out}/ranking.csv", ranking.to_csv(index=False).encode())
    table = display_table(summary)
    write_bytes(f"{out}/summary.md", (markdown_table(table) + "\n").encode())
    generation, extra = stats.generation_table(results.trials), stats.extra_table(results.metrics)
    for name, frame in (("generation", generation), ("extra", extra)):
        if not frame.empty:
            write_bytes(f"{out}/{name}.csv", frame.to_csv(index=False).encode())

    images = []
    with matplotlib.rc_context({"text.parse_math": False}):  # names are data: "$x$" is text, never mathtext
        for alt, stem, build in figures(results, generation, extra):
            fig = build()
            for kind in FORMATS:
                write_bytes(f"{out}/{stem}.{kind}", figure_bytes(fig, kind))
            images.append(Block("image", (alt, stem)))

    blocks = _blocks(results, summary, table, images, pairs, stability, generation, extra, out, ranking)
    title = f"sentinel-bench analysis: {_unique(results.trials.get('experiment'))}"
    report = f"{out}/report.md"
    markdown = render_markdown(md_text(title), blocks)
    write_bytes(report, markdown.encode())
    write_bytes(f"{out}/report.html", render_html(title, markdown).encode())
    return report


def _ranking_blocks(ranking: pd.DataFrame | None) -> list[Block]:
    if ranking is None or ranking.empty:
        return []
    return [Block("h2", "Rankings across stages"),
            Block("p", "Does the order of strategies after pruning survive recovery? Kendall's tau between the "
                       "strategies' means after pruning and after recovery (on the metric's scale), with a 95% interval "
                       "from a bootstrap over each strategy's seeds; a flip is a pair whose head-to-head verdict "
                       "(Holm-adjusted) says a beats b after pruning and b beats a after recovery. Also as "
                       "[ranking.csv](ranking.csv)."),
            Block("table", ranking_display(ranking))]


def _blocks(results: Results, summary: pd.DataFrame, table: pd.DataFrame, images: list[Block],
            pairs: pd.DataFrame, stability: pd.DataFrame, generation: pd.DataFrame, extra: pd.DataFrame,
            out: str | None = None, ranking: pd.DataFrame | None = None) -> list[Block]:
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    headline = headline_table(summary)
    lead = [image for image in images if image.content[1] == "strategies"]  # the headline figure
    images = [image for image in images if image not in lead]
    blocks = [Block("p", f"Generated {generated}."), Block("h2", "Headline"),
              Block("p", f"Strategies better or worse than {BASELINE} after Holm's adjustment (p < {ALPHA}, in the "
                         "metric's direction, and the same sign on resampled evaluation units where the rows carry "
                         "them), with the effect against random [95% interval] and the share of random layouts the "
                         "strategy's seeds beat; the figure shows where each seed lands among them."),
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
              Block("p", "Exploratory: every pair of strategies at each model, level and stage, paired by seed (the "
                         "unit is the seed); effect of a against b (a ratio of geometric means for perplexity, a "
                         "difference otherwise) with its 95% t interval; Holm's adjustment over every pair and level of "
                         "one model and stage. A pair whose every seed gives the same difference has nothing to test "
                         "against: it reads \"deterministic: better\" or \"deterministic: worse\". Also as "
                         "[pairwise.csv](pairwise.csv)."),
              Block("table", pairwise_display(pairs, summary)) if len(pairs) else Block("p", "No pairs."),
              *_ranking_blocks(ranking),
              Block("h2", "Which heads, how stable"),
              Block("p", "Per cell: how many distinct layouts its seeds chose, the mean pairwise Jaccard overlap of "
                         "the pruned head sets across seeds (each seed scores on its own calibration draw), the same "
                         "overlap between random layouts (what chance gives), and the mean pairwise Spearman "
                         "correlation of the head scores across seeds; where the run scored `ablation` (each unit "
                         "removed alone: the ground truth of single-unit importance), each strategy's Spearman "
                         "correlation with ablation's scores at the same seed, mean over seeds [95% interval]. Also "
                         "as [stability.csv](stability.csv)."),
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
