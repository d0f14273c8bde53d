"""How a speed claim compares two rows: the ratio of their tokens/s, the interval around it
(bootstrap over repeats, or the noise floor of the pair's point class: `speed_noise`), where it
lies against the lesson's range (`place`), and whether the point was device-bound at all.
See docs/gate.md#how-a-speed-claim-reads-its-interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import pandas as pd

from reports.claims.noise_floors import HOST_BOUND, pair_floor, point_class
from reports.run.rows import fval
from reports.run.stats import bootstrap_ratio_ci
from reports.units import pct


def speed_noise(a: pd.Series, b: pd.Series) -> tuple[float, str]:
    """Relative tokens/s difference below which two single-process rows are not told apart, and
    where it comes from: the noise floor of the pair's point class (`noise_floors.pair_floor`),
    raised to half the larger step-time spread ((p90 - p10) / median) of the two rows where that
    is wider: a process whose own steps spread that much was disturbed beyond what the floor's
    evidence cases were."""
    floor = pair_floor(a, b)
    spreads = [s for s in (fval(r, "step_ms_spread") for r in (a, b)) if s is not None]
    half_spread = max(spreads, default=0.0) / 2
    if half_spread > floor.value:
        return (
            half_spread,
            f"noise ±{pct(half_spread)}, half the rows' step-time spread, above the {floor.text}",
        )
    return floor.value, floor.text


@dataclass(frozen=True)
class SpeedRatio:
    """tokens/s of row a over row b at one point, and the interval a verdict reads."""

    ratio: float
    low: float
    high: float
    basis: str
    """How the interval was made, in words ("95% interval over 3 and 3 processes")."""

    @property
    def slowdown(self) -> tuple[float, float, float]:
        """(1 - ratio, and its interval low, high): how much slower a ran than b."""
        return 1 - self.ratio, 1 - self.high, 1 - self.low

    def text(self) -> str:
        return f"{self.ratio:.3f}x [{self.low:.3f}, {self.high:.3f}] ({self.basis})"


def _repeats(row: pd.Series) -> list[float]:
    values = row.get("tokens_per_s_repeats")
    if isinstance(values, (list, tuple)) or hasattr(values, "tolist"):
        return [float(v) for v in list(values)]
    return []


def speed_ratio(a: pd.Series, b: pd.Series) -> SpeedRatio:
    """tokens/s of `a` over `b`, with its interval (both rows must have measured tokens/s)."""
    ta, tb = fval(a, "tokens_per_s"), fval(b, "tokens_per_s")
    if ta is None or tb is None or tb == 0:
        raise ValueError(f"rows {a.get('case_id')} and {b.get('case_id')} need tokens_per_s")
    ratio = ta / tb
    ra, rb = _repeats(a), _repeats(b)
    interval = bootstrap_ratio_ci(ra, rb) if len(ra) >= 2 and len(rb) >= 2 else None
    if interval is not None:
        basis = f"95% interval over {len(ra)} and {len(rb)} processes"
        return SpeedRatio(ratio, min(interval.low, ratio), max(interval.high, ratio), basis)
    noise, source = speed_noise(a, b)
    return SpeedRatio(ratio, ratio * (1 - noise), ratio * (1 + noise), f"one process each: {source}")


class Place(str, Enum):
    INSIDE = "inside"
    OUTSIDE = "outside"
    STRADDLES = "straddles"


def place(low: float, high: float, range_low: float, range_high: float) -> Place:
    """Where the interval [low, high] lies relative to the range [range_low, range_high]."""
    if range_low <= low and high <= range_high:
        return Place.INSIDE
    if high < range_low or low > range_high:
        return Place.OUTSIDE
    return Place.STRADDLES


def is_host_bound(row: pd.Series) -> bool:
    """True only when the row measured device time and found the step host-bound."""
    return point_class(row) == HOST_BOUND


def device_bound_pairs(
    found: Sequence[tuple[pd.Series, pd.Series]],
) -> tuple[list[tuple[pd.Series, pd.Series]], str]:
    """The pairs where neither row was host-bound, and a note naming the points left out."""
    kept = [(a, b) for a, b in found if not (is_host_bound(a) or is_host_bound(b))]
    left = [str(a["case_id"]) for a, b in found if is_host_bound(a) or is_host_bound(b)]
    note = f"host-bound, not judged on speed: {', '.join(left)}" if left else ""
    return kept, note
