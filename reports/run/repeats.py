"""Folding the fresh-process repeats of a case (`--repeat N`) into the one row reports read: the
status ok only when every repeat is, memory and losses from the first ok repeat, tokens/s and
kernel time the median with its spread and interval. See docs/usage.md#repeats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from qlora_core.measurement.result import Result, Status
from reports.run.stats import bootstrap_median_ci, cv, median

MEMORY_TOLERANCE = 0.01  # memory is exact: repeats differing by more than 1% are flagged


@dataclass
class RepeatStats:
    """The columns a folded row adds to the Result's (None: one repeat, or not measured)."""

    repeats: int | None = None  # ok repeats folded into the row
    tokens_per_s_cv: float | None = None  # between processes: stdev / mean of per-repeat tokens/s
    tokens_per_s_ci_low: float | None = None  # 95% bootstrap interval of the median tokens/s
    tokens_per_s_ci_high: float | None = None
    kernel_ms_per_step_cv: float | None = None
    kernel_ms_per_step_ci_low: float | None = None
    kernel_ms_per_step_ci_high: float | None = None
    tokens_per_s_repeats: list[float] | None = None  # per ok repeat, in repeat order
    kernel_ms_repeats: list[float] | None = None
    repeat_memory_note: str = ""  # repeats whose peak allocated memory differs by > 1%; "" if none


REPEAT_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RepeatStats))
# Per-repeat metrics folded to their median over the ok repeats.
_MEDIAN_METRICS = ("tokens_per_s", "step_ms_median", "kernel_ms_per_step")


def fold_repeats(results: Iterable[Result]) -> list[dict[str, Any]]:
    """One flat row per (case hash, profile), in order of first appearance."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        groups.setdefault((result.case_hash, result.profile), []).append(result)
    return [fold_case(sorted(group, key=lambda r: r.repeat)) for group in groups.values()]


def fold_case(repeats: list[Result]) -> dict[str, Any]:
    """The folded row of one case's repeats (sorted by repeat)."""
    ok = [r for r in repeats if r.status == Status.OK.value]
    failed = [r for r in repeats if r.status != Status.OK.value]
    if failed:
        row = failed[0].row()
        if len(repeats) > 1:
            row["reason"] = f"repeat {failed[0].repeat + 1} of {len(repeats)}: {row['reason']}"
        stats = RepeatStats(repeats=len(ok))
        return {**row, **dataclasses.asdict(stats)}
    row = ok[0].row()
    stats = RepeatStats(repeats=len(ok), repeat_memory_note=memory_note(ok))
    for metric in _MEDIAN_METRICS:
        values = [v for v in (r.get_field(metric) for r in ok) if v is not None]
        if len(values) == len(ok):  # a metric missing from some repeat is not folded from the rest
            row[metric] = median(values)
    if len(ok) > 1:
        _add_spread(stats, "tokens_per_s", [r.training.tokens_per_s for r in ok], "tokens_per_s_repeats")
        _add_spread(
            stats, "kernel_ms_per_step", [r.training.kernel_ms_per_step for r in ok], "kernel_ms_repeats"
        )
    return {**row, **dataclasses.asdict(stats)}


def _add_spread(stats: RepeatStats, metric: str, values: list[float | None], list_field: str) -> None:
    """Set `<metric>_cv`, `_ci_low`, `_ci_high` and the per-repeat list, when every repeat measured it."""
    if any(v is None for v in values):
        return
    measured = [float(v) for v in values]  # type: ignore[arg-type]
    interval = bootstrap_median_ci(measured)
    setattr(stats, f"{metric}_cv", cv(measured))
    setattr(stats, f"{metric}_ci_low", interval.low if interval else None)
    setattr(stats, f"{metric}_ci_high", interval.high if interval else None)
    setattr(stats, list_field, measured)


def memory_note(ok: list[Result]) -> str:
    """Each repeat whose peak allocated memory differs from the first ok repeat's by more than 1%."""
    first = ok[0].memory.peak_alloc_gib
    notes = []
    for r in ok[1:]:
        if (
            first
            and r.memory.peak_alloc_gib is not None
            and abs(r.memory.peak_alloc_gib - first) > MEMORY_TOLERANCE * first
        ):
            change = (r.memory.peak_alloc_gib - first) / first * 100
            notes.append(
                f"repeat {r.repeat + 1}: peak_alloc_gib {r.memory.peak_alloc_gib:.3f} vs {first:.3f} GiB"
                f" ({change:+.1f}%)"
            )
    return "; ".join(notes)
