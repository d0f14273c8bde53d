"""tables.md's OOM ladder: the lesson's OOM resolution order, step by step, as measured.

Each step's training peak is the capped run's when it trained under the profile's cap, else (it
ran out of memory there) what its uncapped rerun needed (`needed_*`), labelled so; the
table shows what each step saved against the one before and the first step that fits the cap.
The same figures decide the `oom-ladder` claim (`reports.claims.issues`).
"""

from __future__ import annotations

import pandas as pd

from qlora_core.cases.families import ladder_tag
from reports.claims.issues import LADDER_STEPS, step_change
from reports.markdown import md_table
from reports.run.frame import RunData
from reports.run.rows import PeakFigures, family_rows, fval, peak_figures, where

NOT_RUN = "not run"
# The lesson's "Solutions (in order)", in the words of its list (step 0 is its T4 budget setting).
LESSON_STEPS: tuple[str, ...] = (
    "the T4 budget setting",
    "1. Reduce batch size",
    "2. Increase gradient accumulation",
    "3. Reduce sequence length",
    "4. Enable gradient checkpointing",
)


def _peak_cell(value: float | None, peaks: PeakFigures | None, row: pd.Series) -> str:
    if peaks is None or value is None:
        return f"{NOT_RUN} (status {row['status']})"
    return f"{value:.2f} GiB" + (f" {peaks.label}" if peaks.label else "")


def _saved_cell(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "-"
    saved = before - after
    return f"{saved:+.2f} GiB ({saved / before:+.1%})" if before > 0 else f"{saved:+.2f} GiB"


def _sequence_note(fitting: pd.Series, first: pd.Series) -> str:
    """Steps are cumulative: a step after "reduce sequence length" trains the shorter sequence."""
    if int(fitting["seq_len"]) == int(first["seq_len"]):
        return ""
    seq, first_seq = int(fitting["seq_len"]), int(first["seq_len"])
    return f" It trains seq {seq}, not step 0's {first_seq}: the steps add up."


def oom_ladder(run: RunData) -> str:
    """Peak memory at every ladder step, what each step saved, and the first step that fits."""
    title = "## OOM ladder: the lesson's solutions in order\n\n"
    steps = {k: family_rows(run.results, ladder_tag(k)) for k in range(LADDER_STEPS)}
    present = [k for k, rows in steps.items() if not rows.empty]
    if not present:
        return title + f"{NOT_RUN}: no ladder rows in this run."
    rows, previous, first_fit = [], None, None
    caps = []
    for k in range(LADDER_STEPS):
        if steps[k].empty:
            rows.append((ladder_tag(k), LESSON_STEPS[k], "-", NOT_RUN, NOT_RUN, NOT_RUN, "-", "-"))
            previous = None
            continue
        row = steps[k].iloc[-1]
        peaks = peak_figures(row)
        alloc = peaks.alloc_gib if peaks else None
        before: float | None = (
            previous[1].alloc_gib if previous is not None and previous[1] is not None else None
        )
        change = step_change(previous[0], row) if previous is not None else "-"
        fits = {"ok": "yes", "oom": "no"}.get(str(row["status"]), f"status {row['status']}")
        if fits == "yes" and first_fit is None:
            first_fit = (k, row)
        cap = fval(row, "memory_cap_gib")
        if cap is not None:
            caps.append(cap)
        rows.append(
            (
                ladder_tag(k),
                LESSON_STEPS[k],
                change,
                str(row["status"]),
                _peak_cell(alloc, peaks, row),
                _peak_cell(peaks.reserved_gib if peaks else None, peaks, row),
                _saved_cell(before, alloc),
                fits,
            )
        )
        previous = (row, peaks)
    headers = (
        "Step",
        "Lesson",
        "Change",
        "Status under the cap",
        "Peak allocated",
        "Peak reserved",
        "Saved vs previous step",
        "Fits the cap",
    )
    cap_text = f"cap {max(caps):.2f} GiB" if caps else "no memory cap"
    if first_fit is not None:
        k, row = first_fit
        step = f"{ladder_tag(k)}, {LESSON_STEPS[k]}"
        fit_text = f"First step that fits ({cap_text}): {step} ({row['case_id']})."
        fit_text += _sequence_note(row, steps[present[0]].iloc[-1])
    else:
        fit_text = f"No ladder step in this run fits ({cap_text})."
    context = where(pd.concat([steps[k] for k in present]))
    return title + md_table(headers, rows) + f"\n\n{fit_text} Rows: {context}."
