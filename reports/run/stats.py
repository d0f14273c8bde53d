"""The few statistics the repeats and the release gate need, in plain Python (no scipy, no numpy):
`median`, `quantile` (numpy's default interpolation), `rel_iqr`, `cv`; `bootstrap_median_ci` and
`bootstrap_ratio_ci` (seeded percentile bootstrap intervals of a median and of a ratio of
medians); `mann_whitney_greater` (one-sided U test: exact p without ties, else a normal
approximation, tie and continuity corrected). Every function returns None where the statistic does
not exist (too few values, a zero mean): a statistic that cannot be computed is not measured,
never 0.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from functools import cache
from typing import NamedTuple

BOOTSTRAP_SEED = 20240610
BOOTSTRAP_RESAMPLES = 4000
CI_LEVEL = 0.95
# Above this many arrangements the exact U distribution is replaced by the normal approximation.
_EXACT_MAX_N = 40


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0 <= q <= 1), interpolating linearly between order statistics."""
    if not values:
        return None
    if not 0 <= q <= 1:
        raise ValueError(f"quantile q={q!r} must be within [0, 1]")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def rel_iqr(values: Sequence[float]) -> float | None:
    """(q75 - q25) / median: the spread of the middle half, as a fraction of the median."""
    mid = median(values)
    if mid is None or mid == 0:
        return None
    return (quantile(values, 0.75) - quantile(values, 0.25)) / mid  # type: ignore[operator]


def cv(values: Sequence[float]) -> float | None:
    """Coefficient of variation: sample standard deviation (n - 1) / mean; None below 2 values."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / abs(mean) if mean != 0 else None


class Interval(NamedTuple):
    low: float
    high: float


def bootstrap_median_ci(
    values: Sequence[float],
    level: float = CI_LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval | None:
    """Percentile bootstrap interval of the median of `values`; None below 2 values.

    Seeded: the same values give the same interval on every machine (Python's Mersenne Twister
    and `Random.choices` are stable across versions). With 2 or 3 values the interval is close
    to [min, max]: few repeats say little, and the interval says so.
    """
    if len(values) < 2:
        return None
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} must be within (0, 1)")
    rng = random.Random(seed)
    medians = [statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)]
    tail = (1 - level) / 2
    return Interval(quantile(medians, tail), quantile(medians, 1 - tail))  # type: ignore[arg-type]


def bootstrap_ratio_ci(
    a: Sequence[float],
    b: Sequence[float],
    level: float = CI_LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval | None:
    """Percentile bootstrap interval of median(a) / median(b), each side resampled on its own
    (two independent sets of processes); None below 2 values on a side or with a zero median."""
    if len(a) < 2 or len(b) < 2:
        return None
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} must be within (0, 1)")
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        denominator = statistics.median(rng.choices(b, k=len(b)))
        if denominator == 0:
            return None
        ratios.append(statistics.median(rng.choices(a, k=len(a))) / denominator)
    tail = (1 - level) / 2
    return Interval(quantile(ratios, tail), quantile(ratios, 1 - tail))  # type: ignore[arg-type]


class MannWhitney(NamedTuple):
    u: float
    """U of the first sample: pairs (x, y) with x > y, ties counting one half."""
    p: float
    """One-sided p-value of "x tends to be larger than y"."""
    method: str
    """"exact" or "normal" (ties present, or samples too large for the exact distribution)."""


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> MannWhitney:
    """One-sided Mann-Whitney U test that `x` is stochastically larger than `y`."""
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        raise ValueError(f"Mann-Whitney U needs values on both sides (got {n} and {m})")
    u = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y)
    pooled = [*x, *y]
    ties = len(set(pooled)) < len(pooled)
    if not ties and n + m <= _EXACT_MAX_N:
        # P(U >= u): arrangements with at least u wins, over all C(n + m, n) equally likely ones.
        at_least = sum(_u_count(n, m, k) for k in range(math.ceil(u), n * m + 1))
        return MannWhitney(u, at_least / math.comb(n + m, n), "exact")
    total = n + m
    tie_term = sum(t**3 - t for t in _tie_sizes(pooled)) / (total * (total - 1))
    variance = n * m / 12 * ((total + 1) - tie_term)
    if variance == 0:  # every value equal: no evidence either way
        return MannWhitney(u, 1.0, "normal")
    z = (u - n * m / 2 - 0.5) / math.sqrt(variance)  # 0.5: continuity correction
    return MannWhitney(u, 0.5 * math.erfc(z / math.sqrt(2)), "normal")


@cache
def _u_count(n: int, m: int, u: int) -> int:
    """How many orderings of n x-values and m y-values (no ties) give exactly U = u."""
    if u < 0 or u > n * m:
        return 0
    if n == 0 or m == 0:
        return 1 if u == 0 else 0
    # The largest value is an x (beating all m y's) or a y (beating no x).
    return _u_count(n - 1, m, u - m) + _u_count(n, m - 1, u)


def _tie_sizes(values: Sequence[float]) -> list[int]:
    counts: dict[float, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return [c for c in counts.values() if c > 1]
