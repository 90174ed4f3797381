"""Writing result tables the way a run does, for tests that need real Parquet files without running a grid."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from orchestrator.results import compact, write_part
from sentinel.result import TrialRecord


def write_results(output_dir: str, records: Iterable[TrialRecord], config: Mapping[str, Any]) -> dict[str, str]:
    """What a run does with its records: one part, then compaction into the four tables and config.yaml."""
    write_part(output_dir, list(records), "test")
    return compact(output_dir, config).paths
