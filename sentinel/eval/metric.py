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
    # the units the value is a function of, one [a, b] per unit in a fixed order (a window's summed NLL and tokens,
    # an STS-B pair's cosine and gold score): what the analysis resamples (sentinel.resampling); empty if none
    units: list[list[float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
