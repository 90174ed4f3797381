"""Suite-wide settings."""
from __future__ import annotations

import gc


def pytest_collection_finish(session) -> None:
    """The imports and collected tests live for the whole session: frozen, every garbage collection walks only what
    the tests make (as orchestrator.trainable does for a worker's trials)."""
    gc.freeze()
