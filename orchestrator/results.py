"""Results tables: trial records (sentinel.result.TrialRecord) -> `trials`, `curves`, `heads`, `metrics` Parquet
tables, their Arrow schemas derived from the columns sentinel.result declares, and the one dedupe rule.

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
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from orchestrator.storage import filesystem, write_bytes
from sentinel.result import KEY, TABLE_NAMES, EpochMs, Int32, TrialRecord, columns


def arrow_type(annotation: Any) -> pa.DataType:
    """The Arrow type of a column from the Python annotation of its values (`X | None`: X; list[X]: list<X>)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return arrow_type(args[0])
    if typing.get_origin(annotation) is list:
        return pa.list_(arrow_type(args[0]))
    return {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_(),
            Int32: pa.int32(), EpochMs: pa.timestamp("ms", tz="UTC")}[annotation]


def schema(table: str) -> pa.Schema:
    """The Arrow schema of one of the four tables, from its declaration (sentinel.result.columns): every column
    typed, so a table of failed rows (all metrics null) has the same schema as a table of good ones."""
    return pa.schema([(name, arrow_type(kind)) for name, kind in columns(table).items()])


def tables(records: Iterable[TrialRecord]) -> dict[str, pa.Table]:
    """The four tables from trial records, rows sorted by (model, strategy, seed, level)."""
    number = lambda v: -1 if v is None else v  # noqa: E731  (a refused cell may lack a seed or a level)
    records = sorted(records, key=lambda r: (r.row["model"], r.row["strategy"], number(r.row["seed"]),
                                             number(r.row["level"]), r.row["trial_id"]))
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLE_NAMES}
    for record in records:
        for name, table_rows in record.rows().items():
            rows[name] += table_rows
    return {name: pa.Table.from_pylist(rows[name], schema=schema(name)) for name in TABLE_NAMES}


def write_part(output_dir: str, records: list[TrialRecord], name: str) -> None:
    """Writes finished trials as one part per table: `<output>/parts/<table>/<name>.parquet` (atomic each)."""
    for table_name, table in tables(records).items():
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


# what one Parquet file may expand to in memory, rows x columns x 8 bytes: a results file is untrusted, and 1 MB of
# run-length-encoded Parquet can hold 4 x 10^7 rows (tens of GB once every column is materialised)
MAX_TABLE_BYTES = 2 * 2**30


class OversizedTable(ValueError):
    """A Parquet file whose footer claims more rows x columns than MAX_TABLE_BYTES allows."""


def read_bounded(path: str, fs: Any = None, width: int | None = None) -> pa.Table:
    """One Parquet file, read only after its footer's row count times `width` columns (default: its own) fits
    MAX_TABLE_BYTES at 8 bytes a value. Raises OversizedTable (one line with both numbers), or what pyarrow raises
    for a file that is not Parquet."""
    with (fs.open_input_file(path) if fs is not None else open(path, "rb")) as source:
        meta = pq.ParquetFile(source).metadata
        need = meta.num_rows * max(width or 0, meta.num_columns) * 8
        if need > MAX_TABLE_BYTES:
            raise OversizedTable(f"{path}: {meta.num_rows:,} rows x {max(width or 0, meta.num_columns)} columns would "
                                 f"take {need / 2**30:,.1f} GiB; at most {MAX_TABLE_BYTES / 2**30:,.0f} GiB are read")
        return pq.read_table(source)


def _read(fs: Any, paths: list[str], schema: pa.Schema, unreadable: list[str] | None = None) -> pa.Table:
    """The files as one table in `schema` (columns a file lacks are null; columns it has but `schema` lacks go).
    With `unreadable`, a file that is not readable Parquet (a part truncated by a kill, a foreign file) or that
    claims more rows than memory allows is skipped and named there instead of failing the whole read."""
    out = []
    for path in paths:
        try:
            table = read_bounded(path, fs, width=len(schema))
        except (pa.ArrowInvalid, OSError, OversizedTable):
            if unreadable is None:
                raise
            unreadable.append(path)
            continue
        columns = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
                   for f in schema]
        out.append(pa.Table.from_arrays(columns, schema=schema))
    return pa.concat_tables(out) if out else schema.empty_table()


def has_results(output_dir: str) -> bool:
    """Whether an experiment folder holds trial rows already (a compacted table or parts), without reading them."""
    _, parts, compacted = _files(output_dir, "trials")
    return bool(parts) or compacted is not None


def latest_per_trial(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per trial (KEY) across runs (a resumed or repeated run): an ok row beats a failed one, then the newest.
    The one dedupe rule: compaction and the analysis both apply it."""
    order = trials.assign(_ok=trials["status"].eq("ok"), _t=trials.get("finished_at"))
    order = order.sort_values(["_ok", "_t"], na_position="first", kind="stable")
    return order.drop_duplicates(KEY, keep="last").drop(columns=["_ok", "_t"]).sort_index()


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts (a resumed config, two runs' specs)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [field for key in sorted(set(old) | set(new))
                for field in changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []


def rows_of_kept_trials(table: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """The curve, head or metric rows that belong to a kept trial row: the same trial and, where both tables say, the
    same run (a trial run twice keeps the curve of the run whose row was kept)."""
    if table.empty:
        return table
    keys = [KEY, "run_id"] if "run_id" in set(table.columns) & set(trials.columns) else [KEY]
    kept = trials[keys].astype("string").fillna("").drop_duplicates()
    probe = table[keys].astype("string").fillna("")
    return table[pd.MultiIndex.from_frame(probe).isin(pd.MultiIndex.from_frame(kept))].reset_index(drop=True)


@dataclass
class Compacted:
    paths: dict[str, str]  # table name (and "config") -> path written
    status: dict[str, str]  # trial_id -> status of its kept row
    unreadable: list[str] = field(default_factory=list)  # parts that are not readable Parquet: left where they are


def compact(output_dir: str, config: Mapping[str, Any]) -> Compacted:
    """Merges the parts (and the earlier compacted tables) into `<table>.parquet`, one row per trial_id, writes
    config.yaml, then deletes the merged parts. Curves, heads and metrics keep the rows of the kept trial rows' runs.

    Args:
        output_dir: `<output>/<experiment>`, a local folder or a URI.
        config: the resolved experiment spec (ExperimentSpec.to_dict()).
    Returns:
        the paths written and the status of every kept trial.
    """
    written, merged, unreadable = {}, [], []
    trials = None
    for name in TABLE_NAMES:
        fs, parts, compacted = _files(output_dir, name)
        table_parts = _read(fs, parts, schema(name), unreadable)  # a truncated part must not block every resume
        earlier = _read(fs, [compacted], schema(name)) if compacted else schema(name).empty_table()
        frame = pa.concat_tables([earlier, table_parts]).to_pandas()
        if name == "trials":
            frame = latest_per_trial(frame) if len(frame) else frame
            trials = frame = frame.sort_values(["model", "strategy", "seed", "level", KEY], kind="stable")
        else:
            frame = rows_of_kept_trials(frame, trials)
        table = pa.Table.from_pandas(frame, schema=schema(name), preserve_index=False)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        path = output_dir.rstrip("/") + f"/{name}.parquet"
        write_bytes(path, buffer.getvalue())
        written[name] = path
        merged += [(fs, p) for p in parts if p not in unreadable]  # an unreadable part stays, never deleted
    path = output_dir.rstrip("/") + "/config.yaml"
    write_bytes(path, yaml.safe_dump(dict(config), sort_keys=False).encode())
    written["config"] = path
    for fs, part in merged:  # only after every table is written: a kill before this leaves duplicates, never gaps
        fs.delete_file(part)
    if merged:
        _remove_empty_parts_folders(output_dir)
    return Compacted(written, dict(zip(trials[KEY], trials["status"])), unreadable)


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
