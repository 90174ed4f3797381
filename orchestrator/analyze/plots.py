"""Plots: each is a function of a DataFrame that returns a matplotlib Figure (no pyplot, no global state).

Means are over seeds with 95% t confidence bands on the metric's scale (stats.interval: geometric means and
log-space bands for perplexity, Fisher-z bands for correlations); below stats.MIN_SEEDS_FOR_CI seeds the line
is drawn alone, without a band.
Every axis says the metric, its direction and the evaluation protocol, so a PNG read on its own is unambiguous.
"""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import LogFormatter

from orchestrator.analyze.stats import BASELINE, MIN_SEEDS_FOR_CI, interval, metric_scale, ok_trials, pareto_front

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
RANDOM_COLOR = "#7f7f7f"  # the baseline is grey in every plot


def colors(labels) -> dict[str, str]:
    """A fixed colour per strategy label (sorted, random always grey) so all plots agree."""
    others = sorted(l for l in set(labels) if l != BASELINE)
    out = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(others)}
    out[BASELINE] = RANDOM_COLOR
    return out


def metric_label(metric: object, higher_is_better: object) -> str:
    """'perplexity (lower is better)'; perplexity is exp(mean NLL per token), a unitless ratio."""
    name = str(metric) if pd.notna(metric) and metric else "metric"
    if pd.isna(higher_is_better):
        return name
    return f"{name} ({'higher' if higher_is_better else 'lower'} is better)"


def protocol_label(row: pd.Series | dict) -> str:
    """'perplexity, wikitext-2 eval split, seq 128 stride 64, 1024 tokens': the metric and its task's own label.

    Tables before schema 2 have no `protocol_label`: their protocol JSON is shown as key=value pairs."""
    parts = [str(row.get("metric_name") or "metric")]
    label = row.get("protocol_label")
    if isinstance(label, str) and label:
        parts.append(label)
    elif isinstance(row.get("protocol"), str):
        try:
            protocol = json.loads(row["protocol"])
        except json.JSONDecodeError:
            protocol = {}
        parts += [f"{k} {v}" for k, v in protocol.items() if not isinstance(v, (dict, list))]
    return ", ".join(parts)


def _first(df: pd.DataFrame) -> dict:
    return df.iloc[0].to_dict() if not df.empty else {}


def _mean_ci(df: pd.DataFrame, x: str, value: str, scale: str) -> pd.DataFrame:
    rows = [(key, *interval(group[value], scale), group[value].count()) for key, group in df.groupby(x, sort=True)]
    return pd.DataFrame(rows, columns=[x, "mean", "low", "high", "n"])


def _band(ax: Axes, stats: pd.DataFrame, x: str, color: str, linestyle: str, label: str | None) -> None:
    """A mean line with markers and a shaded 95% CI band where there is one (enough seeds)."""
    ax.plot(stats[x], stats["mean"], color=color, linestyle=linestyle, marker="o", markersize=3.5, label=label)
    banded = stats.dropna(subset=["low", "high"])
    ax.fill_between(banded[x], banded["low"], banded["high"], color=color, alpha=0.18, linewidth=0)


def _band_note(n_seeds: int) -> str:
    return ("95% CI bands" if n_seeds >= MIN_SEEDS_FOR_CI
            else f"no CI bands: {n_seeds} seed(s), fewer than {MIN_SEEDS_FOR_CI}")


def _log_axis(ax: Axes) -> None:
    """A log y axis labelled in plain numbers: the report draws with mathtext off (names are data), and matplotlib's
    default log labels are mathtext ("$10^{4}$")."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))


def _log_if_wide(ax: Axes, values: pd.Series, higher_is_better: object) -> None:
    """Perplexity after pruning can grow by orders of magnitude: a log axis keeps the small changes visible."""
    values = values[values > 0].dropna()
    if not higher_is_better and len(values) and values.max() / values.min() > 10:
        _log_axis(ax)


def plot_metric_vs_level(trials: pd.DataFrame) -> Figure:
    """Metric vs fraction of heads pruned, per strategy: pruned (dashed) and recovered (solid), dense line.

    Args:
        trials: the merged trials table (failed rows are skipped).
    Returns:
        A Figure with one panel per model.
    """
    ok = ok_trials(trials)
    models = sorted(ok["model"].unique())
    palette = colors(ok["label"])
    fig = Figure(figsize=(5.2 * max(1, len(models)), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(models)), squeeze=False)[0])
    for ax, model in zip(axes, models):
        rows = ok[ok["model"].eq(model)]
        first, scale = _first(rows), metric_scale(rows)
        for label, group in rows.groupby("label", sort=True):
            for value, style in (("pruned", "--"), ("recovered", "-")):
                _band(ax, _mean_ci(group, "level", value, scale), "level", palette[label], style,
                      label if value == "recovered" else None)
        dense = rows["dense"].mean()
        ax.axhline(dense, color="black", linewidth=1, linestyle=":", label="dense")
        _log_if_wide(ax, pd.concat([rows["pruned"], rows["recovered"], rows["dense"]]), first.get("higher_is_better"))
        ax.set_title(f"{model}\n" + textwrap.fill(protocol_label(first), 60), fontsize=9)
        ax.set_xlabel("fraction of attention heads pruned")
        ax.set_ylabel(metric_label(first.get("metric_name"), first.get("higher_is_better")))
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="black", linestyle="--"), Line2D([], [], color="black", linestyle="-")]
        labels += ["after pruning", "after recovery fine-tuning"]
        ax.legend(handles, labels, fontsize=7)
    seeds = int(ok.groupby(["model", "label", "level"])["seed"].nunique().min()) if not ok.empty else 0
    sep = ", " if len(models) > 1 else "\n"  # one panel is too narrow for the title on one line
    fig.suptitle(f"Quality vs pruning level: mean over seeds (geometric for perplexity){sep}{_band_note(seeds)}",
                 fontsize=11)
    return fig


def plot_strategy_comparison(trials: pd.DataFrame, reference: pd.DataFrame | None = None) -> Figure:
    """Every seed's value per strategy, after pruning and after recovery, one panel per model x level.

    The verdict's picture: each dot is one trial, the bar its strategy's mean on the metric's scale
    (geometric for perplexity) with the 95% CI where there are enough seeds; the dotted line is dense.
    With a random reference, its layouts come first as a grey distribution (every layout a dot, the band its
    middle 90%): "better than random" is a strategy's dots below (or above) that band.
    """
    from orchestrator.analyze.reference import reference_values

    ok = ok_trials(trials)
    panels = ok[["model", "level"]].drop_duplicates().sort_values(["model", "level"]).to_numpy().tolist()
    # a panel widens with its strategies (0.5 in each, names upright beyond 6) so 18 names do not run together
    count = ok["label"].nunique() + (reference is not None)
    columns = max(1, len(panels)) if count <= 6 else min(2, max(1, len(panels)))  # wide panels: two to a row
    rows_of_panels = -(-max(1, len(panels)) // columns)
    fig = Figure(figsize=(max(4.6, 0.5 * count + 1.2) * columns, (4.4 + (0.6 if count > 6 else 0)) * rows_of_panels),
                 layout="constrained")
    axes = fig.subplots(rows_of_panels, columns, squeeze=False).flatten()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    palette = colors(ok["label"])
    has_reference = reference is not None and not ok_trials(reference).empty
    for ax, (model, level) in zip(axes, panels):
        rows = ok[ok["model"].eq(model) & ok["level"].eq(level)]
        first, scale = _first(rows), metric_scale(rows)
        labels = sorted(rows["label"].unique(), key=lambda l: (l != BASELINE, l))
        shown = [rows["pruned"], rows["recovered"], rows["dense"]]
        if has_reference:
            labels = ["random reference", *labels]
            for offset, value, marker in ((-0.17, "pruned", "o"), (0.17, "recovered", "s")):
                values = reference_values(reference, model, level, value)
                if values.empty:
                    continue
                jitter = np.random.default_rng(0).uniform(-0.1, 0.1, len(values))
                ax.scatter(offset + jitter, values, color="grey", marker=marker, s=6, alpha=0.5, zorder=2)
                low, high = np.quantile(values, [0.05, 0.95])
                ax.add_patch(Rectangle((offset - 0.13, low), 0.26, high - low, color="grey", alpha=0.18, zorder=1))
                shown.append(values)
        start = 1 if has_reference else 0
        for i, label in enumerate(labels[start:], start=start):
            group = rows[rows["label"].eq(label)]
            for offset, value, marker in ((-0.17, "pruned", "o"), (0.17, "recovered", "s")):
                jitter = np.linspace(-0.06, 0.06, len(group)) if len(group) > 1 else np.zeros(1)
                ax.scatter(i + offset + jitter, group[value], color=palette[label], marker=marker, s=14,
                           alpha=0.55 if value == "pruned" else 0.9, zorder=3)
                mean, low, high = interval(group[value], scale)
                ax.hlines(mean, i + offset - 0.12, i + offset + 0.12, color="black", linewidth=1.5, zorder=4)
                if pd.notna(low):
                    ax.vlines(i + offset, low, high, color="black", linewidth=0.8, zorder=4)
        ax.axhline(rows["dense"].mean(), color="black", linewidth=1, linestyle=":", label="dense")
        _log_if_wide(ax, pd.concat(shown), first.get("higher_is_better"))
        ax.set_xticks(range(len(labels)), [textwrap.fill(label, 12) for label in labels], fontsize=7,
                      rotation=90 if len(labels) > 6 else 0)
        ax.set_title(f"{model}, {level:g} of heads pruned\n" + textwrap.fill(protocol_label(first), 60), fontsize=8)
        ax.set_ylabel(metric_label(first.get("metric_name"), first.get("higher_is_better")))
        ax.grid(alpha=0.3, axis="y")
        handles = [Line2D([], [], color="grey", marker="o", linestyle="", label="after pruning (one dot per seed)"),
                   Line2D([], [], color="grey", marker="s", linestyle="", label="after recovery"),
                   Line2D([], [], color="black", linewidth=1.5, label="mean, 95% CI"),
                   Line2D([], [], color="black", linestyle=":", label="dense")]
        if has_reference:
            handles.append(Rectangle((0, 0), 1, 1, color="grey", alpha=0.3, label="random layouts, middle 90%"))
        ax.legend(handles=handles, fontsize=6.5)
    fig.suptitle("Strategies against random, seed by seed (means on the metric's scale)", fontsize=11)
    return fig


def plot_recovery_curves(curves: pd.DataFrame) -> Figure:
    """Evaluation metric over recovery fine-tuning steps, per strategy; one panel per model x level.

    Args:
        curves: curves rows with the trial columns joined (label, metric_name, higher_is_better, dense,
            protocol_*), as returned by orchestrator.analyze.load. Steps without an evaluation are skipped.
    Returns:
        A Figure (a placeholder text if there are no evaluated steps).
    """
    evaluated = curves.dropna(subset=["eval_metric"])
    cells = evaluated[["model", "level"]].drop_duplicates().sort_values(["model", "level"])
    models, levels = sorted(cells["model"].unique()), sorted(cells["level"].unique())
    fig = Figure(figsize=(4.2 * max(1, len(levels)), 3.6 * max(1, len(models))), layout="constrained")
    if evaluated.empty:
        fig.text(0.5, 0.5, "no recovery curves (fine-tuning off or no trial finished)", ha="center")
        return fig
    axes = fig.subplots(len(models), len(levels), squeeze=False)
    palette = colors(evaluated["label"])
    for i, model in enumerate(models):
        for j, level in enumerate(levels):
            ax = axes[i][j]
            rows = evaluated[evaluated["model"].eq(model) & evaluated["level"].eq(level)]
            if rows.empty:
                ax.set_visible(False)
                continue
            first, scale = _first(rows), metric_scale(rows)
            for label, group in rows.groupby("label", sort=True):
                _band(ax, _mean_ci(group, "step", "eval_metric", scale), "step", palette[label], "-", label)
            if pd.notna(first.get("dense")):
                ax.axhline(first["dense"], color="black", linewidth=1, linestyle=":", label="dense")
            if scale == "log":  # the test's scale: one strategy at 8,000 must not flatten the rest to a line
                _log_axis(ax)
            ax.set_title(f"{model}, {level:g} of heads pruned\n" + textwrap.fill(protocol_label(first), 60), fontsize=8)
            ax.set_xlabel("fine-tuning step (0 = just pruned)")
            ax.set_ylabel(metric_label(first.get("metric_name"), first.get("higher_is_better")))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    seeds = int(evaluated.groupby(["model", "label", "level", "step"])["seed"].nunique().min())
    fig.suptitle(f"Recovery fine-tuning: mean over seeds, {_band_note(seeds)}", fontsize=11)
    return fig


def plot_head_heatmaps(heads: pd.DataFrame, model: str | None = None) -> Figure:
    """Per-head maps (layers x heads) for one model: each strategy's scores and how often it pruned each head.

    Args:
        heads: heads rows with the trial columns joined (label, model, level, seed, score, pruned).
        model: which model; may be omitted when the table holds one.
    Returns:
        A Figure with a row per strategy: mean score over seeds, then, per level, the fraction of seeds in
        which the head was pruned.
    """
    model = model if model is not None else sorted(heads["model"].unique())[0]
    rows = heads[heads["model"].eq(model)]
    labels, levels = sorted(rows["label"].unique()), sorted(rows["level"].unique())
    fig = Figure(figsize=(2.9 * (1 + len(levels)) + 1, 2.5 * max(1, len(labels)) + 0.6), layout="constrained")
    axes = fig.subplots(max(1, len(labels)), 1 + len(levels), squeeze=False)
    for i, label in enumerate(labels):
        group = rows[rows["label"].eq(label)]
        # scores do not depend on the level (one scoring per seed): average per seed first, then across seeds
        per_seed = group.groupby(["seed", "layer", "head"])["score"].mean()
        seeds = per_seed.index.get_level_values("seed").nunique()
        _heatmap(fig, axes[i][0], per_seed.groupby(["layer", "head"]).mean().unstack("head"), "viridis",
                 f"{label}: score (mean of {seeds} seed{'s' * (seeds != 1)})", "score (higher = more important)")
        for j, level in enumerate(levels, start=1):
            at = group[group["level"].eq(level)]
            frequency = at.assign(pruned=at["pruned"].astype(float)).groupby(["layer", "head"])["pruned"].mean()
            _heatmap(fig, axes[i][j], frequency.unstack("head"), "Reds", f"{label}: pruned at level {level:g}",
                     "fraction of seeds pruned", vmin=0.0, vmax=1.0)
    fig.suptitle(f"{model}: head scores and pruned heads (rows: layers, columns: heads)", fontsize=11)
    return fig


def _heatmap(fig: Figure, ax: Axes, grid: pd.DataFrame, cmap: str, title: str, unit: str, **limits) -> None:
    if grid.empty:
        ax.set_visible(False)
        return
    image = ax.imshow(grid.to_numpy(float), cmap=cmap, aspect="auto", interpolation="nearest", **limits)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], fontsize=6)
    ax.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index], fontsize=6)
    bar = fig.colorbar(image, ax=ax, shrink=0.85)
    bar.set_label(unit, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    bar.ax.yaxis.get_offset_text().set_fontsize(6)  # near-constant scores (entropy) get an offset: keep it small


def pareto_points(trials: pd.DataFrame) -> pd.DataFrame:
    """One point per cell (means over seeds) for the quality vs speed plot.

    Speed is forward tokens/s after / before pruning; when speed was not measured (measure_speed: false)
    the gain is the parameter compression params_before / params_after instead, and `x_name` says so.
    """
    ok = ok_trials(trials)
    cells = ok.groupby(["model", "label", "level"], sort=True).agg(
        recovered=("recovered", "mean"), speed_before=("speed_before", "mean"), speed_after=("speed_after", "mean"),
        params_before=("params_before", "mean"), params_after=("params_after", "mean"),
        higher_is_better=("higher_is_better", "first"), metric_name=("metric_name", "first"),
        dense=("dense", "mean"),
    ).reset_index()
    cells["speedup"] = cells["speed_after"] / cells["speed_before"]
    cells["compression"] = cells["params_before"] / cells["params_after"]
    has_speed = cells.groupby("model")["speedup"].transform(lambda s: s.notna().any())
    cells["x"] = cells["speedup"].where(has_speed, cells["compression"])
    spread = _speedup_spread(ok)  # every timed round of the cell's trials: what speed noise alone spans
    cells = cells.merge(spread, on=["model", "label", "level"], how="left")
    cells["x_low"], cells["x_high"] = cells["x_low"].where(has_speed), cells["x_high"].where(has_speed)
    cells["x_name"] = np.where(has_speed, "speedup (forward tokens/s after / before)",
                               "compression (parameters before / after; speed not measured)")
    cells["front"] = False
    for _, group in cells.groupby("model"):
        cells.loc[group.index, "front"] = pareto_front(group["x"], group["recovered"], bool(group["higher_is_better"].iloc[0]),
                                                       group["x_low"], group["x_high"])
    return cells


def _speedup_spread(ok: pd.DataFrame) -> pd.DataFrame:
    """Per cell, the lowest and highest speedup of any timed round of its trials (x_low, x_high; NaN unmeasured)."""
    rows = []
    for (model, label, level), group in ok.groupby(["model", "label", "level"], sort=True):
        rounds = [float(r) for rs in group.get("speedup_rounds", pd.Series(dtype=object)).dropna() for r in rs]
        rows.append({"model": model, "label": label, "level": level, "x_low": min(rounds, default=np.nan),
                     "x_high": max(rounds, default=np.nan)})
    return pd.DataFrame(rows, columns=["model", "label", "level", "x_low", "x_high"])


def plot_pareto(trials: pd.DataFrame) -> Figure:
    """Quality after recovery vs speed gain for every cell, with the Pareto front marked; a panel per model.

    Args:
        trials: the merged trials table.
    Returns:
        A Figure; the front is drawn as a step line through the non-dominated cells (ringed).
    """
    points = pareto_points(trials)
    models = sorted(points["model"].unique())
    palette = colors(points["label"])
    fig = Figure(figsize=(5.2 * max(1, len(models)), 4.2), layout="constrained")
    axes = fig.subplots(1, max(1, len(models)), squeeze=False)[0]
    first_trial = {m: _first(ok_trials(trials)[ok_trials(trials)["model"].eq(m)]) for m in models}
    for ax, model in zip(axes, models):
        rows = points[points["model"].eq(model)]
        for label, group in rows.groupby("label", sort=True):
            ax.scatter(group["x"], group["recovered"], color=palette[label], label=label, s=28, zorder=3)
            for row in group.itertuples():
                ax.annotate(f"{row.level:g}", (row.x, row.recovered), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        front = rows[rows["front"]].sort_values("x")
        ax.scatter(front["x"], front["recovered"], facecolors="none", edgecolors="black", s=90, zorder=4,
                   label="Pareto front")
        ax.plot(front["x"], front["recovered"], color="black", linewidth=1, drawstyle="steps-pre", zorder=2)
        ax.scatter([1.0], [rows["dense"].mean()], marker="*", color="black", s=110, label="dense", zorder=5)
        first = first_trial[model]
        ax.set_title(f"{model}\n" + textwrap.fill(protocol_label(first), 60), fontsize=9)
        ax.set_xlabel(rows["x_name"].iloc[0])
        ax.set_ylabel("after recovery: " + metric_label(first.get("metric_name"), first.get("higher_is_better")))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Quality vs speed per cell\n(mean over seeds; point labels = pruning level)", fontsize=10)
    return fig


def plot_generation(table: pd.DataFrame) -> Figure:
    """Measured against ideal speedups of prefill, decode and batched decode, and the KV cache kept, per cell.

    Args:
        table: stats.generation_table(trials).
    Returns:
        A Figure with a panel per model: for each cell, bars of measured speedup and markers of the ideal ratio.
    """
    models = sorted(table["model"].unique())
    # the legend beside the panel, one entry a line: inside it, five long entries in a row took the panel's width
    # and constrained layout shrank the axes to nothing (seen on the zero-shot run)
    fig = Figure(figsize=(max(6.0, 1.1 * table.groupby("model").size().max() + 3) + 3.5, 3.6 * len(models)),
                 layout="constrained")
    axes = fig.subplots(len(models), 1, squeeze=False)[:, 0]
    kinds = [("prefill", "prefill (batch 1)"), ("decode", "decode (batch 1)"), ("decode_batch", "decode (batch B)")]
    width = 0.8 / (len(kinds) + 1)
    for ax, model in zip(axes, models):
        rows = table[table["model"].eq(model)].reset_index(drop=True)
        x = np.arange(len(rows))
        for i, (kind, name) in enumerate(kinds):
            spread = np.vstack([rows[kind] - rows[f"{kind}_min"], rows[f"{kind}_max"] - rows[kind]])
            ax.bar(x + i * width, rows[kind], width, yerr=spread, capsize=2, color=PALETTE[i], alpha=0.8,
                   label=f"{name}: measured (median, min-max of rounds)")
            ax.scatter(x + i * width, rows[f"{kind}_ideal"], marker="_", s=160, color="black",
                       label="ideal ratio" if i == 0 else None, zorder=3)
        ax.bar(x + len(kinds) * width, 1 / rows["kv_cache"], width, label="KV cache: dense / pruned bytes",
               color="grey", alpha=0.6)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(x + width * len(kinds) / 2)
        ax.set_xticklabels([f"{r.label}\n{r.level:g}" for r in rows.itertuples()], fontsize=7)
        batch = int(rows["batch_size"].iloc[0]) if rows["batch_size"].notna().any() else 0
        ax.set_title(f"{model}: pruned / dense tokens/s (B = {batch}), mean over seeds", fontsize=9)
        ax.set_ylabel("speedup")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_extra(table: pd.DataFrame) -> Figure:
    """The extra evaluations against the pruning level: a panel per (model, task, metric), a line per strategy
    (after pruning dashed, after recovery solid, mean over seeds), the dense model as a black line.

    Args:
        table: stats.extra_table(metrics).
    """
    panels = list(table.groupby(["model", "task", "metric"], sort=True))
    palette = colors(table["label"])
    fig = Figure(figsize=(5.0 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, ((model, task, metric), rows) in zip(axes, panels):
        for label, group in rows.groupby("label", sort=True):
            group = group.sort_values("level")
            ax.plot(group["level"], group["pruned_mean"], color=palette[label], linestyle="--", marker="o",
                    markersize=3)
            ax.plot(group["level"], group["recovered_mean"], color=palette[label], marker="o", markersize=3,
                    label=label)
        ax.axhline(rows["dense"].iloc[0], color="black", linewidth=1, label="dense")
        higher = bool(rows["higher_is_better"].iloc[0])
        ax.set_title(f"{model}\n{task}", fontsize=9)
        ax.set_xlabel("pruning level")
        ax.set_ylabel(f"{metric} ({'higher' if higher else 'lower'} is better)")
        if rows["scale"].iloc[0] == "log":
            _log_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Extra evaluations (mean over seeds; dashed: after pruning, solid: after recovery)", fontsize=10)
    return fig
