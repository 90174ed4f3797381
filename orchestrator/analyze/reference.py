"""Every strategy against the random reference: K random layouts per (model, level), evaluated after pruning (and
some after recovery), drawn under the grid's own selection rules (docs/ANALYZE.md, "Against the random reference").

Random is a distribution, not one draw per seed: a strategy's seeds are tested against the reference's layouts,
unpaired, on the metric's scale (log perplexity, Fisher's z). The unit is the distinct layout: seeds that prune the
same heads are one layout (their values averaged on the test's scale), never counted as independent evidence. One
distinct layout (a criterion that reads neither seed nor data, such as magnitude): the exact rank test of that layout
within the reference. Five or more whose spread is at most MAX_SPREAD_RATIO times random's: a permutation test of
Welch's t (orchestrator.analyze.permutation), which keeps its level when a criterion's layouts spread far less than
random's, as they do. Two to four layouts, or a wider spread: no test holds its level there
(benchmarks/results/reference_power.md), so no verdict, the percentile only.

Beside the test: the effect (ratio of geometric means for log-scale metrics, a difference otherwise) with the
interval that inverts the test (it excludes no effect exactly when the test rejects), and the percentile within
random, the share of reference layouts a seed's layout beats (ties count half). Holm's adjustment runs over every
strategy and level of one (model, stage); it holds under any dependence, including the positive dependence that one
shared reference creates. The pruned family is each model's confirmatory family; the recovered one is exploratory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from orchestrator.analyze.evaluation_sample import NOT_RUN, ReferenceSample
from orchestrator.analyze.layouts import layout_keys
from orchestrator.analyze.load import AnalyzeError
from orchestrator.analyze.permutation import (MAX_RESAMPLES, MIN_RESAMPLES, STATISTICS, TwoSampleTest, rank_interval,
                                              rank_p, stream_seed)
from orchestrator.analyze.stats import (ALPHA, CELL, CONFIDENCE, SCALES, back_difference, higher_is_better, holm,
                                       mc_interval, metric_scale, ok_trials, worst_for_nonfinite)

MIN_LAYOUTS = 20  # pruned reference layouts a test needs (one distinct strategy layout then reaches p = 2/21)
MIN_RECOVERED = 5  # recovered reference layouts a recovered-stage test needs (0: no recovered verdicts)
# Where the permutation test of Welch's t holds its level (benchmarks/results/reference_power.md): with 3 or 4
# distinct layouts it is liberal once a strategy spreads more than random (0.07-0.085 at 1.5-2x), and at any size
# when it spreads far more (0.08-0.15 at 10x: random's skew scaled up); outside these, the percentile, no verdict.
MIN_DISTINCT_LAYOUTS = 5
MAX_SPREAD_RATIO = 1.0  # the strategy's sd over random's, on the test's scale: a criterion less stable than random


def reference_rows(reference: pd.DataFrame, model: str, level: float, stage: str) -> pd.DataFrame:
    """One row per distinct reference layout at (model, level) for `stage` ("pruned"; "recovered": only layouts that
    were fine-tuned), in the order of their layout keys (column `layout`); a layout drawn twice counts once."""
    rows = ok_trials(reference)
    rows = rows[rows["model"].eq(model) & rows["level"].eq(level)]  # a non-finite metric stays (NaN): it ranks last
    if stage == "recovered":
        rows = rows[pd.to_numeric(rows["recovery_steps"], errors="coerce").fillna(0).gt(0)]
    rows = rows.assign(layout=layout_keys(rows).to_numpy())
    return rows.sort_values("layout", kind="stable").drop_duplicates("layout")


def reference_values(reference: pd.DataFrame, model: str, level: float, stage: str) -> pd.Series:
    """reference_rows' metric at `stage`, indexed by layout key."""
    rows = reference_rows(reference, model, level, stage)
    return pd.Series(rows[stage].to_numpy(float), index=rows["layout"].to_numpy())


def percentile(value: float, reference: np.ndarray, higher_is_better: bool) -> float:
    """The share of reference values that `value` beats (ties count half), in [0, 1]."""
    if not len(reference) or pd.isna(value):
        return float("nan")
    better = (value > reference) if higher_is_better else (value < reference)
    return float((better.sum() + 0.5 * (value == reference).sum()) / len(reference))


@dataclass(frozen=True)
class TestSettings:
    """How `vs_reference` tests (sentinel-bench analyze --test, --resamples, --seed)."""

    statistic: str = "studentized"
    resamples: int = MIN_RESAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise AnalyzeError(f"--test: {self.statistic!r} is not a test; allowed: {', '.join(STATISTICS)}")
        if not isinstance(self.resamples, int) or self.resamples < MIN_RESAMPLES:
            raise AnalyzeError(f"--resamples: {self.resamples!r} is too few; allowed: an integer of at least "
                               f"{MIN_RESAMPLES} (the smallest p must survive Holm's adjustment)")


def permutation_p(x: np.ndarray, y: np.ndarray, seed: int = 0, statistic: str = "studentized",
                  resamples: int = MIN_RESAMPLES) -> float:
    """Two-sided p of x against y: the exact rank test for one value in x, else the permutation test of `statistic`
    (orchestrator.analyze.permutation)."""
    if len(x) == 1:
        return rank_p(float(x[0]), np.asarray(y, float))
    return TwoSampleTest(x, y, statistic, resamples, seed).p()


def _bounds(test: TwoSampleTest | None, p: float) -> tuple[float, float]:
    """A 99.9% Clopper-Pearson interval of a Monte-Carlo p (the p itself when exact or not computed)."""
    if test is None or test.exact or not np.isfinite(p):
        return p, p
    return mc_interval(round(p * (test.partitions + 1)) - 1, test.partitions)


def _deciding(p: pd.Series) -> dict:
    """For Holm over `p`: each test's index -> the index of the test whose (m - j + 1) p_(j) sets its adjusted p (the
    running maximum of the step-down)."""
    values = p.dropna().sort_values()
    m, out, best, top = len(values), {}, None, -1.0
    for k, (index, value) in enumerate(values.items()):
        if (m - k) * value >= top:
            best, top = index, (m - k) * value
        out[index] = best
    return out


def _stable_holm(tests: dict, table: pd.DataFrame, settings: TestSettings) -> pd.DataFrame:
    """Holm per model, resampling further every Monte-Carlo test that can still move a verdict: a verdict is
    stable when it is the same with every p at the low and at the high end of its Monte-Carlo interval (Holm's
    adjusted p rises with each raw p); the tests that set an unstable verdict's adjusted p get ten times the
    partitions, up to MAX_RESAMPLES. What still straddles alpha there is flagged in `mc_straddles`."""
    table["mc_straddles"] = False
    for _, family in table.groupby("model"):
        while True:
            bounds = {i: _bounds(tests.get(i), table.at[i, "p"]) for i in family.index}
            low = pd.Series({i: b[0] for i, b in bounds.items()}, dtype=float)
            high = pd.Series({i: b[1] for i, b in bounds.items()}, dtype=float)
            unstable = [i for i in family.index if (holm(low)[i] < ALPHA) != (holm(high)[i] < ALPHA)]
            deciding_low, deciding_high = _deciding(low), _deciding(high)
            refine = {j for i in unstable for j in (deciding_low.get(i), deciding_high.get(i))
                      if j in tests and not tests[j].exact and tests[j].partitions < MAX_RESAMPLES}
            if not refine:
                table.loc[unstable, "mc_straddles"] = True
                break
            for j in refine:
                old = tests[j]
                tests[j] = TwoSampleTest(old.x, old.y, old.statistic, min(MAX_RESAMPLES, 10 * old.partitions + 9),
                                         old.seed)
                table.at[j, "p"] = tests[j].p()
    table["p_adj"] = pd.concat([holm(g["p"]) for _, g in table.groupby("model")]).reindex(table.index)
    return table


def vs_reference(trials: pd.DataFrame, reference: pd.DataFrame, stage: str,
                 settings: TestSettings = TestSettings()) -> pd.DataFrame:
    """Each strategy cell against the random reference at its model and level, for `stage` (pruned or recovered).

    The unit is the distinct layout. One layout: the exact rank test; MIN_DISTINCT_LAYOUTS or more: the permutation
    test of `settings.statistic` (studentized: Welch's t); in between, no verdict ("too few distinct layouts"), and
    none for layouts spread more than MAX_SPREAD_RATIO times random's ("too unstable for a verdict"): the percentile
    only. The interval is the test inverted (it excludes no effect exactly when p < 1 - CONFIDENCE). A
    reference layout whose metric is not finite ranks last (tied with the worst finite value), never dropped.

    Returns:
        One row per (model, label, level) with a reference: `effect`, `effect_low`, `effect_high`, `ratio` (log
        scale), `diff` (mean strategy - mean reference in metric units), `p`, `p_mc_error` (0 when exact),
        `partitions`, `exact`, `p_adj` (Holm over the model and stage), `n_layouts` (the strategy's distinct
        layouts), `n_reference`, `n_nonfinite_reference`, `percentile` (mean over seeds), `percentile_min`,
        `percentile_max`, `direction`, `verdict`, `test`, `unit`, `family` (pruned: confirmatory; recovered:
        exploratory).
    """
    columns = CELL + ["diff", "ratio", "effect", "effect_low", "effect_high", "p", "p_mc_error", "partitions", "exact",
                      "p_adj", "n_layouts", "n_reference", "n_nonfinite_reference", "percentile", "percentile_min",
                      "percentile_max", "direction", "verdict", "test", "unit", "family", *EVAL_COLUMNS]
    ok = ok_trials(trials)
    rows, tests, samples = [], {}, {}
    for (model, label, level), group in ok.groupby(CELL, sort=True):
        reference_layouts = reference_rows(reference, model, level, stage)
        raw = pd.Series(reference_layouts[stage].to_numpy(float), index=reference_layouts["layout"].to_numpy())
        if raw.empty:
            continue
        if (model, level) not in samples:
            samples[model, level] = ReferenceSample(
                reference_layouts, stage, stream_seed(settings.seed, model, level, stage, "evaluation sample"))
        scale, higher = metric_scale(group), higher_is_better(group)
        forward, _ = SCALES[scale]
        base = worst_for_nonfinite(raw.to_numpy(float), higher)
        finite = group[np.isfinite(pd.to_numeric(group[stage], errors="coerce").to_numpy(float))]
        row = {"model": model, "label": label, "level": level, "higher": higher, "scale": scale,
               "n_reference": len(base), "n_nonfinite_reference": int((~np.isfinite(raw.to_numpy(float))).sum()),
               "needed": MIN_LAYOUTS if stage == "pruned" else MIN_RECOVERED, "unit": "distinct layouts",
               "family": "confirmatory" if stage == "pruned" else "exploratory", "exact": True, "partitions": 0,
               "p": float("nan"), "p_mc_error": 0.0, "effect_low": float("nan"), "effect_high": float("nan")}
        if finite.empty:
            rows.append({**row, **_on_metric_scale(NOT_RUN, float("nan"), float("nan"), scale), "n_layouts": 0,
                         "verdict_override": "no finite metric", "test": "none",
                         "effect": float("nan"), "ratio": float("nan"), "diff": float("nan"),
                         "percentile": float("nan"), "percentile_min": float("nan"), "percentile_max": float("nan"),
                         "direction": float("nan")})
            continue
        y = forward(base)
        x = (pd.Series(forward(finite[stage].to_numpy(float)), index=layout_keys(finite).to_numpy())
             .groupby(level=0).mean().to_numpy())  # one value per distinct layout
        shares = [percentile(v, base, higher) for v in finite[stage].to_numpy(float)]
        d = float(np.mean(x) - np.mean(y))
        low = high = float("nan")
        if len(y) < row["needed"]:
            test_name = f"none: {len(y)} distinct reference layouts, a test needs {row['needed']}"
        elif len(x) == 1:
            row["p"] = rank_p(float(x[0]), y)
            low, high = rank_interval(float(x[0]), y, CONFIDENCE)
            test_name = f"exact rank test, 1 layout vs {len(y)} random"
        elif len(x) < MIN_DISTINCT_LAYOUTS:
            test_name = f"none: {len(x)} distinct layouts"
        elif (ratio := spread_ratio(x, y)) > MAX_SPREAD_RATIO:
            row["verdict_override"] = "too unstable for a verdict"
            test_name = f"none: layouts spread {ratio:.1f}x random's"
        else:
            test = TwoSampleTest(x, y, settings.statistic, settings.resamples,
                                 stream_seed(settings.seed, model, label, level, stage))
            tests[len(rows)] = test
            row["p"] = test.p()
            test_name = f"{settings.statistic} permutation, {len(x)} layout(s) vs {len(y)} random"
        effect, effect_low, effect_high = back_difference(d, low, high, float(np.mean(y)), scale)
        sample = _on_metric_scale(samples[model, level].check(finite.assign(layout=layout_keys(finite).to_numpy()), d),
                                  d, float(np.mean(y)), scale)
        rows.append({**row, **sample, "effect": effect, "effect_low": effect_low, "effect_high": effect_high,
                     "ratio": effect if scale == "log" else float("nan"),
                     "diff": float(finite[stage].mean() - raw[np.isfinite(raw)].mean()), "n_layouts": len(x),
                     "percentile": float(np.mean(shares)), "percentile_min": float(np.min(shares)),
                     "percentile_max": float(np.max(shares)), "direction": d, "test": test_name})
    if not rows:
        return pd.DataFrame(columns=columns + ["mc_straddles"])
    table = pd.DataFrame(rows)
    table = _stable_holm(tests, table, settings)
    for index, test in tests.items():  # the interval from the final partitions: the test it inverts
        low, high = test.interval(CONFIDENCE)
        _, table.at[index, "effect_low"], table.at[index, "effect_high"] = back_difference(
            table.at[index, "direction"], low, high, float(np.mean(test.y)), table.at[index, "scale"])
        table.at[index, "p_mc_error"] = test.mc_error(table.at[index, "p"])
        table.at[index, "partitions"], table.at[index, "exact"] = test.partitions, test.exact
        kind = "exact" if test.exact else f"{test.partitions:,} resamples"
        table.at[index, "test"] += f" ({kind})"
    table["verdict"] = [_verdict(r) for r in table.itertuples()]
    return table[columns + ["mc_straddles"]]


def _on_metric_scale(sample: dict, d: float, mean_y: float, scale: str) -> dict:
    """An evaluation-sample check with its interval of the difference mapped to the effect's scale (a ratio for log
    metrics), as `eval_effect_low` / `eval_effect_high`."""
    out = {k: v for k, v in sample.items() if k not in ("eval_low", "eval_high")}
    _, out["eval_effect_low"], out["eval_effect_high"] = back_difference(d, sample["eval_low"], sample["eval_high"],
                                                                         mean_y, scale)
    return out


# the evaluation-sample check's columns in vs_reference's table
EVAL_COLUMNS = tuple(_on_metric_scale(NOT_RUN, float("nan"), float("nan"), "identity"))


def spread_ratio(x: np.ndarray, y: np.ndarray) -> float:
    """The strategy's sd over the reference's, on the test's scale."""
    return float(np.std(x, ddof=1) / np.std(y, ddof=1)) if len(x) > 1 and np.std(y) > 0 else float("nan")


def _verdict(r) -> str:
    if isinstance(getattr(r, "verdict_override", None), str):
        return r.verdict_override
    if r.n_reference < r.needed:
        return "too few reference layouts"
    if 1 < r.n_layouts < MIN_DISTINCT_LAYOUTS:
        return "too few distinct layouts"
    if not r.p_adj < ALPHA:
        return "no significant difference"
    # the layouts differ on these evaluation units, and another sample of units may not say so
    if r.eval_holds is not None and not pd.isna(r.eval_holds) and not r.eval_holds:
        return "not robust to the evaluation sample"
    return "better" if (r.direction > 0) == bool(r.higher) else "worse"


def seed_percentiles(trials: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per strategy trial and stage: its value and the share of reference layouts it beats (percentiles.csv)."""
    rows = []
    for r in ok_trials(trials).itertuples(index=False):
        higher = bool(r.higher_is_better) if pd.notna(r.higher_is_better) else False
        for stage in ("pruned", "recovered"):
            base = reference_values(reference, r.model, r.level, stage)
            if base.empty:
                continue
            value = getattr(r, stage)
            ranked = worst_for_nonfinite(base.to_numpy(float), higher)
            rows.append({"model": r.model, "label": r.label, "level": r.level, "seed": r.seed, "stage": stage,
                         "value": value, "percentile": percentile(value, ranked, higher),
                         "n_reference": len(base)})
    return pd.DataFrame(rows, columns=["model", "label", "level", "seed", "stage", "value", "percentile",
                                       "n_reference"])


def reference_notes(reference: pd.DataFrame) -> list[str]:
    """What the reference is per (model, level): draws, distinct layouts (duplicates said, never silently kept),
    recovered layouts, failures."""
    notes = []
    for (model, level), rows in reference.groupby(["model", "level"], sort=True):
        ok = ok_trials(rows)
        distinct = layout_keys(ok).nunique()
        recovered = len(reference_values(reference, model, level, "recovered"))
        fine_tuned = int(pd.to_numeric(ok["recovery_steps"], errors="coerce").fillna(0).gt(0).sum())
        text = (f"random reference for {model} at level {level:g}: {len(rows)} draws, {distinct} distinct layouts "
                f"after pruning; {fine_tuned} draws also recovered ({recovered} distinct layouts)")
        if distinct < len(ok):
            text += (f" ({len(ok) - distinct} draws repeated a layout and count once: this model has few layouts at "
                     "this level)")
        if len(ok) < len(rows):
            text += f"; {len(rows) - len(ok)} draws failed"
        notes.append(text)
    return notes
