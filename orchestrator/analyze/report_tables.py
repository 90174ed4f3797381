"""The report's tables as a reader sees them: the summary, the headline (strategies better or worse than random),
head to head, stability, generation and extra evaluations, and failed trials, formatted from the analysis's
frames (orchestrator.analyze.stats, reference)."""
from __future__ import annotations

import pandas as pd

from orchestrator.analyze import stats
from orchestrator.analyze.formatting import effect, evaluation_sample, fmt, mean_ci, speed_text, versus
from orchestrator.analyze.stats import BASELINE


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
        checked = f"vs_random_{value}_eval_units"
        if checked in summary and summary[checked].fillna(0).gt(0).any():
            out[f"{value}: other evaluation samples"] = [evaluation_sample(*v) for v in zip(
                *(summary[f"vs_random_{value}_eval_{c}"] for c in ("units", "draws", "opposite")),
                summary[f"vs_random_{value}_eval_effect_low"], summary[f"vs_random_{value}_eval_effect_high"],
                log_scale, summary[f"vs_random_{value}_eval_holds"])]
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


def stability_display(table: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "model": table["model"], "strategy": table["label"], "level": table["level"].map(lambda v: f"{v:g}"),
        "seeds": table["n_seeds"], "distinct layouts": table["distinct_layouts"],
        "Jaccard across seeds": table["jaccard"].map(lambda v: fmt(v, 3)),
        "random's Jaccard": table["random_jaccard"].map(lambda v: fmt(v, 3)),
        "score Spearman across seeds": table["score_spearman"].map(lambda v: fmt(v, 3)),
    })
    if "ablation_seeds" in table and table["ablation_seeds"].fillna(0).gt(0).any():  # the run scored ablation too
        out["Spearman with ablation [95% CI]"] = [
            "" if not n else f"{fmt(m, 3)} [{fmt(lo, 3)}, {fmt(hi, 3)}] (n={int(n)})"
            for m, lo, hi, n in zip(table["ablation_spearman"], table["ablation_spearman_low"],
                                    table["ablation_spearman_high"], table["ablation_seeds"].fillna(0))]
    return out


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


def extra_display(table: pd.DataFrame) -> pd.DataFrame:
    """The extra evaluations for the report: per cell, task and metric, dense and mean [CI] after pruning and recovery."""
    return pd.DataFrame({
        "model": table["model"], "task": table["task"], "metric": table["metric"], "strategy": table["label"],
        "level": table["level"].map(lambda v: f"{v:g}"), "seeds": table["n_seeds"], "dense": table["dense"].map(fmt),
        **{stage: [mean_ci(m, lo, hi, float("nan")) for m, lo, hi in
                   zip(table[f"{stage}_mean"], table[f"{stage}_low"], table[f"{stage}_high"])]
           for stage in ("pruned", "recovered")},
    })


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


def ranking_display(ranking: pd.DataFrame) -> pd.DataFrame:
    """Kendall's tau between the pruned and the recovered order per model and level, and the adjusted flips."""
    return pd.DataFrame({
        "model": ranking["model"], "level": ranking["level"].map(lambda v: f"{v:g}"),
        "strategies": ranking["strategies"],
        "Kendall's tau [95% CI]": [f"{fmt(t, 3)} [{fmt(lo, 3)}, {fmt(hi, 3)}]" for t, lo, hi in
                                   zip(ranking["kendall_tau"], ranking["tau_low"], ranking["tau_high"])],
        "order flips with adjusted evidence": ranking["flips"].map(lambda f: f or "none"),
    })
