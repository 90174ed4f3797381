"""Reading results: folders or Parquet files, local or URIs (s3://, file://) through pyarrow.fs, merged.

A results folder holds `trials.parquet` (required), `curves.parquet`, `heads.parquet` and `metrics.parquet`
(optional: a run without fine-tuning has no curves, one without extra_tasks no metrics) and `config.yaml`. A Parquet file given directly is classified by its
columns, so `trials.parquet` copied under another name still works. Every problem with an input raises
AnalyzeError with one line that names the file and says what is wrong.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import yaml

from orchestrator.config_file import MAX_CONFIG_BYTES, check_size
from orchestrator.results import OversizedTable, changed_fields, latest_per_trial, read_bounded, rows_of_kept_trials
from sentinel.result import TABLE_NAMES, Int32, columns, strategy_label, value_type
from sentinel.contract import SpecError
from sentinel.files import UnreadableFile, read_regular

SUPPORTED_SCHEMA_VERSIONS = (1, 2)  # sentinel.result.SCHEMA_VERSION values this reader understands
# columns without which a table cannot be analysed at all; everything else is optional and filled with NA
REQUIRED = {
    "trials": ("schema_version", "model", "strategy", "level", "seed", "status"),
    "curves": ("schema_version", "trial_id", "step", "eval_metric"),
    "heads": ("schema_version", "trial_id", "layer", "head", "score", "pruned"),
    "metrics": ("schema_version", "trial_id", "stage", "task", "metric", "value"),
}


def typed_columns(table: str) -> dict[str, str]:
    """The columns of `table` that must hold numbers ("numeric") or booleans ("boolean") where present, from the
    tables' declaration (sentinel.result.columns): a string there is refused, never blanked."""
    kinds = {int: "numeric", Int32: "numeric", float: "numeric", bool: "boolean"}
    return {name: kinds[value_type(t)] for name, t in columns(table).items() if value_type(t) in kinds}


def _is(value: object, kind: str) -> bool:
    import numbers

    import numpy as np

    if kind == "boolean":
        return isinstance(value, (bool, np.bool_))
    return isinstance(value, numbers.Number) and not isinstance(value, (bool, np.bool_))


def _has_type(column: pd.Series, kind: str) -> bool:
    if kind == "numeric" and pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return True
    if kind == "boolean" and pd.api.types.is_bool_dtype(column):
        return True
    return all(_is(v, kind) for v in column.dropna())  # object columns: nulls, or values of the right kind


class AnalyzeError(SpecError):
    """Bad input to analyze: a missing path, a file that is not Parquet, an unknown schema, an empty table."""


@dataclass
class Results:
    """All inputs merged: one DataFrame per table, plus what was read and what was noticed on the way."""

    trials: pd.DataFrame
    curves: pd.DataFrame
    heads: pd.DataFrame
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)  # extra evaluations (runs with extra_tasks)
    # the random reference's layouts (trial rows with `reference` true): what every strategy is tested against;
    # kept apart from `trials`, which holds the strategy cells
    reference: pd.DataFrame = field(default_factory=pd.DataFrame)
    sources: list[str] = field(default_factory=list)  # every file read
    configs: list[dict] = field(default_factory=list)  # config.yaml of each folder that had one
    notes: list[str] = field(default_factory=list)  # partial results, duplicates, missing tables


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI; pyarrow.fs reads s3://, gs://, file://."""
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise AnalyzeError(f"{path}: cannot open this URI ({_first_line(exc)})") from None
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _join(path: str, name: str) -> str:
    return path.rstrip("/") + "/" + name


def _read_parquet(path: str) -> pd.DataFrame:
    """One Parquet file as a DataFrame; AnalyzeError naming the file if it is missing or not Parquet."""
    fs, inner = _filesystem(path)
    name = path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet")
    try:  # sized as the table it becomes: every declared column of its kind (a lone file: the widest, trials)
        table = read_bounded(inner, fs, width=len(columns(name if name in TABLE_NAMES else "trials")))
    except FileNotFoundError:
        raise AnalyzeError(f"{path}: no such file") from None
    except OversizedTable as exc:
        raise AnalyzeError(str(exc).replace(inner, path, 1)) from None
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise AnalyzeError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    return table.to_pandas()


def _kind(path: str, df: pd.DataFrame) -> str:
    """Which table a DataFrame is, from its columns (layer/head -> heads, step -> curves, status -> trials)."""
    columns = set(df.columns)
    if {"layer", "head"} <= columns:
        return "heads"
    if {"stage", "metric"} <= columns:
        return "metrics"
    if "step" in columns:
        return "curves"
    if "status" in columns:
        return "trials"
    raise AnalyzeError(f"{path}: not a sentinel-bench results table (no status, step or layer/head columns)")


def _check(path: str, kind: str, df: pd.DataFrame) -> pd.DataFrame:
    """Validates one table: required columns, a schema_version this reader knows, at least one trial."""
    missing = [c for c in REQUIRED[kind] if c not in df.columns]
    if missing:
        raise AnalyzeError(f"{path}: {kind} table lacks column(s) {', '.join(missing)}")
    for column, kind_of in typed_columns(kind).items():
        if column in df.columns and not _has_type(df[column], kind_of):
            sample = next((v for v in df[column].dropna() if not _is(v, kind_of)), None)
            raise AnalyzeError(f"{path}: column {column!r} must be {kind_of}, found {type(sample).__name__} "
                               f"values such as {str(sample)[:40]!r}")
    if kind == "trials":
        _check_trial_values(path, df)
    try:
        versions = sorted({int(v) for v in df["schema_version"].dropna().unique()})
    except (TypeError, ValueError):
        raise AnalyzeError(f"{path}: column 'schema_version' must be an integer") from None
    unknown = [v for v in versions if v not in SUPPORTED_SCHEMA_VERSIONS]
    if unknown:
        supported = ", ".join(map(str, SUPPORTED_SCHEMA_VERSIONS))
        raise AnalyzeError(f"{path}: schema_version {unknown[0]} is not understood (this reader knows {supported})")
    if kind == "trials" and df.empty:
        raise AnalyzeError(f"{path}: trials table is empty (no trial finished)")
    return df


def _check_trial_values(path: str, df: pd.DataFrame) -> None:
    """Seeds are whole numbers and the metrics of finished trials finite: a seed of 0.5 or NaN would be truncated or
    crash the grouping, and an infinite perplexity averages into "inf [inf, inf]"."""
    import numpy as np

    seeds = pd.to_numeric(df["seed"], errors="coerce")
    bad = seeds[seeds.isna() | ~np.isfinite(seeds) | (seeds != seeds.round())]
    if len(bad):
        raise AnalyzeError(f"{path}: column 'seed' must hold whole numbers, found {df['seed'][bad.index[0]]}")
    for heads in df["pruned_heads"] if "pruned_heads" in df else []:
        if heads is not None and not _is_head_list(heads):
            raise AnalyzeError(f"{path}: column 'pruned_heads' must hold lists of [layer, head] integer pairs, found "
                               f"{str(heads)[:60]!r}")
    ok = df[df["status"].eq("ok")]
    for column in ("dense", "pruned", "recovered"):
        if column in ok:
            values = pd.to_numeric(ok[column], errors="coerce")
            infinite = values[np.isinf(values)]
            if len(infinite):
                raise AnalyzeError(f"{path}: column {column!r} holds {infinite.iloc[0]} in a finished trial; a finished "
                                   "trial's metric is finite (a run records a non-finite one as a failed trial)")


def _is_head_list(heads: object) -> bool:
    import numbers

    try:
        return all(len(pair) == 2 and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair)
                   for pair in heads)
    except TypeError:  # not a list of sequences
        return False


def _read_config(folder: str) -> dict | None:
    """config.yaml of a results folder, or None if there is none or it does not parse (it is only metadata)."""
    path = _join(folder, "config.yaml")
    try:
        if "://" in path:
            fs, inner = _filesystem(path)
            with fs.open_input_stream(inner) as f:
                text = f.read(MAX_CONFIG_BYTES + 1)[:MAX_CONFIG_BYTES]
        else:  # a FIFO or a link to /dev/zero here is not read (it would hang or never end)
            text = read_regular(path.removeprefix("file://"), MAX_CONFIG_BYTES)
        data = yaml.safe_load(text)
        check_size(data, folder)  # results are untrusted: a billion laughs here would expand when counted
    except (OSError, yaml.YAMLError, RecursionError, UnicodeDecodeError, SpecError, UnreadableFile):
        return None
    return data if isinstance(data, dict) else None


def _read_path(path: str, tables: dict[str, list[pd.DataFrame]], results: Results) -> None:
    """Adds the tables of one input (a results folder or one Parquet file) to `tables`."""
    fs, inner = _filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise AnalyzeError(f"{path}: no such file or folder")
    if info.type == pafs.FileType.Directory:
        trials_path = _join(path, "trials.parquet")
        if fs.get_file_info(_join(inner, "trials.parquet")).type == pafs.FileType.NotFound:
            raise AnalyzeError(f"{path}: no trials.parquet in this folder (is it a results folder?)")
        for name in TABLE_NAMES:
            file = _join(path, f"{name}.parquet")
            if name != "trials" and fs.get_file_info(_join(inner, f"{name}.parquet")).type == pafs.FileType.NotFound:
                if name != "metrics":  # only runs with extra_tasks (and since they exist) have metrics
                    results.notes.append(f"{path}: no {name}.parquet, so no {name} plots from it")
                continue
            tables[name].append(_check(file, name, _read_parquet(file)))
            results.sources.append(file if name != "trials" else trials_path)
        config = _read_config(path)
        if config is not None:
            results.configs.append(config)
        return
    df = _read_parquet(path)
    if df.empty and not len(df.columns):
        raise AnalyzeError(f"{path}: empty table (no columns, no rows)")
    kind = _kind(path, df)
    tables[kind].append(_check(path, kind, df))
    results.sources.append(path)


def _concat(frames: list[pd.DataFrame], kind: str) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=list(REQUIRED[kind]))
    return pd.concat(frames, ignore_index=True)


def _dedupe_trials(trials: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """One row per trial_id across runs (a resumed or repeated run): an ok row beats a failed one, then newest."""
    if "trial_id" not in trials.columns or trials["trial_id"].isna().all():
        return trials
    kept = latest_per_trial(trials)
    if len(kept) < len(trials):
        repeated = trials[trials.duplicated("trial_id", keep=False)]
        runs = sorted({str(r) for r in repeated["run_id"].dropna()}) if "run_id" in repeated else []
        notes.append(f"{len(trials) - len(kept)} duplicate trial row(s) (same trial_id in several runs"
                     f"{': ' + ', '.join(runs) if runs else ''}) were dropped, each trial counted once: an ok row is "
                     "kept over a failed one, then the newest")
    return kept.sort_index().reset_index(drop=True)


CELL_NAME = ("model", "label", "level", "seed", "method")  # what the analysis calls one cell of a strategy


def _one_spec_per_cell(trials: pd.DataFrame) -> None:
    """Refuses inputs where one strategy cell (CELL_NAME) has rows of different specs: two runs of the same cells
    under another protocol (other data, recovery or options) would otherwise become two samples of one cell. The
    same spec in several runs has one trial_id and was merged already."""
    if "trial_id" not in trials or trials["trial_id"].isna().all():
        return
    cells = trials[~trials["reference"]]
    counts = cells.groupby(list(CELL_NAME), dropna=False)["trial_id"].nunique()
    clashing = counts[counts > 1]
    if clashing.empty:
        return
    name = dict(zip(CELL_NAME, clashing.index[0]))
    rows = cells.groupby(list(CELL_NAME), dropna=False).get_group(clashing.index[0]).drop_duplicates("trial_id")
    differ = _differing_keys([_spec(v) for v in rows["spec"]]) if "spec" in rows else []
    runs = sorted({str(r) for r in rows.get("run_id", pd.Series(dtype=str)).dropna()})
    raise AnalyzeError(
        f"{name['model']} {name['label']} at level {name['level']:g}, seed {name['seed']}: {len(rows)} different specs "
        f"in the inputs{' (runs ' + ', '.join(runs) + ')' if runs else ''}"
        f"{', differing in ' + ', '.join(differ) if differ else ''}; analyze runs of one protocol together "
        f"({len(clashing)} cell(s) clash)")


def _spec(value: object) -> dict:
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _differing_keys(specs: list[dict]) -> list[str]:
    """The (dotted) keys whose values are not the same in every spec."""
    return sorted({key for spec in specs[1:] for key in changed_fields(specs[0], spec)})


def _normalise_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Types and defaults the analysis relies on, for tables written by other tools or older runs."""
    trials = trials.copy()
    kinds = typed_columns("trials")
    for column, kind in kinds.items():  # numbers as numbers: a column of nulls reads as objects
        if kind == "numeric" and column in trials:
            trials[column] = pd.to_numeric(trials[column], errors="coerce")
    trials["level"] = trials["level"].astype(float)
    trials["seed"] = trials["seed"].astype("int64")
    compensate = trials["compensate"] if "compensate" in trials else [False] * len(trials)
    trials["compensate"] = [c is True or c == 1 for c in compensate]  # older tables: none was compensated
    reference = trials["reference"] if "reference" in trials else [False] * len(trials)
    trials["reference"] = [r is True or r == 1 for r in reference]  # older tables: no random reference
    if "pruned_heads" not in trials:
        trials["pruned_heads"] = None
    if "policy" not in trials:
        trials["policy"] = "global"
    for column in columns("trials"):  # any other column older tables lack is there, empty
        if column not in trials:
            trials[column] = float("nan") if kinds.get(column) == "numeric" else pd.NA
    trials["label"] = [strategy_label(s, o, c, p) for s, o, c, p in zip(trials["strategy"], trials["strategy_options"],
                                                                        trials["compensate"], trials["policy"])]
    return trials


def load(paths: list[str] | str) -> Results:
    """Reads and merges results folders and Parquet files.

    Args:
        paths: results folders (with trials.parquet, optionally curves/heads.parquet and config.yaml) or
            Parquet files, local paths or URIs (s3://bucket/prefix, file:///abs/path).
    Returns:
        Results with the merged trials (one row per trial_id, a `label` column added), curves and heads.
    Raises:
        AnalyzeError: one line naming the input and what is wrong with it.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise AnalyzeError("no results given: pass one or more results folders or Parquet files")
    results = Results(pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    tables: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLE_NAMES}
    for path in paths:
        _read_path(str(path), tables, results)
    if not tables["trials"]:
        raise AnalyzeError(f"{', '.join(map(str, paths))}: no trials table among the inputs (only curves/heads)")
    trials = _normalise_trials(_dedupe_trials(_concat(tables["trials"], "trials"), results.notes))
    _one_spec_per_cell(trials)
    results.reference = trials[trials["reference"]].reset_index(drop=True)
    results.trials = trials = trials[~trials["reference"]].reset_index(drop=True)
    if results.trials.empty:
        raise AnalyzeError(f"{', '.join(map(str, paths))}: only random-reference layouts, no strategy trial")
    results.curves = _with_trial_columns(rows_of_kept_trials(_concat(tables["curves"], "curves"), trials), results.trials)
    results.heads = _with_trial_columns(rows_of_kept_trials(_concat(tables["heads"], "heads"), trials), results.trials)
    metrics = rows_of_kept_trials(_concat(tables["metrics"], "metrics"), trials)
    labels = results.trials[["trial_id", "label", "status"]].drop_duplicates("trial_id")
    results.metrics = metrics.drop(columns=[c for c in ("label", "status") if c in metrics]).merge(labels, on="trial_id")
    return results


def _with_trial_columns(table: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Adds the trial's label, metric and protocol to curve/head rows (one trial row per trial_id now)."""
    columns = ["trial_id", "label", "metric_name", "higher_is_better", "dense", "model", "strategy", "level", "seed"]
    extra = [c for c in trials.columns if c.startswith("protocol")]
    own = trials[columns + extra].drop_duplicates("trial_id")
    table = table.drop(columns=[c for c in columns[1:] + extra if c in table.columns])
    return table.merge(own, on="trial_id", how="left")
