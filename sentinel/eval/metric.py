"""The one result type every evaluation returns."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Metric:
    """A number together with how it was measured.

    `protocol` holds everything needed to reproduce the number (data, split, window sizes, counts);
    it must stay JSON-serialisable so it can be stored next to the value.
    """

    name: str
    value: float
    higher_is_better: bool
    protocol: dict[str, Any] = field(default_factory=dict)
    # the scale on which seeds are averaged and compared: "log" for ratios such as perplexity (heavy-tailed
    # under pruning), "atanh" (Fisher z) for correlations in [-1, 1], "identity" otherwise
    scale: str = "identity"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
