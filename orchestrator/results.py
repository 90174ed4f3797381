"""Results tables: trial payloads -> `trials`, `curves`, `heads` Parquet tables with fixed pyarrow schemas.

Every column has an explicit type, so a table of failed rows (all metrics null) has the same schema as a
table of good ones. Files are written atomically: a temp file then os.replace locally; one object PUT (which
S3-like stores make atomic) through pyarrow.fs for URIs. The schema is documented in docs/RESULTS.md; bump
SCHEMA_VERSION on any change that breaks a reader.
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

SCHEMA_VERSION = 1
STAGES = ("load", "baseline", "score", "select", "prune", "eval_pruned", "speed", "finetune")
PROTOCOL_KEYS = {"dataset": pa.string(), "split": pa.string(), "seq_len": pa.int64(), "stride": pa.int64(),
                 "tokens": pa.int64(), "windows": pa.int64(), "pairs": pa.int64(), "sample": pa.string(),
                 "sample_seed": pa.int64()}
VERSION_KEYS = ("sentinel_bench", "torch", "transformers", "ray", "python")

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
        ("pruned", pa.float64()),
        ("recovered", pa.float64()),
        *[(f"protocol_{k}", t) for k, t in PROTOCOL_KEYS.items()],
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


def _ratio(a: Any, b: Any) -> float | None:
    a, b = _finite_or_none(a), _finite_or_none(b)
    return a / b if a is not None and b else None


def trial_row(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Flattens one trial payload (TrialResult.row() plus the trainable's context) into a `trials` row."""
    row = dict(payload["row"])
    ctx = payload.get("context", {})
    protocol = row.get("protocol") or {}
    timings = row.get("timings") or {}
    reused = row.get("reused") or {}
    versions = dict(row.get("versions") or {})
    versions.setdefault("ray", ctx.get("ray_version"))
    out = {
        "schema_version": SCHEMA_VERSION,
        "experiment": ctx.get("experiment"),
        "run_id": ctx.get("run_id"),
        "tune_trial_id": ctx.get("tune_trial_id"),
        "attempts": ctx.get("attempts"),
        "gpu_ids": ctx.get("gpu_ids", ""),
        "device_assigned": ctx.get("device_assigned"),
        "cuda_visible_devices": ctx.get("cuda_visible_devices", ""),
        "ray_node_id": ctx.get("ray_node_id"),
        "started_at": ctx.get("started_at"),
        "finished_at": ctx.get("finished_at"),
        "protocol": json.dumps(protocol, sort_keys=True, default=str),
        "time_total": sum(v for v in timings.values() if isinstance(v, (int, float))) if timings else None,
        "reused_baseline": reused.get("baseline"),
        "reused_scores": reused.get("scores"),
        "reused_pruned_eval": reused.get("pruned_eval"),
        "reused_speed": reused.get("speed"),
        "ideal_speedup": _ratio(row.get("flops_before"), row.get("flops_after")),
        "pruned_heads": [list(map(int, p)) for p in row.get("pruned_heads") or []],
        "selection_notes": [str(n) for n in row.get("selection_notes") or []],
    }
    for key in PROTOCOL_KEYS:
        out[f"protocol_{key}"] = protocol.get(key)
    for stage in STAGES:
        out[f"time_{stage}"] = timings.get(stage)
    for key in VERSION_KEYS:
        out[f"version_{key}"] = versions.get(key)
    for name in TRIALS_SCHEMA.names:
        if name not in out:
            out[name] = row.get(name)
    for name in ("dense", "pruned", "recovered", "speed_before", "speed_after", "flops_before", "flops_after"):
        out[name] = _finite_or_none(out[name])
    if out["status"] != "ok":
        # a failed trial did not measure anything: nulls, not the dataclass's zero defaults
        for name in ("heads_total", "heads_pruned", "params_before", "params_after"):
            out[name] = out[name] or None
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
    payloads = sorted(payloads, key=lambda p: (p["row"]["model"], p["row"]["strategy"], p["row"]["seed"],
                                               p["row"]["level"], p["row"]["trial_id"]))
    trials = [trial_row(p) for p in payloads]
    curves = [r for p in payloads for r in curve_rows(p)]
    heads = [r for p in payloads for r in head_rows(p)]
    return {
        "trials": pa.Table.from_pylist(trials, schema=TRIALS_SCHEMA),
        "curves": pa.Table.from_pylist(curves, schema=CURVES_SCHEMA),
        "heads": pa.Table.from_pylist(heads, schema=HEADS_SCHEMA),
    }


def write_bytes(path: str, data: bytes) -> None:
    """Writes a file atomically: temp file + os.replace locally, one object PUT via pyarrow.fs for URIs."""
    if "://" in path and not path.startswith("file://"):
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(inner) as out:
            out.write(data)
        return
    path = path.removeprefix("file://")
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_results(output_dir: str, payloads: Iterable[Mapping[str, Any]], config: Mapping[str, Any]) -> dict[str, str]:
    """Writes trials/curves/heads Parquet and the resolved config.yaml into `output_dir`.

    Args:
        output_dir: `<output>/<experiment>`, a local folder or a URI (s3://bucket/prefix/experiment).
        payloads: what each trial reported (see orchestrator.runner), failed trials included.
        config: the resolved experiment spec (ExperimentSpec.to_dict()).
    Returns:
        table name -> path written.
    """
    written = {}
    for name, table in tables(payloads).items():
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        path = output_dir.rstrip("/") + f"/{name}.parquet"
        write_bytes(path, buffer.getvalue())
        written[name] = path
    path = output_dir.rstrip("/") + "/config.yaml"
    write_bytes(path, yaml.safe_dump(dict(config), sort_keys=False).encode())
    written["config"] = path
    return written
