"""What the claim checks of every lesson section share: row selection that ends in a verdict,
measurement tables and tolerances (speed comparisons: `reports.claims.speed`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import pandas as pd

from qlora_core.cases.case import LESSON_TARGET_MODULES
from reports.claims.model import Evaluation, inconclusive, not_run
from reports.run.frame import RunData
from reports.run.rows import OK_ONLY, NoRows, model_sizes, usable

SEVEN_MODULES = ",".join(LESSON_TARGET_MODULES)  # the lesson's target modules as a row holds them
LESSON_SIZED_MIN = 2.5e9  # the lesson's examples and budgets are about 3B-13B models
LESSON_SIZED_MAX = 15e9  # ...so a 70B row (the compat family's) is no example of those numbers


def select(
    rows: pd.DataFrame,
    what: str,
    cols: Sequence[str] = (),
    *,
    condition: str = "",
    statuses: frozenset[str] = OK_ONLY,
) -> pd.DataFrame | Evaluation:
    """`rows` that ran with a status in `statuses` and measured every column in `cols`.

    When none do, the Evaluation that says so: not_run when there are no such rows at all,
    inconclusive when they ran but failed or did not measure the columns.
    """
    found = usable(rows, what, cols, statuses=statuses)
    if not isinstance(found, NoRows):
        return found
    if found.absent:
        return not_run(found.why, condition=condition)
    return inconclusive(found.why, evidence=found.evidence, condition=condition)


def lesson_sized(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Rows of models in the lesson's size range (3B-13B), and a note naming the models left out
    (their overheads and ratios are not what the lesson's numbers describe)."""
    if df.empty:
        return df, ""
    sizes = model_sizes(df)
    keep = [m for m, (p, _) in sizes.items() if LESSON_SIZED_MIN <= p <= LESSON_SIZED_MAX]
    large = sorted(m for m, (p, _) in sizes.items() if p > LESSON_SIZED_MAX)
    small = sorted(set(df["model"].astype(str)) - set(keep) - set(large))  # unsized ones too
    note = "; ".join(
        filter(
            None,
            [
                f"models below 2.5B params not judged: {', '.join(small)}" if small else "",
                f"models above 15B params not judged: {', '.join(large)}" if large else "",
            ],
        )
    )
    return df[df["model"].astype(str).isin(keep)], note


def with_note(evaluation: Evaluation, note: str) -> Evaluation:
    """The evaluation with `note` appended to its why."""
    if not note:
        return evaluation
    return dataclasses.replace(evaluation, why="; ".join(filter(None, [evaluation.why, note])))


def modules_label(modules: str) -> str:
    """Target modules in words: "the seven projections" for the lesson's set, else the list."""
    return "the seven projections" if modules == SEVEN_MODULES else str(modules).replace("_proj", "")


def measurement(run: RunData, name: str, cols: Sequence[str]) -> pd.DataFrame | Evaluation:
    """The measurement table `name` with columns `cols`, or a not_run saying what is missing."""
    table = run.measurements.get(name)
    if table is None or table.empty:
        return not_run(f"measurement table {name} is absent from this run")
    lacking = [c for c in cols if c not in table.columns]
    if lacking:
        return not_run(f"measurement table {name} lacks column(s) {', '.join(lacking)}")
    return table


def within(value: float, expected: float, tol: float) -> bool:
    """`value` within `tol` (relative) of `expected`."""
    return abs(value - expected) <= tol * abs(expected)


def in_range(value: float, low: float, high: float, tol: float) -> bool:
    """`value` within [low, high], each bound widened by `tol` (relative)."""
    return low * (1 - tol) <= value <= high * (1 + tol)


def lower_better(a: float, b: float, noise: float) -> int:
    """-1 when a is lower than b by more than `noise` (relative to b), 1 when higher, 0 within."""
    rel = (a - b) / abs(b) if b else math.inf
    return -1 if rel < -noise else (1 if rel > noise else 0)
