"""`sentinel-bench extract`: one trial's model out of a results folder, as a folder sentinel and `export` load.

    sentinel-bench extract RESULTS --trial ID [--stage pruned|recovered] --out DIR [--overwrite]

A results folder holds rows, not weights. The row's spec is the whole recipe, so the model is rebuilt by running the
trial again on this machine, on CPU, without its speed, generation and extra evaluations (which change no weight):
the pruned layout exactly (the same scores from the same calibration draw), and for `recovered` the recorded
recovery replayed with the same seed. The rebuilt model must give the row's parameter count and its metric to a
relative 1e-4, or nothing is written (a different library version or machine can move a fine-tuned weight). The
folder is written by `sentinel.save_pruned` with the tokenizer: `sentinel.load_model(DIR)` loads it and
`sentinel-bench export DIR` makes it a GGUF file. Bad input is one line and exit 2, before any model is loaded.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from sentinel.contract import SpecError

STAGES = ("pruned", "recovered")
TOLERANCE = 1e-4  # relative: what a rebuilt model's metric may differ from its row's


def add_cli(subparsers) -> None:
    """The hook orchestrator.cli calls: registers `sentinel-bench extract`."""
    parser = subparsers.add_parser("extract", help="one trial's pruned or recovered model as a loadable folder",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("results", metavar="RESULTS", help="a results folder (or its trials.parquet)")
    parser.add_argument("--trial", required=True, metavar="ID", help="the trial_id (a unique prefix will do)")
    parser.add_argument("--stage", default="pruned", help=f"which model ({', '.join(STAGES)}; default pruned)")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace a folder an earlier extract wrote")
    parser.set_defaults(func=cmd_extract)


def find_row(results: str, trial: str) -> dict:
    """The trial's row (strategy cells and reference layouts alike), by its id or a unique prefix of it."""
    import pandas as pd

    from orchestrator.analyze.load import load

    folder_trials = Path(results) / "trials.parquet"  # the rows alone: curves and heads are not needed here
    loaded = load([str(folder_trials) if folder_trials.is_file() else results])
    rows = pd.concat([loaded.trials, loaded.reference], ignore_index=True)
    matches = rows[rows["trial_id"].astype(str).str.startswith(trial)] if trial else rows.iloc[0:0]
    if len(matches) != 1:
        found = "no trial" if matches.empty else f"{len(matches)} trials"
        raise SpecError(f"--trial: {found} in {results!r} has an id starting {trial!r}; the ids are in trials.parquet's "
                        "trial_id column (and in report.md)")
    row = matches.iloc[0].to_dict()
    if row["status"] != "ok":
        raise SpecError(f"--trial: {row['trial_id']} failed in that run ({str(row.get('error') or '').splitlines()[0]}"
                        "); only a finished trial has a model to rebuild")
    return row


def check_request(args: argparse.Namespace) -> None:
    if args.stage not in STAGES:
        raise SpecError(f"--stage: {args.stage!r} is not one of {', '.join(STAGES)}")
    out = Path(args.out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise SpecError(f"--out: {args.out!r} exists and is not a folder; name a folder to write")
    if out.exists() and any(out.iterdir()):
        from sentinel.models.io import SIDECAR

        if not args.overwrite:
            raise SpecError(f"--out: {args.out!r} is not empty; pass --overwrite to replace an earlier extract")
        if not (out / SIDECAR).is_file():  # never delete a folder this command did not write
            raise SpecError(f"--out: {args.out!r} holds files no extract wrote (no {SIDECAR}); not replacing it")
    if not out.parent.is_dir():
        raise SpecError(f"--out: the folder {str(out.parent)!r} does not exist")


def extract(row: dict, stage: str, out: str | Path) -> dict:
    """Rebuilds the row's model after `stage` and writes it to `out`. Returns what was checked: {metric, row_metric,
    params, row_params}. Raises SpecError when the rebuilt model is not the row's (nothing written then)."""
    from sentinel.models.io import save_pruned
    from sentinel.pipeline import run_trial
    from sentinel.pruning import STRATEGIES
    from sentinel.trial import TrialSpec

    spec = TrialSpec.from_dict(json.loads(row["spec"]) if isinstance(row["spec"], str) else row["spec"])
    if stage == "recovered" and spec.finetune is None:
        raise SpecError(f"--stage: trial {row['trial_id']} was not recovered; its model is the pruned one")
    if stage == "recovered" and STRATEGIES.get(spec.strategy).during_finetune:
        raise SpecError(f"--stage: {spec.strategy!r} prunes while it fine-tunes; its recovered model is not rebuilt "
                        "here (extract --stage pruned gives its layout)")
    # what changes no weight is left out; the pruned stage needs no recovery
    rebuild = replace(spec, measure_speed=False, generation=None, extra_tasks=(),
                      finetune=None if stage == "pruned" else spec.finetune)
    kept: dict = {}
    result = run_trial(rebuild, device="cpu", keep=lambda name, model, tokenizer: kept.update({name: (model, tokenizer)}))
    if result.status != "ok" or stage not in kept:
        raise SpecError(f"--trial: rebuilding {row['trial_id']} failed ({(result.error or '').splitlines()[0]})")
    model, tokenizer = kept[stage]
    metric, expected = getattr(result, stage), float(row[stage])
    checked = {"metric": metric, "row_metric": expected, "params": result.params_after,
               "row_params": int(row["params_after"]), "metric_name": result.metric_name}
    if checked["params"] != checked["row_params"] or abs(metric - expected) > TOLERANCE * max(abs(expected), 1e-12):
        raise SpecError(f"--trial: the rebuilt {stage} model gives {result.metric_name} {metric:.6g} with "
                        f"{checked['params']:,} parameters where the row says {expected:.6g} with "
                        f"{checked['row_params']:,} (another library version or machine?); nothing written")
    target = Path(out)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        save_pruned(model, staging, tokenizer)
        if target.exists():
            shutil.rmtree(target)  # an earlier extract (check_request made sure)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return checked


def cmd_extract(args: argparse.Namespace) -> int:
    check_request(args)
    row = find_row(args.results, args.trial)
    checked = extract(row, args.stage, args.out)
    print(f"{row['trial_id']}: {row['strategy']} at level {row['level']:g}, seed {row['seed']}, after {args.stage}: "
          f"{checked['metric_name']} {checked['metric']:.6g} (the row: {checked['row_metric']:.6g}), "
          f"{checked['params']:,} parameters -> {args.out} (sentinel.load_model({str(args.out)!r}); "
          f"sentinel-bench export {args.out} --out model.gguf)")
    return 0
