"""The `sentinel-bench` command line.

    sentinel-bench run CONFIG [--set key=value ...] [--address ADDR] [--resume] [--overwrite] [--no-analyze]
                              [--dry-run]
    sentinel-bench analyze | submit | status | logs | export | extract ...
        (provided by orchestrator.analyze / orchestrator.submit / orchestrator.export / orchestrator.extract)

Exit codes: 0 all trials ok; 1 some trials failed, or the final tables could not be written (the rows stay in
parts); 2 bad input (one line on stderr, nothing started, nothing written); 130 interrupted (Ctrl-C), 143
terminated (SIGTERM): every finished row is written, and the resume command printed.

`orchestrator.analyze` and `orchestrator.submit` register their own subcommands with `add_cli(subparsers)`
(each subparser `set_defaults(func=fn)`, `fn(args) -> int`).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from typing import Sequence

from orchestrator import analyze, export, extract, submit
from sentinel.contract import SpecError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentinel-bench", description="Benchmark attention-head pruning with Ray Tune.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run (or resume) an experiment from a YAML config")
    run.add_argument("config", help="experiment YAML (see configs/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value with a dotted key, e.g. --set finetune.steps=10 (repeatable)")
    run.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local one)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    run.add_argument("--overwrite", action="store_true", help="replace a previous experiment of the same name")
    run.add_argument("--no-analyze", action="store_true", help="write Parquet only, no tables or plots")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan and a time estimate measured here; start nothing, write nothing")
    run.set_defaults(func=cmd_run)

    config = sub.add_parser("config", help="print a config with every key at its default")
    config.add_argument("--defaults", action="store_true", required=True,
                        help="every key of a config with the value it takes when not set (YAML)")
    config.set_defaults(func=cmd_config)

    analyze.add_cli(sub)
    submit.add_cli(sub)  # submit, status, logs
    export.add_cli(sub)
    extract.add_cli(sub)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    """Validates the config (exit 2 on bad input, before Ray starts), runs the grid, analyzes the results."""
    from orchestrator.spec import check_local_run, load_spec  # torch and transformers: only `run` needs them here

    spec = load_spec(args.config, args.overrides)
    if args.address is None:
        check_local_run(spec)
        # Ray on Linux binds GCS and raylet to the machine's address even when told 127.0.0.1; this flag,
        # read when ray is first imported (below), keeps a local in-process cluster on loopback (docs/SECURITY.md)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if args.dry_run:
        from orchestrator.dry_run import dry_run

        print("\n".join(dry_run(spec, measure_here=args.address is None)))  # a cluster's machines are elsewhere
        return 0
    from orchestrator.outputs import ResultsWriteError
    from orchestrator.ray_session import check_address
    from orchestrator.runner import run_experiment

    check_address(args.address)

    try:
        summary = run_experiment(spec, address=args.address, resume=args.resume, overwrite=args.overwrite)
    except ResultsWriteError as exc:
        print(f"sentinel-bench: error: {exc}", file=sys.stderr)
        return 1
    print(f"{spec.experiment}: {summary.ok} ok, {summary.failed} failed, {summary.missing} not run "
          f"of {summary.total} trials in {summary.wall_s:.0f}s; results in {summary.output_dir}")
    if summary.missing:
        print(f"interrupted: `{resume_command(args)}` runs the {summary.missing} remaining trials")
    if not args.no_analyze and summary.ok and not summary.signal:
        analyze_results(summary.output_dir)
    if summary.missing or summary.signal:
        return 128 + (summary.signal or signal.SIGINT)
    return 0 if summary.failed == 0 else 1


def cmd_config(args: argparse.Namespace) -> int:
    """Prints every config key with its default (docs/CONFIG.md shows the same, rendered from it)."""
    from orchestrator.spec import defaults_yaml

    print(defaults_yaml(), end="")
    return 0


def resume_command(args: argparse.Namespace) -> str:
    """The command that continues this run (the config and its overrides, --resume)."""
    sets = " ".join(f"--set {shlex.quote(o)}" for o in args.overrides)
    address = f" --address {shlex.quote(args.address)}" if args.address else ""
    return f"sentinel-bench run {shlex.quote(args.config)}{' ' + sets if sets else ''}{address} --resume"


def analyze_results(output_dir: str) -> None:
    """Tables, plots and the report from the Parquet files just written."""
    try:
        print(f"report: {analyze.analyze(output_dir)}")
    except analyze.AnalyzeError as exc:  # the results are written; say why there is no report
        print(f"analyze: {exc}".splitlines()[0], file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sentinel-bench` console script. Returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except SpecError as exc:  # bad input to any subcommand (AnalyzeError and SubmitError are SpecErrors)
        print(f"sentinel-bench: error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("interrupted: every finished row is saved; rerun with --resume to continue", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    return code


if __name__ == "__main__":
    sys.exit(main())
