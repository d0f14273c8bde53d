"""Units and number formatting shared by the claims, tables and plots.

The lesson writes "GB" for two things: parameters x bytes (10**9 bytes) and torch's
`memory_allocated() / 1024**3` (a GiB). Byte counts are shown in GB, allocator readings in GiB,
each with the other unit beside it where it matters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

GB = 1e9  # the lesson's "GB" where it multiplies parameters by bytes (7e9 x 4 bytes = 28 GB)
GIB = 2**30  # torch's "GB" (/ 1024**3) and every `_gib` column


def fmt_gb(nbytes: float) -> str:
    """Bytes as "5.70 GB (5.31 GiB)"; below 0.1 GB as "48.20 MB (45.97 MiB)"."""
    if abs(nbytes) < 0.1 * GB:
        return f"{nbytes / 1e6:.2f} MB ({nbytes / 2**20:.2f} MiB)"
    return f"{nbytes / GB:.2f} GB ({nbytes / GIB:.2f} GiB)"


def fmt_size(nbytes: float) -> str:
    """Bytes in the lesson's unit: "5.70 GB", or "48.20 MB" below 0.1 GB."""
    return f"{nbytes / 1e6:.2f} MB" if abs(nbytes) < 0.1 * GB else f"{nbytes / GB:.2f} GB"


def fmt_gib(gib: float) -> str:
    """GiB as "5.31 GiB (5.70 GB)"."""
    return f"{gib:.2f} GiB ({gib * GIB / GB:.2f} GB)"


def pct(x: float) -> str:
    """A share as a percentage with one decimal: 0.153 -> "15.3%"."""
    return f"{100 * x:.1f}%"


def span(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """The range of `values` formatted by `fmt`: "low to high", or one value when all are equal."""
    low, high = min(values), max(values)
    return fmt(low) if math.isclose(low, high, rel_tol=1e-9) else f"{fmt(low)} to {fmt(high)}"
