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
import math
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from orchestrator.storage import filesystem, write_bytes
from sentinel.contract import STAGES

SCHEMA_VERSION = 2  # 2: protocol_<key> columns replaced by `task` + `protocol_label` (the protocol stays as JSON)
VERSION_KEYS = ("sentinel_bench", "torch", "transformers", "ray", "python")
# what the runner adds to TrialResult.row(): where and when the trial ran
CONTEXT_COLUMNS = ("schema_version", "experiment", "run_id", "tune_trial_id", "attempts", "device_assigned", "gpu_ids",
                   "cuda_visible_devices", "ray_node_id", "version_ray", "started_at", "finished_at")
TABLE_NAMES = ("trials", "curves", "heads")

TRIALS_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("experiment", pa.string()),
        ("run_id", pa.string()),
        ("trial_id", pa.string()),  # digest of the TrialSpec: same spec, same id, across runs
        ("tune_trial_id", pa.string()),
        ("model", pa.string()),
        ("architecture", pa.string()),
        ("strategy", pa.string()),
        ("strategy_options", pa.string()),  # JSON object
        ("level", pa.float64()),
        ("seed", pa.int64()),
        ("method", pa.string()),
        ("compensate", pa.bool_()),  # bias compensation on removal
        ("policy", pa.string()),
        ("status", pa.string()),  # "ok" or "failed"
        ("error", pa.string()),
        ("attempts", pa.int64()),
        ("heads_total", pa.int64()),
        ("heads_pruned", pa.int64()),
        ("pruned_heads", pa.list_(pa.list_(pa.int64()))),  # [[layer, head], ...] in the dense layout
        ("selection_notes", pa.list_(pa.string())),
        ("weights", pa.string()),  # where the weights came from, e.g. "gguf Q4_1 (...), dequantised to float32"
        ("params_before", pa.int64()),
        ("params_after", pa.int64()),
        ("flops_before", pa.float64()),  # forward FLOPs of one seq_len sequence, dense and pruned
        ("flops_after", pa.float64()),
        ("ideal_speedup", pa.float64()),  # flops_before / flops_after: what the removed heads' compute allows
        ("metric_name", pa.string()),
        ("higher_is_better", pa.bool_()),
        ("metric_scale", pa.string()),  # log | atanh | identity: the scale seeds are averaged and tested on
        ("dense", pa.float64()),
        ("dense_full", pa.float64()),  # the dense model on the whole eval split, once per model and run
        ("pruned", pa.float64()),
        ("recovered", pa.float64()),
        ("task", pa.string()),  # the evaluation task (sentinel.tasks): perplexity, stsb, ...
        ("protocol_label", pa.string()),  # the task's one-line description of its protocol
        ("protocol", pa.string()),  # the full protocol as JSON
        ("speed_before", pa.float64()),  # forward tokens/s
        ("speed_after", pa.float64()),
        ("speed_quiet", pa.bool_()),  # no other trial computed on the node while speed was measured
        *[(f"time_{stage}", pa.float64()) for stage in STAGES],
        ("time_total", pa.float64()),
        ("reused_baseline", pa.bool_()),
        ("reused_scores", pa.bool_()),
        ("reused_pruned_eval", pa.bool_()),  # the pruned metric came from another cell with the same layout
        ("reused_speed", pa.bool_()),
        ("device", pa.string()),  # where the trial ran ("cpu", "cuda:0", "cuda:0 bf16")
        ("device_assigned", pa.string()),  # what Ray's assignment calls for: "cuda" when it gave the trial a GPU
        ("gpu_ids", pa.string()),  # GPUs Ray assigned to the trial (comma-separated), "" if none
        ("cuda_visible_devices", pa.string()),
        ("node", pa.string()),
        ("ray_node_id", pa.string()),  # Ray's node id (hex): distinct per Ray node, also on one host
        *[(f"version_{k}", pa.string()) for k in VERSION_KEYS],
        ("started_at", pa.timestamp("ms", tz="UTC")),
        ("finished_at", pa.timestamp("ms", tz="UTC")),
        ("spec", pa.string()),  # the TrialSpec as JSON (TrialSpec.from_dict(json.loads(spec)) rebuilds it)
    ]
)

CURVES_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int32()), ("experiment", pa.string()), ("run_id", pa.string()),
        ("trial_id", pa.string()), ("model", pa.string()), ("strategy", pa.string()), ("level", pa.float64()),
        ("seed", pa.int64()), ("step", pa.int64()), ("train_loss", pa.float64()), ("eval_metric", pa.float64()),
        ("lr", pa.float64()),
    ]
)

HEADS_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int32()), ("experiment", pa.string()), ("run_id", pa.string()),
        ("trial_id", pa.string()), ("model", pa.string()), ("strategy", pa.string()), ("seed", pa.int64()),
        ("level", pa.float64()), ("layer", pa.int64()), ("head", pa.int64()), ("score", pa.float64()),
        ("pruned", pa.bool_()),
    ]
)


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def trial_row(payload: Mapping[str, Any]) -> dict[str, Any]:
    """One `trials` row: the trial's own row (TrialResult.row()) plus the runner's context columns."""
    ctx = payload.get("context", {})
    out = dict(payload["row"])
    out.update({name: ctx.get(name) for name in CONTEXT_COLUMNS})
    out["schema_version"] = SCHEMA_VERSION
    out["version_ray"] = ctx.get("ray_version")
    out["gpu_ids"], out["cuda_visible_devices"] = ctx.get("gpu_ids", ""), ctx.get("cuda_visible_devices", "")
    return out


def curve_rows(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    row, ctx = payload["row"], payload.get("context", {})
    return [
        {"schema_version": SCHEMA_VERSION, "experiment": ctx.get("experiment"), "run_id": ctx.get("run_id"),
         "trial_id": row["trial_id"], "model": row["model"], "strategy": row["strategy"], "level": row["level"],
         "seed": row["seed"], "step": point.get("step"), "train_loss": _finite_or_none(point.get("train_loss")),
         "eval_metric": _finite_or_none(point.get("eval_metric")), "lr": _finite_or_none(point.get("lr"))}
        for point in payload.get("curve") or []
    ]


def head_rows(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    row, ctx = payload["row"], payload.get("context", {})
    pruned = {(int(l), int(h)) for l, h in row.get("pruned_heads") or []}
    return [
        {"schema_version": SCHEMA_VERSION, "experiment": ctx.get("experiment"), "run_id": ctx.get("run_id"),
         "trial_id": row["trial_id"], "model": row["model"], "strategy": row["strategy"], "seed": row["seed"],
         "level": row["level"], "layer": layer, "head": head, "score": _finite_or_none(score),
         "pruned": (layer, head) in pruned}
        for layer, scores in enumerate(payload.get("scores") or [])
        for head, score in enumerate(scores)
    ]


def tables(payloads: Iterable[Mapping[str, Any]]) -> dict[str, pa.Table]:
    """The three tables from trial payloads, rows sorted by (model, strategy, seed, level)."""
    number = lambda v: -1 if v is None else v  # noqa: E731  (a refused cell may lack a seed or a level)
    payloads = sorted(payloads, key=lambda p: (p["row"]["model"], p["row"]["strategy"], number(p["row"]["seed"]),
                                               number(p["row"]["level"]), p["row"]["trial_id"]))
    trials = [trial_row(p) for p in payloads]
    curves = [r for p in payloads for r in curve_rows(p)]
    heads = [r for p in payloads for r in head_rows(p)]
    return {
        "trials": pa.Table.from_pylist(trials, schema=TRIALS_SCHEMA),
        "curves": pa.Table.from_pylist(curves, schema=CURVES_SCHEMA),
        "heads": pa.Table.from_pylist(heads, schema=HEADS_SCHEMA),
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
    config.yaml, then deletes the merged parts. Curves and heads keep the rows of the kept trial rows' runs.

    Args:
        output_dir: `<output>/<experiment>`, a local folder or a URI.
        config: the resolved experiment spec (ExperimentSpec.to_dict()).
    Returns:
        table name -> path written.
    """
    import pyarrow.compute as pc

    schemas = {"trials": TRIALS_SCHEMA, "curves": CURVES_SCHEMA, "heads": HEADS_SCHEMA}
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
    fs, inner = filesystem(output_dir.rstrip("/"))
    if merged and not any(_files(output_dir, name)[1] for name in TABLE_NAMES):
        fs.delete_dir(f"{inner}/parts")  # nothing left unmerged (a compaction runs while no trial streams)
    return written
