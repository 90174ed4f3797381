"""Suite-wide settings."""
from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

# The work cache (sentinel.work_cache) named once for the whole run, before fixtures point HOME at temp folders: every
# test, subprocess and Ray worker then converts SmolLM2's GGUF once (the conversion is exact: tests/unit/test_work_cache.py)
# Two test workers share two cores (pyproject's addopts): OpenMP threads that finish their share sleep instead of
# spinning, or each worker's torch threads burn the cycles the other needs. Set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("SENTINEL_CACHE", str(Path.home() / ".cache" / "sentinel-bench" / "work"))

# Slow, marked in one place (issue #42): everything that starts Ray clusters, jobs, llama.cpp, a browser or the
# shipped models end to end. `python -m pytest -m "not slow"` is the quick loop; the full suite runs them all.
SLOW_FOLDERS = ("cluster", "integration")
SLOW_MODULES = ("test_pipeline.py", "test_fuzz.py", "test_finetune.py", "test_zero_shot.py", "test_report_safety.py",
                "test_analyze.py", "test_v4_compat.py", "test_sentence.py", "test_extending.py")


def pytest_collection_finish(session) -> None:
    """The imports and collected tests live for the whole session: frozen, every garbage collection walks only what
    the tests make (as orchestrator.trainable does for a worker's trials)."""
    gc.freeze()


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if path.name in SLOW_MODULES or any(part in SLOW_FOLDERS for part in path.parts[-3:-1]):
            item.add_marker(pytest.mark.slow)
