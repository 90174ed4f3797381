"""Results tables: trial payloads -> `trials`, `curves`, `heads` Parquet tables with fixed pyarrow schemas.

Every column has an explicit type, so a table of failed rows (all metrics null) has the same schema as a
table of good ones. A `trials` row is built by `sentinel.trial.TrialResult.row()` (failed cells included);
this module adds only the run's context (CONTEXT_COLUMNS) and the schema.

Rows stream to storage while the grid runs: each flush writes one Parquet part per table under
`<output>/parts/<table>/`, and `compact` merges the parts (and any earlier compacted table) into
`<table>.parquet`, one row per trial_id, then removes the merged parts. A driver killed mid-grid leaves its
finished rows in the parts; the next run (`--resume`) compacts them and runs only the cells without a row.
Files are written atomically: a temp file then os.replace locally; one object PUT (which S3-like stores make
atomic) through pyarrow.fs for URIs. The schema is documented in docs/RESULTS.md; bump SCHEMA_VERSION on any
change that breaks a reader.
"""
from __future__ import annotations

import io
import json
import math
import types
import typing
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from orchestrator.storage import filesystem, write_bytes
from sentinel.result import CURVE_COLUMNS, METRIC_COLUMNS, TrialResult

SCHEMA_VERSION = 2  # 2: protocol_<key> columns replaced by `task` + `protocol_label` (the protocol stays as JSON)
# what the runner adds to TrialResult.row(): where and when the trial ran
CONTEXT_COLUMNS: dict[str, pa.DataType] = {
    "schema_version": pa.int32(), "experiment": pa.string(), "run_id": pa.string(), "tune_trial_id": pa.string(),
    "attempts": pa.int64(), "device_assigned": pa.string(), "gpu_ids": pa.string(), "cuda_visible_devices": pa.string(),
    "ray_node_id": pa.string(), "version_ray": pa.string(), "started_at": pa.timestamp("ms", tz="UTC"),
    "finished_at": pa.timestamp("ms", tz="UTC"),
}
TABLE_NAMES = ("trials", "curves", "heads", "metrics")


def arrow_type(annotation: Any) -> pa.DataType:
    """The Arrow type of a column from the Python annotation of its values (`X | None`: X; list[X]: list<X>)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return arrow_type(args[0])
    if typing.get_origin(annotation) is list:
        return pa.list_(arrow_type(args[0]))
    return {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}[annotation]


# One row per trial: the columns TrialResult declares (docs/RESULTS.md says what each means), then the context's.
TRIALS_SCHEMA = pa.schema([*[(name, arrow_type(t)) for name, t in TrialResult.columns().items()],
                           *CONTEXT_COLUMNS.items()])

# which trial a curve or head row belongs to
ROW_IDENTITY = [("schema_version", pa.int32()), ("experiment", pa.string()), ("run_id", pa.string()),
                ("trial_id", pa.string()), ("model", pa.string()), ("strategy", pa.string()), ("level", pa.float64()),
                ("seed", pa.int64())]
CURVES_SCHEMA = pa.schema([*ROW_IDENTITY, *[(name, arrow_type(t)) for name, t in CURVE_COLUMNS.items()]])

METRICS_SCHEMA = pa.schema([*ROW_IDENTITY, *[(name, arrow_type(t)) for name, t in METRIC_COLUMNS.items()]])
HEADS_SCHEMA = pa.schema([*ROW_IDENTITY, ("layer", pa.int64()), ("head", pa.int64()), ("score", pa.float64()),
                          ("pruned", pa.bool_())])


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def trial_row(payload: Mapping[str, Any]) -> dict[str, Any]:
    """One `trials` row: the trial's own row (TrialResult.row()) plus the runner's context columns."""
    ctx = payload.get("context", {})
    out = dict(payload["row"])
    out.update({name: ctx.get(name) for name in CONTEXT_COLUMNS})  # where and when it ran
    out["schema_version"] = SCHEMA_VERSION
    out["version_ray"] = ctx.get("ray_version")
    out["gpu_ids"], out["cuda_visible_devices"] = ctx.get("gpu_ids", ""), ctx.get("cuda_visible_devices", "")
    return out


def curve_rows(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    row, ctx = payload["row"], payload.get("context", {})
    identity = _identity(row, ctx)
    return [{**identity, **{key: _finite_or_none(point.get(key)) if kind is float else point.get(key)
                            for key, kind in CURVE_COLUMNS.items()}}
            for point in payload.get("curve") or []]


def head_rows(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    row, ctx = payload["row"], payload.get("context", {})
    pruned = {(int(l), int(h)) for l, h in row.get("pruned_heads") or []}
    identity = _identity(row, ctx)
    return [{**identity, "layer": layer, "head": head, "score": _finite_or_none(score), "pruned": (layer, head) in pruned}
            for layer, scores in enumerate(payload.get("scores") or [])
            for head, score in enumerate(scores)]


def metric_rows(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The extra evaluations of one trial (TrialResult.metrics), a row per stage and metric, protocol as JSON."""
    identity = _identity(payload["row"], payload.get("context", {}))
    return [{**identity, **{key: point.get(key) for key in METRIC_COLUMNS},
             "value": _finite_or_none(point.get("value")), "stderr": _finite_or_none(point.get("stderr")),
             "protocol": json.dumps(point.get("protocol") or {}, sort_keys=True, default=str)}
            for point in payload.get("metrics") or []]


def _identity(row: Mapping[str, Any], ctx: Mapping[str, Any]) -> dict[str, Any]:
    """The ROW_IDENTITY columns of a trial's curve and head rows."""
    return {"schema_version": SCHEMA_VERSION, "experiment": ctx.get("experiment"), "run_id": ctx.get("run_id"),
            **{name: row[name] for name in ("trial_id", "model", "strategy", "level", "seed")}}


def tables(payloads: Iterable[Mapping[str, Any]]) -> dict[str, pa.Table]:
    """The three tables from trial payloads, rows sorted by (model, strategy, seed, level)."""
    number = lambda v: -1 if v is None else v  # noqa: E731  (a refused cell may lack a seed or a level)
    payloads = sorted(payloads, key=lambda p: (p["row"]["model"], p["row"]["strategy"], number(p["row"]["seed"]),
                                               number(p["row"]["level"]), p["row"]["trial_id"]))
    trials = [trial_row(p) for p in payloads]
    curves = [r for p in payloads for r in curve_rows(p)]
    heads = [r for p in payloads for r in head_rows(p)]
    metrics = [r for p in payloads for r in metric_rows(p)]
    return {
        "trials": pa.Table.from_pylist(trials, schema=TRIALS_SCHEMA),
        "curves": pa.Table.from_pylist(curves, schema=CURVES_SCHEMA),
        "heads": pa.Table.from_pylist(heads, schema=HEADS_SCHEMA),
        "metrics": pa.Table.from_pylist(metrics, schema=METRICS_SCHEMA),
    }


def write_part(output_dir: str, payloads: list[Mapping[str, Any]], name: str) -> None:
    """Writes finished trials as one part per table: `<output>/parts/<table>/<name>.parquet` (atomic each)."""
    for table_name, table in tables(payloads).items():
        if table.num_rows:
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            write_bytes(f"{output_dir.rstrip('/')}/parts/{table_name}/{name}.parquet", buffer.getvalue())


def _files(output_dir: str, table: str) -> tuple[Any, list[str], str | None]:
    """(filesystem, part files, compacted file or None) of one table."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(output_dir.rstrip("/"))
    infos = fs.get_file_info(pafs.FileSelector(f"{inner}/parts/{table}", allow_not_found=True))
    parts = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    compacted = f"{inner}/{table}.parquet"
    return fs, parts, compacted if fs.get_file_info(compacted).type == pafs.FileType.File else None


def _read(fs: Any, paths: list[str], schema: pa.Schema) -> pa.Table:
    """The files as one table in `schema` (columns a file lacks are null; columns it has but `schema` lacks go)."""
    out = []
    for path in paths:
        table = pq.read_table(path, filesystem=fs)
        columns = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
                   for f in schema]
        out.append(pa.Table.from_arrays(columns, schema=schema))
    return pa.concat_tables(out) if out else schema.empty_table()


def finished_trials(output_dir: str) -> pa.Table:
    """Every trial row already stored for an experiment (compacted table and parts), before deduplication."""
    fs, parts, compacted = _files(output_dir, "trials")
    return _read(fs, ([compacted] if compacted else []) + parts, TRIALS_SCHEMA)


def latest_per_trial(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per trial_id (a resumed or repeated run): an ok row beats a failed one, then the newest."""
    order = trials.assign(_ok=trials["status"].eq("ok"), _t=trials.get("finished_at"))
    order = order.sort_values(["_ok", "_t"], na_position="first", kind="stable")
    return order.drop_duplicates("trial_id", keep="last").drop(columns=["_ok", "_t"]).sort_index()


def _run_keys(table: pa.Table) -> pa.Array:
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(pc.fill_null(table["trial_id"], ""), pc.fill_null(table["run_id"], ""), "|")


def compact(output_dir: str, config: Mapping[str, Any]) -> dict[str, str]:
    """Merges the parts (and the earlier compacted tables) into `<table>.parquet`, one row per trial_id, writes
    config.yaml, then deletes the merged parts. Curves, heads and metrics keep the rows of the kept trial rows' runs.

    Args:
        output_dir: `<output>/<experiment>`, a local folder or a URI.
        config: the resolved experiment spec (ExperimentSpec.to_dict()).
    Returns:
        table name -> path written.
    """
    import pyarrow.compute as pc

    schemas = {"trials": TRIALS_SCHEMA, "curves": CURVES_SCHEMA, "heads": HEADS_SCHEMA, "metrics": METRICS_SCHEMA}
    written, merged = {}, []
    kept_keys = None
    for name in TABLE_NAMES:
        fs, parts, compacted = _files(output_dir, name)
        table = _read(fs, ([compacted] if compacted else []) + parts, schemas[name])
        if name == "trials":
            frame = latest_per_trial(table.to_pandas()) if table.num_rows else table.to_pandas()
            frame = frame.sort_values(["model", "strategy", "seed", "level", "trial_id"], kind="stable")
            table = pa.Table.from_pandas(frame, schema=TRIALS_SCHEMA, preserve_index=False)
            kept_keys = _run_keys(table)
        else:
            table = table.filter(pc.is_in(_run_keys(table), value_set=kept_keys))
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        path = output_dir.rstrip("/") + f"/{name}.parquet"
        write_bytes(path, buffer.getvalue())
        written[name] = path
        merged += [(fs, p) for p in parts]
    path = output_dir.rstrip("/") + "/config.yaml"
    write_bytes(path, yaml.safe_dump(dict(config), sort_keys=False).encode())
    written["config"] = path
    for fs, part in merged:  # only after every table is written: a kill before this leaves duplicates, never gaps
        fs.delete_file(part)
    if merged:
        _remove_empty_parts_folders(output_dir)
    return written


def _remove_empty_parts_folders(output_dir: str) -> None:
    """Removes `parts/<table>/` folders that hold nothing now, then `parts/` if it holds nothing: never a folder
    with anything in it (another experiment may live there: `parts` with output `out/a` beside experiment `a` in
    `out`), so nothing this run did not write is deleted."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(output_dir.rstrip("/"))
    for folder in [f"{inner}/parts/{name}" for name in TABLE_NAMES] + [f"{inner}/parts"]:
        if fs.get_file_info(folder).type != pafs.FileType.Directory:
            continue
        if not fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
            fs.delete_dir(folder)
