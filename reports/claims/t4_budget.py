"""Lesson section "T4 Budget (15GB VRAM)": its claims, each check beside its entry.

The T4 budget table for 8B at batch 4, seq 2048, component by component. (The section's last
sentence, on gradient checkpointing, is checked with the OOM ladder in `issues`.)

Each check stands next to the lesson's numbers it compares with; `CLAIMS` lists this section's
claims in the lesson's order.
"""

from __future__ import annotations

import pandas as pd

from qlora_core.cases.families import ladder_tag
from qlora_core.cases.gpus import PROFILES
from reports.claims.common import within
from reports.claims.model import ON_T4, Claim, Evaluation, holds, inconclusive, not_run, refuted
from reports.run.frame import RunData
from reports.run.rows import (
    activation_gib,
    adapter_gib,
    device_used_gib,
    family_rows,
    fval,
    needed_label,
    needed_view,
    setting,
    where,
)
from reports.units import GB, fmt_gib, pct

SECTION = "T4 Budget (15GB VRAM)"

# The T4 budget table (the lesson's numbers): component -> GB.
LESSON_T4_BUDGET: dict[str, float] = {
    "8B model (4-bit)": 4.0,
    "LoRA adapters": 0.3,
    "Optimizer (8-bit Adam)": 0.6,
    "Activations (batch=4, seq=2048)": 6.0,
    "CUDA overhead": 2.0,
    "Total": 12.9,
    "Available buffer": 2.1,
}
BUDGET_TOL = 0.25
LESSON_BUDGET_POINT: tuple[int, int] = (4, 2048)
"""(batch, seq) of the budget's activations row: the lesson's own training point for a T4."""
LESSON_T4_VRAM_GB = 15.0  # the lesson's "T4 Budget (15GB VRAM)"
# Components read at the training peak (the others are read before training starts).
BUDGET_TRAINING_STAGE = frozenset(
    {
        "Optimizer (8-bit Adam)",
        "Activations (batch=4, seq=2048)",
        "CUDA overhead",
        "Total",
        "Available buffer",
    }
)


def budget_measurements(row: pd.Series) -> dict[str, tuple[float | None, str, str]]:
    """(measured value, unit, how) per T4 budget component, for one row. Byte counts are in GB
    (the lesson's unit for them), allocator and NVML readings in GiB (T4's "15GB" is 15 GiB).

    Training-stage values are None unless the row ran ok: a peak read at an OOM is truncated.
    """
    trained = row["status"] == "ok"
    wbytes = fval(row, "weight_bytes")
    states = fval(row, "optimizer_state_bytes") if trained else None
    adapters = adapter_gib(row)
    device = device_used_gib(row) if trained else None
    reserved = fval(row, "peak_reserved_gib") if trained else None
    total = PROFILES["t4"].total_gib
    return {
        "8B model (4-bit)": (wbytes / GB if wbytes is not None else None, "GB", "weight_bytes"),
        "LoRA adapters": (
            adapters[0] if adapters else None,
            "GiB",
            adapters[1] if adapters else "lora_alloc_gib - prepare_alloc_gib",
        ),
        "Optimizer (8-bit Adam)": (
            states / GB if states is not None else None,
            "GB",
            "optimizer_state_bytes",
        ),
        "Activations (batch=4, seq=2048)": (
            activation_gib(row) if trained else None,
            "GiB",
            "peak_alloc_gib - lora_alloc_gib (with grads and optimizer states)",
        ),
        "CUDA overhead": (
            device - reserved if device is not None and reserved is not None else None,
            "GiB",
            "NVML device peak - peak_reserved_gib",
        ),
        "Total": (device, "GiB", "NVML device peak (context included)"),
        "Available buffer": (
            total - device if device is not None else None,
            "GiB",
            f"T4 {total:.1f} GiB - device peak",
        ),
    }


def budget_figures(row: pd.Series) -> dict[str, tuple[float | None, str, str, str]]:
    """(value, unit, how, label) per component: the capped row's own measurement (label ""),
    or, where it has none (training ran out of memory under the cap), its uncapped rerun's,
    labelled `needed_label` (what an OOM needs)."""
    own = budget_measurements(row)
    view = needed_view(row) if row["status"] != "ok" else None
    needed = budget_measurements(view) if view is not None else {}
    out = {}
    for component, (value, unit, how) in own.items():
        if value is None and component in needed and needed[component][0] is not None:
            out[component] = (*needed[component], needed_label(row))
        else:
            out[component] = (value, unit, how, "")
    return out


def needed_miss_text(row: pd.Series) -> str:
    """ "needs X GiB, misses the T4's 15 GiB by Y GiB (needed ...)" for an oom row whose uncapped
    rerun measured its device peak; "" otherwise."""
    value, _unit, _how, label = budget_figures(row)["Total"]
    if row["status"] == "ok" or value is None or not label:
        return ""
    total = PROFILES["t4"].total_gib
    verb = "misses" if value > total else "stays within"
    by = fmt_gib(abs(value - total))
    return f"needs {fmt_gib(value)} at its device peak, {verb} the T4's {total:.1f} GiB by {by}, {label}"


def check_t4_budget(run: RunData) -> list[Evaluation]:
    """The T4 budget table for 8B at batch 4, seq 2048: the ladder:0 row, component by component."""
    df = run.results
    rows = family_rows(df, ladder_tag(0))
    if rows.empty:
        return [not_run("no ladder:0 row (8B, b4, s2048, 8-bit Adam, no checkpointing) on t4")]
    row = rows.iloc[-1]
    evidence = (str(row["case_id"]),)
    cond = f"{setting(row)}, {where(rows)}"
    out = []
    status = row["status"]
    if status == "ok":
        device = device_used_gib(row)
        peak = f"device peak {fmt_gib(device)}" if device is not None else "no NVML peak"
        out.append(holds(f"status ok; {peak}", evidence, f"fits: {cond}", "the ladder:0 row trained"))
    elif status == "oom":
        corrected = "8B QLoRA at batch 4, seq 2048 without checkpointing runs out of memory on a T4"
        miss = needed_miss_text(row)
        if miss:
            corrected += f": it {miss}"
        measured = "status oom" + (f"; {miss}" if miss else "")
        out.append(refuted(measured, corrected, evidence, f"fits: {cond}", str(row.get("reason") or "")))
    else:
        out.append(
            inconclusive(f"ladder:0 ended {status}: {row.get('reason') or ''}", "", evidence, f"fits: {cond}")
        )
    for component, (value, unit, how, label) in budget_figures(row).items():
        expected = LESSON_T4_BUDGET[component]
        condition = f"{component}: {cond}"
        if value is None:
            truncated = status != "ok" and component in BUDGET_TRAINING_STAGE
            why = f"{how}: not measured" + (
                f" (status {status}: peaks are truncated, and no uncapped rerun measured them)"
                if truncated
                else ""
            )
            out.append(inconclusive(why, "", evidence, condition))
            continue
        measured = f"{value:.2f} {unit} ({how})" + (f", {label}" if label else "")
        why = (
            f"lesson {expected:g} GB within {pct(BUDGET_TOL)}; allocator values in GiB (T4's 15 GB is 15 GiB)"
        )
        if within(value, expected, BUDGET_TOL):
            out.append(holds(measured, evidence, condition, why))
        else:
            out.append(
                refuted(
                    measured,
                    f"{component}: {value:.2f} {unit} {label or 'measured'}",
                    evidence,
                    condition,
                    why,
                )
            )
    return out


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="t4-budget-8b",
        section=SECTION,
        judged_at=(
            "the T4 only, at the budget's own point: 8B, b4 s2048, 8-bit Adam, no checkpointing "
            "(ladder:0); an OOM under the cap judged by its uncapped need"
        ),
        quote="Activations (batch=4, seq=2048)",
        measures=(
            "the ladder:0 row on t4: status; weight_bytes (GB); adapters, activations (GiB); NVML device peak"
            " - peak_reserved_gib as CUDA overhead; T4 15 GiB - device peak as buffer; where the row ran"
            " out of memory under the cap, the training-stage components from its uncapped rerun"
            " (needed_*, labelled so) and by how much the device peak misses 15 GiB"
        ),
        expected=(
            "model 4, adapters 0.3, optimizer 0.6, activations 6, CUDA 2, total 12.9, buffer 2.1 GB; fits "
            "(each within 25%)"
        ),
        tolerance=BUDGET_TOL,
        check=check_t4_budget,
        applies_to=ON_T4,
    ),
)
