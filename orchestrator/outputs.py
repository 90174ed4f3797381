"""The results folder a run writes into: checked against --resume/--overwrite before Ray starts, locked while a run
writes, its saved spec compared on resume, and the streamed parts compacted into the tables at the end.

Resuming does not restore Tune's state: the stored rows say which cells are done (trials are not checkpointed,
so Tune would re-run an unfinished one from the start anyway). `--resume` compacts what a killed driver left,
checks the config against the saved one (only added cells are allowed), and runs the cells without a row.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time
from typing import Any, Iterator


from orchestrator.results import Compacted, changed_fields, compact, has_results
from orchestrator.spec import ExperimentSpec, SpecError
from orchestrator.storage import filesystem, is_uri, read_text, write_bytes
from sentinel.files import UnreadableFile, read_regular
from sentinel.result import TABLE_NAMES, digest
from sentinel.trial import TrialSpec


SPEC_FILE = "sentinel_spec.json"  # the resolved spec, beside the results: what --resume compares against


LOCK_FILE = ".sentinel.lock"  # held by the run writing into an output folder (created exclusively)


def prepare(spec: ExperimentSpec, resume: bool, overwrite: bool, run_id: str) -> bool:
    """Checks the results folder against --resume/--overwrite before Ray starts, and records the spec.

    --resume refuses a config that differs from the saved one, with one line naming what changed, unless the
    change only adds cells (more seeds, levels, strategies or models): the finished cells stay, the new ones
    run. Anything else would mix two experiments in one table.

    --overwrite deletes only what this experiment wrote: the tables and parts of a folder that holds its saved
    spec, and the Tune folders of the runs that spec records. A folder with tables but no saved spec (written
    by something else) is refused, never deleted; so is a Tune folder no recorded run made.

    Returns:
        whether the saved spec is new (this run created it: the caller removes it if nothing then ran).
    """
    out = spec.output_dir
    try:
        saved_text = read_text(f"{out}/{SPEC_FILE}")
    except (UnreadableFile, UnicodeDecodeError) as exc:  # a FIFO, a link to /dev/zero, bytes: never read on
        raise SpecError(f"output: {out}/{SPEC_FILE} is not a saved experiment spec ({exc}); not touching {out!r}: "
                        "move it, or choose another output") from None
    saved = _saved_spec(saved_text, out) if saved_text is not None else None
    exists = saved is not None or has_results(out)
    if resume and not exists:
        raise SpecError(f"--resume: no experiment at {out!r} to resume; run without --resume")
    if resume and saved is not None:
        _check_resumable(saved, spec)
    runs = list(saved.get("runs", [])) if saved and resume else []
    if exists and not resume:
        if not overwrite:
            raise SpecError(f"experiment: {spec.experiment!r} already has results at {out!r}; "
                            "pass --resume to continue it or --overwrite to start again")
        if saved is None:
            raise SpecError(f"--overwrite: {out!r} holds result tables that no sentinel-bench run recorded "
                            f"(no {SPEC_FILE}); they are not deleted: move them, or choose another output")
        _delete_results(out, [r for r in saved.get("runs", []) if isinstance(r, str)])
        storage, name = spec.tune_location
        for run in saved.get("runs", []):  # Tune state of the runs this experiment made, nothing else
            if isinstance(run, str) and run.startswith(f"{spec.experiment}-") and "/" not in run:
                delete_path(f"{storage.rstrip('/')}/{name}/{run}", folder=True)
    saved_spec = {"spec": spec.to_dict(), "cells": [c.to_dict() for c in spec.cells], "runs": runs + [run_id]}
    write_bytes(f"{out}/{SPEC_FILE}", json.dumps(saved_spec, sort_keys=True, default=str).encode())
    return saved is None


def _saved_spec(text: str, out: str) -> dict[str, Any]:
    try:
        saved = json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # the file is untrusted: nested past Python's stack is refused too
        saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get("spec"), dict) or not isinstance(saved.get("cells"), list):
        raise SpecError(f"output: {out}/{SPEC_FILE} is not a saved experiment spec; not touching {out!r}: "
                        "move it, or choose another output")
    return saved


def _delete_results(out: str, runs: list[str]) -> None:
    """What --overwrite replaces, by the experiment's manifest: its tables, config.yaml and saved spec, and the part
    files its recorded runs wrote (`parts/<table>/<run id>-NNNNNN.parquet`, the only names a run gives its parts),
    then the part folders left empty. Nothing else: another experiment may live in `<out>/parts/` (experiment `parts`
    with output `<out>`'s parent), and a link is removed as a link, never followed (an `analysis/` folder is
    rewritten later)."""
    for table in TABLE_NAMES:
        for part in _listed(f"{out}/parts/{table}"):
            if any(part.startswith(f"{run}-") for run in runs) and _PART.fullmatch(part.rsplit("-", 1)[-1]):
                delete_path(f"{out}/parts/{table}/{part}")
        _remove_if_empty(f"{out}/parts/{table}")
    _remove_if_empty(f"{out}/parts")
    for name in [f"{table}.parquet" for table in TABLE_NAMES] + ["config.yaml", SPEC_FILE]:
        delete_path(f"{out}/{name}")


_PART = re.compile(r"\d{6}\.parquet")


def _listed(folder: str) -> list[str]:
    """The names of the regular files directly in `folder` (nothing through a link: a linked folder lists nothing)."""
    if is_uri(folder):
        import pyarrow.fs as pafs

        fs, inner = filesystem(folder)
        infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
        return [i.base_name for i in infos if i.type == pafs.FileType.File]
    if os.path.islink(folder) or not os.path.isdir(folder):
        return []
    with os.scandir(folder) as entries:
        return [e.name for e in entries if e.is_file(follow_symlinks=False)]


def _remove_if_empty(folder: str) -> None:
    """Removes a folder that holds nothing (a link or a folder with anything in it stays)."""
    if is_uri(folder):
        import pyarrow.fs as pafs

        fs, inner = filesystem(folder)
        if (fs.get_file_info(inner).type == pafs.FileType.Directory
                and not fs.get_file_info(pafs.FileSelector(inner, recursive=True))):
            fs.delete_dir(inner)
        return
    if not os.path.islink(folder):
        with contextlib.suppress(OSError):  # not empty, or absent
            os.rmdir(folder)


def delete_path(path: str, folder: bool = False) -> None:
    """Deletes a file (or a folder of this run's own, e.g. its Tune folder); a local link is unlinked, never followed."""
    if not is_uri(path) and os.path.islink(path.removeprefix("file://")):
        with contextlib.suppress(OSError):
            os.unlink(path.removeprefix("file://"))
        return
    fs, inner = filesystem(path)
    try:
        fs.delete_dir(inner) if folder else fs.delete_file(inner)
    except (FileNotFoundError, OSError):
        pass


@contextlib.contextmanager
def output_lock(out: str) -> Iterator[None]:
    """Holds `<out>/.sentinel.lock`, created exclusively, while a run writes into `out`: a second run into the
    same folder is refused before Ray starts. A lock left by a process of this host that is gone is taken
    over. Object stores have no exclusive create: for s3:// and other URIs there is no lock (docs/SECURITY.md)."""
    if is_uri(out):
        yield
        return
    created = not os.path.isdir(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:  # a full disk, or a link that appeared since validation
        raise SpecError(f"output: cannot create {out!r} ({exc.strerror or exc}); nothing was started") from None
    path = os.path.join(out, LOCK_FILE)
    if os.path.isdir(path) or os.path.islink(path):
        raise SpecError(f"output: {path!r} is a folder or a link where this run's lock file goes; remove it")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is None:  # its process is gone: a stale lock
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            raise SpecError(f"output: another run (pid {holder.get('pid')} on {holder.get('host')}, since "
                            f"{holder.get('since')}) is writing to {out!r}; wait for it to end, or use another "
                            "output or experiment name") from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
        except OSError as exc:  # a full disk: say so in one line and leave no empty lock behind
            with contextlib.suppress(OSError):
                os.unlink(path)
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(out)
            raise SpecError(f"output: cannot write to {out!r} ({exc.strerror or exc}); nothing was started") from None
        break
    else:
        raise SpecError(f"output: could not take the lock {path!r}; another run is starting there")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out)  # only if empty: a run refused before writing leaves nothing behind


def _lock_holder(path: str) -> dict[str, Any] | None:
    """Who holds the lock, or None when it is stale (its process on this host is gone, or the file is unreadable)."""
    try:
        holder = json.loads(read_regular(path, 4096))  # a FIFO planted here is refused, never waited on
        pid = int(holder["pid"])
    except UnreadableFile:
        raise SpecError(f"output: {path!r} is not a lock file (a FIFO, device or folder); remove it") from None
    except (OSError, ValueError, KeyError, TypeError):
        try:  # a lock another run created an instant ago may not hold its JSON yet: young means held
            young = time.time() - os.path.getmtime(path) < 10
        except OSError:
            young = False
        return {"pid": "?", "host": "?", "since": "a moment ago"} if young else None
    if holder.get("host") != socket.gethostname():
        return holder  # another host's process: cannot tell, so it holds
    if pid <= 0:  # os.kill(0, ...) signals our own process group: it would always look alive
        return None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a pid no process can have (10**12)
        return None
    except PermissionError:
        pass
    return holder


def _check_resumable(saved: dict[str, Any], spec: ExperimentSpec) -> None:
    """A SpecError naming the changed fields (`finetune.steps`, ...) unless `spec` only adds cells to the saved one."""
    current = json.loads(json.dumps(spec.to_dict(), sort_keys=True, default=str))
    changed = changed_fields(saved["spec"], current)
    if not changed:
        return
    # cells compared by their trial ids: a field a later release added at its default (which the saved cells lack)
    # changes neither an id nor whether the grid still holds every finished cell
    old_cells = {digest(TrialSpec.identity_dict(c)) for c in saved["cells"] if isinstance(c, dict)}
    if old_cells <= {c.trial_id() for c in spec.cells}:
        return  # more seeds, levels, strategies or models: every finished cell is still a cell of this grid
    raise SpecError(f"--resume: the config changed since the experiment started ({', '.join(changed)}); "
                    "resume with the original config, add cells only, or start again with --overwrite")


class ResultsWriteError(OSError):
    """The final tables could not be written; the finished rows are kept in parts (the message says where)."""


def compact_results(out: str, spec: ExperimentSpec, unwritten: int = 0) -> Compacted:
    """compact(), with a failed write said in one line: the parts are deleted only after every table is written,
    so the rows stay where they are and --resume picks them up."""
    try:
        compacted = compact(out, spec.to_dict())
    except OSError as exc:
        lost = f"; {unwritten} finished row(s) could not be written at all" if unwritten else ""
        raise ResultsWriteError(
            f"results: could not write the tables in {out} ({exc.strerror or type(exc).__name__}); the rows "
            f"already streamed are kept in {out}/parts{lost}: make the folder writable and rerun with --resume"
        ) from None
    if compacted.unreadable:  # a part truncated by a kill: its rows are not there, so its trials run again
        print(f"results: {len(compacted.unreadable)} part(s) are not readable Parquet and were left where they are, "
              f"unmerged ({compacted.unreadable[0]}{', ...' if len(compacted.unreadable) > 1 else ''}); the trials "
              "whose rows they held have no row and run again", file=sys.stderr)
    return compacted
