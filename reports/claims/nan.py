"""How a training run on text ended, for the lesson's NaN advice: one classification per row
(`Outcome`: non-finite at step k, no update, finite but diverging, fine). `nan_rows` is where the
claims and the NaN table read these rows; `nan_table` is tables.md's section.
See docs/matrix.md#the-nan-advice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import pandas as pd

from qlora_core.cases.families import Family
from reports.markdown import md_table
from reports.run.frame import RunData
from reports.run.rows import family_rows, fval, is_nan_run, where

DIVERGE_WINDOW = 3
"""Steps averaged at the end of the loss curve."""
DIVERGE_MARGIN = 0.25
"""Relative rise of the last steps' mean loss over the first step's that counts as diverging."""
RAN = frozenset({"ok", "nan"})
"""Statuses of a run that trained to an outcome (others: oom, crashed, ... tell nothing here)."""


class Outcome(str, Enum):
    NON_FINITE = "non-finite"
    NO_UPDATE = "no update"
    DIVERGING = "finite but diverging"
    FINE = "fine"


@dataclass(frozen=True)
class RunOutcome:
    outcome: Outcome
    step: int | None
    """The first non-finite step (NON_FINITE only)."""
    detail: str
    """The numbers behind it: losses at both ends, skipped scaler steps."""

    def text(self) -> str:
        """ "non-finite at step 9", "finite but diverging (loss 5.05 -> 11.7)", "fine (...)"."""
        if self.outcome is Outcome.NON_FINITE:
            head = "non-finite" + (f" at step {self.step}" if self.step is not None else "")
        else:
            head = self.outcome.value
        return f"{head} ({self.detail})" if self.detail else head


def _losses(row: pd.Series) -> list[float]:
    value = row.get("losses")
    if value is None or isinstance(value, float):  # absent, or NaN in a frame column
        return []
    return [float(x) for x in value]


def _ends(losses: list[float]) -> tuple[float, float]:
    """The first step's loss and the mean of the last window (up to half the steps)."""
    window = max(1, min(DIVERGE_WINDOW, len(losses) // 2))
    return losses[0], sum(losses[-window:]) / window


def classify(row: pd.Series) -> RunOutcome | None:
    """The outcome of one row; None when it did not train to an outcome (status not ok/nan)."""
    if row["status"] not in RAN:
        return None
    losses = _losses(row)
    skipped = fval(row, "scaler_skipped_steps")
    skips = f"{int(skipped)} of {len(losses)} steps skipped by the scaler" if skipped else ""
    if is_nan_run(row):
        step = fval(row, "first_nonfinite_step")
        return RunOutcome(Outcome.NON_FINITE, int(step) if step is not None else None, skips)
    if not losses:
        raise ValueError(f"row {row['case_id']} ran ({row['status']}) but recorded no losses")
    if skipped is not None and int(skipped) >= len(losses):
        return RunOutcome(Outcome.NO_UPDATE, None, skips)
    first, last = _ends(losses)
    detail = ", ".join(filter(None, [f"loss {first:.3g} -> {last:.3g}", skips]))
    if not math.isfinite(last) or last > first * (1 + DIVERGE_MARGIN):
        return RunOutcome(Outcome.DIVERGING, None, detail)
    return RunOutcome(Outcome.FINE, None, detail)


def outcome_text(row: pd.Series) -> str:
    """A row's outcome as the claims and tables write it, or its status when it did not run."""
    found = classify(row)
    return found.text() if found is not None else f"{row['status']} (no outcome)"


def nan_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The learning-rate rows on text the NaN advice is judged on: the ``nan`` family, and the
    ``stability`` family's (older runs have only those; a case serving both appears once)."""
    rows = pd.concat([family_rows(df, Family.NAN), family_rows(df, Family.STABILITY)])
    return rows[~rows.index.duplicated()] if not rows.empty else rows


def _scaler_note(rows: pd.DataFrame) -> str:
    """What ran under fp16 per engine: autocast and the gradient scaler, as the rows recorded."""
    fp16 = rows[rows["compute_dtype"] == "fp16"]
    notes = []
    for engine in sorted(set(fp16["engine"].astype(str))):
        one = fp16[fp16["engine"] == engine].iloc[0]
        flag = one.get("grad_scaler")
        if flag is None or pd.isna(flag):
            continue  # a row from before the engines recorded it
        scaler = "a gradient scaler" if bool(flag) else "no gradient scaler"
        notes.append(f"{engine}: fp16 under autocast {one.get('autocast')}, {scaler}")
    return "; ".join(notes)


def nan_table(run: RunData) -> str:
    """tables.md's NaN section: engine x learning rate -> the fp16 and bf16 outcomes."""
    title = "## NaN loss: learning rate x compute dtype x engine"
    rows = nan_rows(run.results)
    if rows.empty:
        return f"{title}\n\nnot run (no nan or stability rows in this run)"
    cells: dict[tuple[str, float], dict[str, str]] = {}
    for _, r in rows.sort_values(["engine", "lr"]).iterrows():
        cells.setdefault((str(r["engine"]), float(r["lr"])), {})[str(r["compute_dtype"])] = outcome_text(r)
    table = md_table(
        ("Engine", "Learning rate", "fp16", "bf16"),
        [(e, f"{lr:g}", c.get("fp16", "not run"), c.get("bf16", "not run")) for (e, lr), c in cells.items()],
    )
    note = (
        f"{where(rows)}. Outcomes: non-finite at step k (first non-finite loss, training stopped);"
        f" no update (the scaler skipped every step); finite but diverging (mean loss of the last"
        f" {DIVERGE_WINDOW} steps more than {DIVERGE_MARGIN:.0%} above the first step's, before any update);"
        " fine."
    )
    scaler = _scaler_note(rows)
    return f"{title}\n\n{table}\n\n{note}" + (f" {scaler}." if scaler else "")
