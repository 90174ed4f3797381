"""Numbers in docs come from tables a run wrote, never typed: publish a run's analysis under docs/data/, then
render every marked table of docs/*.md from it.

    python scripts/doc_tables.py publish results/default default   # the analysis' tables, the run's Parquet tables, facts
    python scripts/doc_tables.py reanalyze comparison [comparison_seeds ...]
        # the analysis anew from docs/data/NAME's own tables (and those of the runs that extend it), into NAME
    python scripts/doc_tables.py render                            # rewrite the marked tables of docs/*.md
    python scripts/doc_tables.py check                             # exit 1 where a doc's table differs (a test runs it)

A marked table in a doc:

    <!-- table: default/verdicts pruned sentinel/smollm2-135m -->
    ...generated markdown...
    <!-- /table -->

Views (NAME is a folder of docs/data, MODEL a model name as in the results):
    NAME/verdicts STAGE MODEL   strategy x level: mean [95% CI] and the effect against random [95% CI], Holm p, verdict
    NAME/best MODEL             per level and stage: the strategy that beats every other after Holm, or the best by
                                mean and those it is not separated from
    NAME/pairs STAGE MODEL      the head-to-head pairs whose Holm-adjusted verdict is not "no significant difference"
    NAME/dense                  per model: the dense metric on the sampled protocol and on the whole split
    NAME/facts                  the run: trials, seeds, wall time, config
    NAME/cost MODEL             seconds per strategy: scoring (where computed), fine-tuning, all stages
    NAME/stability MODEL        which heads, how stable: Jaccard overlap and score correlation across seeds, random's
    NAME/speed MODEL            forward speedup per cell: median [min, max] of its timed rounds, of its ideal, and the
                                realised share of the ideal gain
    NAME/power                  the test against the random reference simulated from the run's spreads (power.csv)
    NAME/ranking                Kendall's tau between the strategies' pruned and recovered order, flips (ranking.csv)
    NAME/generation MODEL       KV cache kept, prefill / decode speedups beside their ideal ratios (runs with generation)
    NAME/extra MODEL            the extra evaluations (extra_tasks) per cell and stage, mean [95% CI]
    benchmarks/BENCH [N]        the N-th (default first) table of benchmarks/results/BENCH.md, as its script wrote it
    config/defaults             every config key at its default (orchestrator.spec.defaults_yaml), as YAML
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "data"
BLOCK = re.compile(r"(<!-- table: (?P<spec>[^>]+?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
sys.path.insert(0, str(REPO))

from orchestrator.analyze import stats  # noqa: E402
from sentinel.result import strategy_label  # noqa: E402
from orchestrator.analyze.formatting import (effect, evaluation_sample, markdown_table, mean_ci,  # noqa: E402
                                             speed_text)
from orchestrator.analyze.report_tables import (extra_display, generation_display, ranking_display,  # noqa: E402
                                                stability_display)
from orchestrator.results import TABLE_NAMES  # noqa: E402


# ------------------------------------------------------------------------------------------------ publish


ANALYSIS_TABLES = ("summary.csv", "pairwise.csv", "stability.csv", "percentiles.csv", "generation.csv", "extra.csv",
                   "ranking.csv")
IMAGES = REPO / "docs" / "img"  # a run's published figure: docs/img/NAME_strategies.png, redrawn with its tables


def reanalyze(name: str, *extensions: str) -> Path:
    """Runs today's analysis on docs/data/NAME's published Parquet tables, with those of the runs that extend it
    (published beside it: docs/data/EXTENSION), and replaces NAME's analysis tables (a changed test republishes every
    number from the same trials)."""
    import tempfile

    from orchestrator.analyze import analyze

    target = DATA / name
    with tempfile.TemporaryDirectory() as tmp:
        analyze([str(target), *(str(DATA / e) for e in extensions)], out=tmp)
        for table in ANALYSIS_TABLES:
            if (Path(tmp) / table).is_file():
                shutil.copyfile(Path(tmp) / table, target / table)
        figure = IMAGES / f"{name}_strategies.png"
        if figure.is_file():
            shutil.copyfile(Path(tmp) / "strategies.png", figure)
    return target


def publish(results: Path, name: str) -> Path:
    """Copies a finished run's analysis tables (and facts read from its trials) to docs/data/NAME/."""
    target = DATA / name
    target.mkdir(parents=True, exist_ok=True)
    for table in ANALYSIS_TABLES:
        if (results / "analysis" / table).is_file():  # percentiles with a random reference, the last two when measured
            shutil.copyfile(results / "analysis" / table, target / table)
    for table in TABLE_NAMES:  # the run's own tables: every table of the docs can be recomputed from them
        if (results / f"{table}.parquet").is_file():
            shutil.copyfile(results / f"{table}.parquet", target / f"{table}.parquet")
    trials = pd.read_parquet(results / "trials.parquet")
    reference = trials["reference"].fillna(False).astype(bool) if "reference" in trials else pd.Series(False, trials.index)
    started, finished = pd.to_datetime(trials["started_at"]).min(), pd.to_datetime(trials["finished_at"]).max()
    facts = {
        "trials": int(len(trials)), "ok": int(trials["status"].eq("ok").sum()),
        "seeds": {m: int(g["seed"].nunique()) for m, g in trials[~reference].groupby("model")},
        "reference_layouts": {m: int(len(g)) for m, g in trials[reference].groupby("model")},
        "first_start_to_last_end_s": round((finished - started).total_seconds(), 1),
        "dense_full": {m: float(g["dense_full"].dropna().iloc[0]) if g["dense_full"].notna().any() else None
                       for m, g in trials.groupby("model")},
        "protocol_label": {m: str(g["protocol_label"].dropna().iloc[0]) for m, g in trials.groupby("model")},
        "versions": {k: str(trials[f"version_{k}"].dropna().iloc[0]) for k in ("torch", "transformers", "ray")
                     if f"version_{k}" in trials and trials[f"version_{k}"].notna().any()},
    }
    (target / "facts.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
    compensate = trials["compensate"] if "compensate" in trials else [False] * len(trials)
    policy = trials["policy"] if "policy" in trials else ["global"] * len(trials)
    label = [strategy_label(s, o, c is True, p) + (" reference" if r else "")
             for s, o, c, p, r in zip(trials["strategy"], trials["strategy_options"], compensate, policy, reference)]
    costs = trials.assign(label=label).groupby(["model", "label"]).agg(
        trials=("trial_id", "count"), scoring_s=("time_score", "sum"), finetune_s=("time_finetune", "sum"),
        total_s=("time_total", "sum")).round(1).reset_index()
    costs.to_csv(target / "costs.csv", index=False)
    return target


# ------------------------------------------------------------------------------------------------ views


def cost(name: str, model: str) -> pd.DataFrame:
    rows = pd.read_csv(DATA / name / "costs.csv")
    rows = rows[rows["model"].eq(model)]
    return pd.DataFrame({"strategy": rows["label"], "trials": rows["trials"],
                         "scoring (s, where computed)": rows["scoring_s"].map(lambda v: f"{v:.1f}"),
                         "fine-tuning (s; dynamic: with its pruning)": rows["finetune_s"].map(lambda v: f"{v:.1f}"),
                         "all stages (s)": rows["total_s"].map(lambda v: f"{v:.1f}")})


def _load(name: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    folder = DATA / name
    return (pd.read_csv(folder / "summary.csv"), pd.read_csv(folder / "pairwise.csv"),
            json.loads((folder / "facts.json").read_text()))


def _p(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.2g}"


def verdicts(summary: pd.DataFrame, stage: str, model: str) -> pd.DataFrame:
    rows = summary[summary["model"].eq(model)].sort_values(["label", "level"])
    log = bool(rows["scale"].eq("log").any())
    return pd.DataFrame({
        "strategy": rows["label"], "level": rows["level"].map(lambda v: f"{v:g}"), "seeds": rows["n_seeds"],
        stage: [mean_ci(m, lo, hi, sp) for m, lo, hi, sp in
                zip(rows[f"{stage}_mean"], rows[f"{stage}_low"], rows[f"{stage}_high"], rows[f"{stage}_spread"])],
        "vs random [95% CI]": [effect(e, lo, hi, log) for e, lo, hi in
                               zip(rows[f"vs_random_{stage}_effect"], rows[f"vs_random_{stage}_effect_low"],
                                   rows[f"vs_random_{stage}_effect_high"])],
        "p": rows[f"vs_random_{stage}_p"].map(_p), "Holm p": rows[f"vs_random_{stage}_p_adj"].map(_p),
        "verdict": rows[f"vs_random_{stage}_verdict"].fillna(""),
        **({} if f"{stage}_percentile" not in rows or rows[f"{stage}_percentile"].isna().all() else {
            "layouts": rows[f"vs_random_{stage}_n_pairs"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}"),
            "beats random layouts (seeds: mean [min, max])": [
                "" if pd.isna(m) else f"{m:.0%} [{lo:.0%}, {hi:.0%}]" for m, lo, hi in
                zip(*(rows[f"{stage}_percentile{c}"] for c in ("", "_min", "_max")))]}),
        **({} if not rows.get(f"vs_random_{stage}_eval_units", pd.Series(dtype=float)).fillna(0).gt(0).any() else {
            "on resampled evaluation units [95%]": [evaluation_sample(*v) for v in zip(
                *(rows[f"vs_random_{stage}_eval_{c}"] for c in ("units", "draws", "opposite", "effect_low",
                                                                 "effect_high")),
                [log] * len(rows), rows[f"vs_random_{stage}_eval_holds"])]}),
    })


def stability(name: str, model: str) -> pd.DataFrame:
    rows = pd.read_csv(DATA / name / "stability.csv")
    return stability_display(rows[rows["model"].eq(model)].reset_index(drop=True)).drop(columns="model")


def speed(summary: pd.DataFrame, model: str) -> pd.DataFrame:
    """Forward speed per cell: the speedup (median [min, max] of the timed rounds) of its ideal, and the realised
    share of the ideal gain."""
    rows = summary[summary["model"].eq(model)].sort_values(["label", "level"])
    return pd.DataFrame({
        "strategy": rows["label"], "level": rows["level"].map(lambda v: f"{v:g}"),
        "speedup [rounds] of ideal: share of the ideal gain [rounds]": [
            speed_text(*values) for values in zip(*(rows[f"speedup{c}"] for c in stats.SPREAD_COLUMNS),
                                                  rows["ideal_speedup"])],
    })


def power(name: str) -> pd.DataFrame:
    """benchmarks/reference_power.py's power at the effects this run observed, from its own spreads."""
    rows = pd.read_csv(DATA / name / "power.csv")
    return rows[["model", "level", "strategy", "layouts", "sd_ratio", "verdict", "holm_family", "runs", "power"]]


def best(summary: pd.DataFrame, pairs: pd.DataFrame, model: str) -> pd.DataFrame:
    out = []
    cells = summary[summary["model"].eq(model)]
    higher = bool(cells["higher_is_better"].dropna().iloc[0])
    for level in sorted(cells["level"].unique()):
        for stage in ("pruned", "recovered"):
            winner = stats.best(pairs, model, level, stage)
            at = cells[cells["level"].eq(level) & ~cells["label"].eq(stats.BASELINE)]  # random: judged apart
            at = at.sort_values(f"{stage}_mean", ascending=not higher)
            top = at.iloc[0]["label"]
            tied = stats.not_separated(pairs, model, level, stage, top)
            out.append({"level": f"{level:g}", "stage": stage,
                        "best after Holm": winner or "none",
                        "best by mean": top, "not separated from (by mean's best)": ", ".join(tied) or "none"})
    return pd.DataFrame(out)


def separated_pairs(pairs: pd.DataFrame, summary: pd.DataFrame, stage: str, model: str) -> pd.DataFrame:
    rows = pairs[pairs["model"].eq(model) & pairs["stage"].eq(stage) & pairs["verdict"].isin(["better", "worse"])]
    log = bool(summary.loc[summary["model"].eq(model), "scale"].eq("log").any())
    rows = rows.sort_values(["level", "a", "b"])
    return pd.DataFrame({
        "level": rows["level"].map(lambda v: f"{v:g}"), "a": rows["a"], "b": rows["b"],
        "a against b [95% CI]": [effect(e, lo, hi, log) for e, lo, hi in
                                 zip(rows["effect"], rows["effect_low"], rows["effect_high"])],
        "Holm p": rows["p_adj"].map(_p), "a is": rows["verdict"],
    })


def dense(summary: pd.DataFrame, facts: dict) -> pd.DataFrame:
    rows = summary.drop_duplicates("model").sort_values("model")
    return pd.DataFrame({
        "model": rows["model"], "metric": rows["metric_name"],
        "dense, the grid's protocol": rows["dense_mean"].map(lambda v: f"{v:.4g}"),
        "protocol": rows["model"].map(facts["protocol_label"]),
        "dense, whole eval split": rows["model"].map(lambda m: "" if facts["dense_full"].get(m) is None
                                                   else f"{facts['dense_full'][m]:.4g}"),
    })


def run_facts(facts: dict) -> pd.DataFrame:
    return pd.DataFrame([{
        "trials": facts["trials"], "ok": facts["ok"],
        "seeds": ", ".join(f"{m}: {n}" for m, n in sorted(facts["seeds"].items())),
        "first trial start to last trial end (s)": facts["first_start_to_last_end_s"],
        "versions": ", ".join(f"{k} {v}" for k, v in sorted(facts["versions"].items())),
    }])


def benchmark_table(bench: str, index: int = 1) -> str:
    """The index-th markdown table of benchmarks/results/BENCH.md (written by benchmarks/BENCH.py)."""
    tables, current = [], []
    for line in (REPO / "benchmarks" / "results" / f"{bench}.md").read_text(encoding="utf-8").splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append("\n".join(current) + "\n")
            current = []
    return tables[index - 1]


def render_view(spec: str) -> str:
    name_view, *args = spec.split()
    name, view = name_view.split("/")
    if name == "benchmarks":
        return benchmark_table(view, *map(int, args))
    if name == "config" and view == "defaults":  # every key at its default, from the contract itself
        from orchestrator.spec import defaults_yaml

        return f"```yaml\n{defaults_yaml()}```\n"
    if view in ("facts", "cost"):  # a run's own files (an extension of another run has no analysis of its own)
        table = (run_facts(json.loads((DATA / name / "facts.json").read_text())) if view == "facts"
                 else cost(name, args[0]))
        return (markdown_table(table) if len(table) else "(none)") + "\n"
    summary, pairs, facts = _load(name)
    if view == "verdicts":
        table = verdicts(summary, args[0], args[1])
    elif view == "best":
        table = best(summary, pairs, args[0])
    elif view == "pairs":
        table = separated_pairs(pairs, summary, args[0], args[1])
    elif view == "dense":
        table = dense(summary, facts)
    elif view == "facts":
        table = run_facts(facts)
    elif view == "cost":
        table = cost(name, args[0])
    elif view == "speed":
        table = speed(summary, args[0])
    elif view == "stability":
        table = stability(name, args[0])
    elif view == "power":
        table = power(name)
    elif view == "ranking":  # Kendall's tau between the pruned and the recovered order, as the report shows it
        table = ranking_display(pd.read_csv(DATA / name / "ranking.csv", dtype={"flips": str}).fillna({"flips": ""}))
    elif view in ("generation", "extra"):  # stats.generation_table / extra_table as the report shows them
        rows = pd.read_csv(DATA / name / f"{view}.csv")
        rows = rows[rows["model"].eq(args[0])].reset_index(drop=True)
        table = (generation_display(rows) if view == "generation" else extra_display(rows)).drop(columns="model")
    else:
        raise ValueError(f"view: {view!r} is not one of verdicts, best, pairs, dense, facts, cost, speed, stability, power, "
                         "ranking, generation, extra")
    return (markdown_table(table) if len(table) else "(none)") + "\n"


# ------------------------------------------------------------------------------------------------ docs


def rendered(text: str) -> str:
    """The doc with every marked table regenerated from docs/data."""
    return BLOCK.sub(lambda m: m.group(1) + render_view(m.group("spec")) + m.group(4), text)


def docs() -> list[Path]:
    return sorted((REPO / "docs").glob("*.md"))


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    if command == "publish":
        print(publish(Path(argv[1]), argv[2]))
        return 0
    if command == "reanalyze":
        print(reanalyze(argv[1], *argv[2:]))
        return 0
    stale = []
    for doc in docs():
        text = doc.read_text(encoding="utf-8")
        new = rendered(text)
        if new != text:
            stale.append(doc.name)
            if command == "render":
                doc.write_text(new, encoding="utf-8")
    if command == "check" and stale:
        print(f"tables differ from docs/data in: {', '.join(stale)} (python scripts/doc_tables.py render)")
        return 1
    if command == "render" and stale:
        print(f"rendered: {', '.join(stale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
