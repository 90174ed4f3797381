"""Computes the shipped models' whole-split references once, with the pipeline's own code, into the values the package
ships (sentinel/reference/work_cache.json; sentinel.work_cache reads them when every part of the key matches).

    python scripts/seed_work_cache.py [CONFIG ...]     # default: configs/default.yaml configs/comparison.yaml

For each model of each config whose data asks for `whole_split_reference`, it loads the dense model and prepares the
task exactly as a trial does (sentinel.pipeline), computes the metric on the whole eval split in a fresh cache, and
adds that entry (value, key, provenance: date, machine, versions) to the shipped file. Entries of other keys stay.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=["configs/default.yaml", "configs/comparison.yaml"])
    args = parser.parse_args()
    os.environ["SENTINEL_CACHE"] = tempfile.mkdtemp(prefix="sentinel-seed-")  # computed now, never read back

    from orchestrator.spec import load_spec
    from sentinel import work_cache
    from sentinel.files import write_file
    from sentinel.pipeline import LocalShared, _record_baseline, cached_task, dense_model
    from sentinel.eval import resolve_device
    from sentinel.result import TrialResult

    shipped = json.loads(work_cache.SHIPPED.read_text()) if work_cache.SHIPPED.is_file() else {}
    done: set[str] = set()
    cells = {}  # one cell per model, options, data and device: what the whole-split reference depends on
    for config in args.configs:
        for cell in load_spec(REPO / config).cells:
            if cell.data.whole_split_reference:
                cells.setdefault(json.dumps([cell.model, dict(cell.model_options), cell.data.to_dict(), cell.device],
                                            sort_keys=True, default=str), cell)
    for cell in cells.values():
        device = resolve_device(cell.device)
        dense, tokenizer = dense_model(cell.model, device, cell.model_options)
        task = cached_task(dense, cell, tokenizer)
        result = TrialResult(spec=cell)
        result.device = str(device)
        model_id = (cell.model, json.dumps(dict(cell.model_options), sort_keys=True, default=str))
        _record_baseline(result, LocalShared(), dense, task, cell, device, model_id)
        root = work_cache.cache_dir()
        for path in (root / "whole-split").glob("*.json"):
            entry = json.loads(path.read_text())
            if entry["key"] not in done:
                done.add(entry["key"])
                shipped[entry["key"]] = {"value": entry["value"], "provenance": {
                    **entry["provenance"], "model": cell.model, "protocol": task.full_key}}
                print(f"{cell.model} {task.full_key}: {entry['value']:.6g}")
    write_file(work_cache.SHIPPED, (json.dumps(shipped, indent=1, sort_keys=True) + "\n").encode())


if __name__ == "__main__":
    main()
