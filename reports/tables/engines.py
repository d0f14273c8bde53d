"""tables.md's "core loop vs Trainer vs SFTTrainer": one point trained by every engine.

The same case through the core loop, `transformers.Trainer` and TRL's `SFTTrainer` (`Case.engine`).
A difference from the loop of more than `ATTRIBUTE_ABOVE` in tokens/s or peak memory is set beside
what the rows measured differently (mixed precision, the adapters' trained dtype, the optimizer
states); where no measured field differs, the table says so instead of guessing a cause.
"""

from __future__ import annotations

import pandas as pd

from reports.markdown import md_table
from reports.run.frame import RunData
from reports.run.rows import (
    POINT_FIELDS,
    fval,
    point_key,
    quant_label,
    setting,
    speed_is_measured,
    tokens_per_s_text,
)
from reports.units import fmt_size

ATTRIBUTE_ABOVE = 0.05  # a relative difference from the loop that the table explains
_REFERENCE = "loop"
_ENGINE_ORDER = ("loop", "trainer", "sft")
ENGINE_NAMES = {"loop": "core loop", "trainer": "transformers.Trainer", "sft": "TRL SFTTrainer"}
_COMPARED = (("tokens/s", "tokens_per_s"), ("peak allocated", "peak_alloc_gib"))


def engine_of(row: pd.Series) -> str:
    """The engine that trained a row."""
    # Rows stored before the engine axis existed trained in the core loop.
    value = row.get("engine")
    return value if isinstance(value, str) and value else _REFERENCE


def _relative(row: pd.Series, ref: pd.Series, col: str) -> float | None:
    mine, base = fval(row, col), fval(ref, col)
    if mine is None or base is None or base == 0:
        return None
    return mine / base - 1.0


def measured_causes(row: pd.Series, ref: pd.Series) -> list[str]:
    """What `row` measured differently from the loop's `ref` (fields, not guesses)."""
    causes = []
    named = (("autocast", "autocast"), ("grad_scaler", "gradient scaler"), ("trained_dtypes", "adapters"))
    for col, what in named:
        if str(row.get(col)) != str(ref.get(col)):
            causes.append(f"{what} {row.get(col)} (loop: {ref.get(col)})")
    mine, base = fval(row, "optimizer_state_bytes"), fval(ref, "optimizer_state_bytes")
    if mine is not None and base is not None and mine != base:
        causes.append(f"optimizer states {fmt_size(mine)} (loop: {fmt_size(base)})")
    return causes


def attribution(row: pd.Series, ref: pd.Series) -> str:
    """The differences above ATTRIBUTE_ABOVE, each with the measured causes or 'unexplained'."""
    big = []
    for label, col in _COMPARED:
        if col == "tokens_per_s" and not speed_is_measured(row):
            continue  # a CPU row's tokens/s is no speed measurement (rows.CPU_SPEED_LABEL)
        change = _relative(row, ref, col)
        if change is not None and abs(change) > ATTRIBUTE_ABOVE:
            big.append(f"{label} {change:+.1%}")
    if not big:
        return f"within {ATTRIBUTE_ABOVE:.0%} of the loop"
    causes = measured_causes(row, ref)
    why = "; ".join(causes) if causes else "no measured field differs: cause not measured"
    return f"{', '.join(big)}: {why}{_unaccounted(row, ref)}"


def versus_loop(row: pd.Series, ref: pd.Series) -> str:
    """The table's last cell: a row that did not train says why (its reason's first line, where
    an `unsupported` row names the refusal and its cause); otherwise its `attribution`."""
    if row["status"] != "ok":
        reason = str(row.get("reason") or "-")
        return f"{row['status']}: {reason.splitlines()[0]}"
    if engine_of(row) == _REFERENCE:
        return "-"
    if ref["status"] != "ok":
        return f"not compared: the loop's row is {ref['status']}"
    return attribution(row, ref)


def _unaccounted(row: pd.Series, ref: pd.Series) -> str:
    """How much of a peak-memory difference the measured byte fields account for."""
    peak, base_peak = fval(row, "peak_alloc_gib"), fval(ref, "peak_alloc_gib")
    states, base_states = fval(row, "optimizer_state_bytes"), fval(ref, "optimizer_state_bytes")
    if peak is None or base_peak is None or states is None or base_states is None:
        return ""
    if abs(peak / base_peak - 1) <= ATTRIBUTE_ABOVE:
        return ""
    accounted = (states - base_states) / 2**30
    return (
        f" (the optimizer states account for {accounted:+.2f} of the {peak - base_peak:+.2f} GiB;"
        " the rest is measured by no field)"
    )


def engine_groups(df: pd.DataFrame) -> list[pd.DataFrame]:
    """Rows of one point (every Case field but the engine), where a loop row and another engine ran."""
    fields = [f for f in POINT_FIELDS if f != "engine"]
    groups: dict[tuple, list[int]] = {}
    for index, row in df.iterrows():
        groups.setdefault(point_key(row, fields), []).append(index)
    out = []
    for indices in groups.values():
        rows = df.loc[indices]
        engines = {engine_of(r) for _, r in rows.iterrows()}
        if _REFERENCE in engines and len(engines) > 1:
            out.append(rows.assign(_order=[_ENGINE_ORDER.index(engine_of(r)) for _, r in rows.iterrows()]))
    return [g.sort_values("_order").drop(columns="_order") for g in out]


def _is_set(value: object) -> bool:
    return value is not None and value is not pd.NA and bool(value)


def _gib(value: float) -> str:
    return f"{value:.2f} GiB"


def _cell(row: pd.Series, col: str, fmt) -> str:
    value = fval(row, col)
    return fmt(value) if value is not None else "-"


def engine_comparison(run: RunData) -> str:
    """The section: one table per point that more than one engine trained."""
    title = "## Core loop vs Trainer vs SFTTrainer\n\n"
    groups = engine_groups(run.results)
    if not groups:
        return title + "not run (no point of this run was trained by the loop and another engine)"
    headers: tuple[str, ...] = (
        "Engine",
        "Status",
        "Tokens/s",
        "Peak alloc",
        "Reserved",
        "NVML",
        "Final loss",
        "Autocast",
    )
    headers += ("vs loop",)
    parts = []
    for rows in groups:
        ref = next(r for _, r in rows.iterrows() if engine_of(r) == _REFERENCE)
        table = [
            (
                engine_of(row),
                row["status"],
                tokens_per_s_text(row),
                _cell(row, "peak_alloc_gib", _gib),
                _cell(row, "peak_reserved_gib", _gib),
                _cell(row, "nvml_peak_gib", _gib),
                _cell(row, "final_loss", lambda v: f"{v:.4f}"),
                f"{row.get('autocast') or '-'}{' + scaler' if _is_set(row.get('grad_scaler')) else ''}",
                versus_loop(row, ref),
            )
            for _, row in rows.iterrows()
        ]
        parts.append(f"{quant_label(ref)}: {setting(ref)}\n\n" + md_table(headers, table))
    note = (
        f"Each engine trains the same token batches. A difference from the loop above"
        f" {ATTRIBUTE_ABOVE:.0%} is listed with the fields its row measured differently."
    )
    return title + "\n\n".join(parts) + "\n\n" + note
