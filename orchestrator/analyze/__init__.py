"""`sentinel-bench analyze`: comparison tables, plots and a report from Parquet results.

    sentinel-bench analyze RESULTS [RESULTS ...] [--out DIR] [--test studentized] [--resamples N] [--seed S]

Python API: `analyze(paths, out=None) -> report path`. Inputs are results folders or Parquet files, local
or URIs (s3://...); several are merged. The output folder defaults to `<first results folder>/analysis/`.
Bad input raises AnalyzeError (the CLI prints one line and exits with 2). See docs/ANALYZE.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.analyze.load import AnalyzeError, Results, load

__all__ = ["AnalyzeError", "Results", "add_arguments", "add_cli", "analyze", "default_out", "load", "main"]


def default_out(path: str) -> str:
    """`<results folder>/analysis`, or next to a Parquet file given directly (its folder's `analysis/`)."""
    path = str(path).rstrip("/")
    if path.endswith(".parquet"):
        path = path.rsplit("/", 1)[0] if "/" in path else "."
    return f"{path}/analysis"


def analyze(paths: list[str] | str, out: str | None = None, settings=None) -> Path | str:
    """Reads results, writes summary tables, plots and report.md (+ report.html) into `out`.

    Args:
        paths: results folders or Parquet files (local or URIs); a single string is one path.
        out: output folder (local or URI); default `<first input>/analysis/`.
        settings: the test against the random reference (orchestrator.analyze.reference.TestSettings).
    Returns:
        The path of report.md: a Path for a local folder, the URI string for a remote one.
    Raises:
        AnalyzeError: a missing path, a file that is not Parquet, an unknown schema_version, an empty table.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless: we only write files (Figure objects need no GUI anyway)
    from orchestrator.analyze.reference import TestSettings
    from orchestrator.analyze.report import write_report

    settings = settings if settings is not None else TestSettings()
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    results = load([str(p) for p in paths])
    target = out if out is not None else default_out(str(paths[0]))
    check_out(str(target))
    report = write_report(results, str(target), settings)
    return report if "://" in report else Path(report)


def check_out(target: str) -> None:
    """A local output folder must be a folder (or creatable) and writable, before any file is written."""
    from orchestrator.storage import unwritable

    if "://" not in target and (reason := unwritable(target)):
        raise AnalyzeError(f"--out: {target!r} is not a writable folder ({reason})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `analyze` arguments to a (sub)parser."""
    parser.add_argument("results", nargs="+", metavar="RESULTS",
                        help="results folders (with trials.parquet) or Parquet files, local or s3://; merged")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder for report.md, tables and plots (default: RESULTS/analysis)")
    parser.add_argument("--test", default="studentized", metavar="TEST",
                        help="the test against the random reference: studentized (Welch's t, permuted; default) or "
                             "mean-difference (the former test, to reproduce older tables)")
    parser.add_argument("--resamples", default=9_999, type=int, metavar="N",
                        help="Monte-Carlo partitions per test where they are too many to enumerate (at least 9999; "
                             "tests whose verdict the Monte-Carlo error could move get more)")
    parser.add_argument("--seed", default=0, type=int, metavar="S", help="the analysis seed (each test draws "
                        "its own stream from it and its name)")


def main(args: argparse.Namespace) -> int:
    """Runs `analyze` for parsed arguments. Returns 0; bad input raises AnalyzeError (a SpecError: the command line
    prints its one line and exits 2)."""
    from orchestrator.analyze.reference import TestSettings

    settings = TestSettings(args.test, args.resamples, args.seed)  # bad values: one line, before any file is read
    print(f"report: {analyze(args.results, args.out, settings)}")
    return 0


def add_cli(subparsers) -> None:
    """The hook orchestrator.cli calls: registers `sentinel-bench analyze`."""
    parser = subparsers.add_parser("analyze", help="tables, plots and a report from results Parquet files",
                                   description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.set_defaults(func=main)

