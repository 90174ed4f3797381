"""The two-sample test of a strategy's layouts against the random reference, and the interval that inverts it.

Why studentized (docs/ANALYZE.md, "The test"): a criterion's layouts vary far less than random's (a median sd ratio
of 0.07 on the LM), and a permutation test of the plain difference in means is exact only when the two groups are
exchangeable, i.e. of equal spread. With a smaller strategy spread it throws power away; with a larger one it calls
an unstable criterion better or worse by its mean alone (0.24-0.38 false positives at a nominal 0.05). Permuting
Welch's t instead (Janssen 1997; Chung & Romano 2013) keeps the exact level when the groups are exchangeable and the
asymptotic level when their spreads differ; benchmarks/reference_power.py measures it at the sizes we publish.

p is exact, by enumerating every partition, when they number at most EXACT_LIMIT; otherwise a Monte-Carlo p from
`resamples` random partitions drawn from the test's own stream (a seed derived from the test's name and the
analysis seed, so no test's p depends on which other tests ran), reported with its Monte-Carlo error.

The interval is the test inverted: every shift d for which testing (x - d) against y keeps p >= 1 - confidence, on
the same partitions. It excludes 0 exactly when the test rejects at that level (checked, and forced where a
non-monotone p would otherwise disagree).
"""
from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

import numpy as np

EXACT_LIMIT = 200_000  # partitions enumerated in well under a second (C(29, 5) = 118,755 takes ~0.1 s)
MIN_RESAMPLES = 9_999  # the smallest two-sided Monte-Carlo p is 1/10,000: enough for Holm over a few dozen tests
MAX_RESAMPLES = 999_999  # a verdict still straddling alpha here is reported with its Monte-Carlo error
STATISTICS = ("studentized", "mean-difference")  # the default, and the former test (kept to reproduce old tables)
_CHUNK = 50_000


def stream_seed(seed: int, *name: object) -> np.random.SeedSequence:
    """A test's own random stream: the analysis seed and the test's name (model, label, level, stage)."""
    digest = hashlib.sha256("\x1f".join(str(n) for n in name).encode()).digest()
    return np.random.SeedSequence([seed, int.from_bytes(digest[:8], "little")])


def partitions(n: int, m: int, resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Index sets of the first group (rows of n indices into the pooled n + m values): all of them when they number
    at most EXACT_LIMIT, else `resamples` random ones."""
    if math.comb(n + m, n) <= EXACT_LIMIT:
        flat = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(n + m), n)), dtype=np.int32)
        return flat.reshape(-1, n), True
    chunks = []
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        chunks.append(np.argpartition(rng.random((size, n + m)), n - 1, axis=1)[:, :n].astype(np.int32))
    return np.concatenate(chunks), False


@dataclass
class TwoSampleTest:
    """x (the strategy's distinct layouts) against y (the reference), on the test's scale; p and interval for any
    shift of x from the same partitions, so the interval inverts the very test whose p is reported."""

    x: np.ndarray
    y: np.ndarray
    statistic: str = "studentized"
    resamples: int = MIN_RESAMPLES
    seed: np.random.SeedSequence | int = 0
    index: tuple[np.ndarray, bool] | None = None  # partitions to reuse (a simulation of many tests of one size)

    def __post_init__(self) -> None:
        self.x, self.y = np.asarray(self.x, float), np.asarray(self.y, float)
        n, m = len(self.x), len(self.y)
        index, self.exact = self.index or partitions(n, m, self.resamples, np.random.default_rng(self.seed))
        self.index = None  # not kept: the sums below are all a p needs
        pooled = np.concatenate([self.x, self.y])
        # per partition, the sums the statistic needs, split by origin so a shift of x is a linear update
        from_x = index < n
        values = pooled[index]
        self._k = from_x.sum(axis=1)
        self._s = values.sum(axis=1)
        self._q = (values ** 2).sum(axis=1)
        self._sx = np.where(from_x, values, 0.0).sum(axis=1)
        self.partitions = len(index)

    def _statistic(self, s1, q1, s2, q2, n, m):
        diff = s1 / n - s2 / m
        if self.statistic == "mean-difference":
            return diff
        var1 = np.maximum(q1 - s1 ** 2 / n, 0.0) / (n - 1)
        var2 = np.maximum(q2 - s2 ** 2 / m, 0.0) / (m - 1)
        se = np.sqrt(var1 / n + var2 / m)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.where(diff == 0, 0.0, np.sign(diff) * np.inf))

    def p(self, shift: float = 0.0) -> float:
        """Two-sided p of x - shift against y: the share of partitions whose |statistic| reaches the observed one
        (the observed partition counted once more for a Monte-Carlo p: (b + 1) / (N + 1))."""
        n, m = len(self.x), len(self.y)
        total_s = self.x.sum() - n * shift + self.y.sum()
        total_q = ((self.x - shift) ** 2).sum() + (self.y ** 2).sum()
        s1 = self._s - shift * self._k
        q1 = self._q - 2 * shift * self._sx + shift ** 2 * self._k
        t = np.abs(self._statistic(s1, q1, total_s - s1, total_q - q1, n, m))
        xs = self.x - shift
        observed = abs(float(self._statistic(xs.sum(), (xs ** 2).sum(), self.y.sum(), (self.y ** 2).sum(), n, m)))
        hits = int((t >= observed * (1 - 1e-12)).sum())
        return hits / self.partitions if self.exact else (hits + 1) / (self.partitions + 1)

    def mc_error(self, p: float) -> float:
        """The Monte-Carlo standard error of p (0 for an exact p)."""
        return 0.0 if self.exact else math.sqrt(p * (1 - p) / self.partitions)

    def interval(self, confidence: float) -> tuple[float, float]:
        """The shifts of x not rejected at 1 - confidence, as an interval around the mean difference; it contains 0
        exactly when p(0) >= 1 - confidence."""
        alpha = 1 - confidence
        estimate = float(self.x.mean() - self.y.mean())
        spread = float(np.ptp(np.concatenate([self.x, self.y]))) or 1.0
        low = _boundary(self.p, estimate, estimate - spread, alpha)
        high = _boundary(self.p, estimate, estimate + spread, alpha)
        rejects = self.p(0.0) < alpha
        if rejects and low <= 0 <= high:  # a non-monotone p: the interval follows the test at 0
            low, high = (np.nextafter(0.0, 1.0), high) if estimate > 0 else (low, np.nextafter(0.0, -1.0))
        elif not rejects and not low <= 0 <= high:
            low, high = min(low, 0.0), max(high, 0.0)
        return low, high


def _boundary(p, inside: float, outside: float, alpha: float, steps: int = 50) -> float:
    """Where p(shift) falls below alpha between `inside` (accepted) and `outside`, which is moved out until rejected."""
    for _ in range(60):
        if p(outside) < alpha:
            break
        outside = inside + 2 * (outside - inside)
    else:
        return float("inf") if outside > inside else float("-inf")
    for _ in range(steps):
        middle = (inside + outside) / 2
        inside, outside = (middle, outside) if p(middle) >= alpha else (inside, middle)
    return inside


def rank_p(value: float, y: np.ndarray) -> float:
    """The exact two-sided rank test of one value (a strategy with one distinct layout) among the reference's."""
    pooled = np.concatenate([[value], y])
    at_most, at_least = (pooled <= value).sum(), (pooled >= value).sum()
    return float(min(1.0, 2 * min(at_most, at_least) / len(pooled)))


def rank_interval(value: float, y: np.ndarray, confidence: float) -> tuple[float, float]:
    """The rank test inverted: shifts d with rank_p(value - d, y) >= 1 - confidence, around value - mean(y). NaN when
    the test cannot reject at all with this many reference values (2 / (m + 1) >= 1 - confidence: every shift is
    accepted, the interval is the whole line)."""
    alpha = 1 - confidence
    if 2 / (len(y) + 1) >= alpha:
        return float("nan"), float("nan")
    ordered = np.sort(y)
    accepted = []
    # p only changes where value - d crosses a reference value: test each gap's midpoint and the values themselves
    points = np.concatenate([ordered, (ordered[1:] + ordered[:-1]) / 2])
    for point in points:
        if rank_p(point, y) >= alpha:
            accepted.append(value - point)
    if not accepted:
        return float("nan"), float("nan")
    return float(min(accepted)), float(max(accepted))
