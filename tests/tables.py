"""Writing result tables the way a run does, for tests that need real Parquet files without running a grid."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from orchestrator.results import compact, write_part


def write_results(output_dir: str, payloads: Iterable[Mapping[str, Any]], config: Mapping[str, Any]) -> dict[str, str]:
    """What a run does with its payloads: one part, then compaction into the three tables and config.yaml."""
    write_part(output_dir, list(payloads), "test")
    return compact(output_dir, config)
