"""tables.md's compute-dtype table: the lesson's fp32/fp16/bf16 rows with the tokens/s measured at
one point that differs only in compute dtype, and the stability family's outcomes per dtype (its
NaN runs and the statistic bf16-quality compares, `reports.claims.numerics`). tokens/s measured on the CPU
are labelled as not a speed measurement (`rows.cpu_speed_note`)."""

from __future__ import annotations

import pandas as pd

from qlora_core.cases.families import Family
from qlora_core.cases.gpus import PROFILES
from reports.claims.numerics import LAST_K, last_losses
from reports.markdown import md_table
from reports.run.frame import RunData
from reports.run.rows import (
    cpu_speed_note,
    family_rows,
    fval,
    is_nan_run,
    pairs,
    present,
    quantized,
    setting,
    status_summary,
    tokens_per_s_text,
)

NOT_RUN = "not run"
_LESSON_DTYPES = (
    ("float32", "fp32", "Slow", "Highest", "All GPUs"),
    ("float16", "fp16", "Fast", "Good", "Most GPUs"),
    ("bfloat16", "bf16", "Fast", "Better", "Ampere+ (A100, RTX 30xx+)"),
)


def _dtype_point(df: pd.DataFrame) -> pd.DataFrame:
    """Ok 4-bit rows at one point that differ only in compute dtype: the fp32 row's point, or the
    lesson's (nf4 + double quant) factorial point when no fp32 row ran."""
    rows = quantized(df[df["status"] == "ok"]) if not df.empty else df
    rows = rows[present(rows["tokens_per_s"])] if not rows.empty else rows
    anchors = family_rows(rows, Family.FP32)
    if anchors.empty:
        anchors = family_rows(rows, Family.FACTORIAL)
        anchors = anchors[(anchors["quant_type"] == "nf4") & anchors["double_quant"]]
    if anchors.empty:
        return anchors
    anchor = anchors.iloc[[0]]
    matched = [b for _, b in pairs(anchor, rows, vary=("compute_dtype",))]
    return pd.DataFrame(matched)


def _final_loss(row: pd.Series) -> str:
    """The statistic bf16-quality compares (`reports.claims.numerics`): the mean of the last losses; the
    final loss, labelled, for a row too short for it."""
    if is_nan_run(row):
        return "NaN"
    window = last_losses(row)
    if window is not None:
        return f"{window.mean:.3f}"
    loss = fval(row, "final_loss")
    return f"final {loss:.3f}" if loss is not None else NOT_RUN


def _stability_cells(df: pd.DataFrame, dtype: str) -> tuple[str, str]:
    rows = family_rows(df, Family.STABILITY)
    rows = rows[rows["compute_dtype"] == dtype] if not rows.empty else rows
    if rows.empty:
        return NOT_RUN, NOT_RUN
    ran = rows[rows["status"].isin({"ok", "nan"})]
    nan = sum(is_nan_run(r) for _, r in ran.iterrows())
    losses = ", ".join(
        f"lr {float(r['lr']):g}: {_final_loss(r)}" for _, r in ran.sort_values("lr").iterrows()
    )
    return f"{nan} of {len(ran)} runs", losses or f"{NOT_RUN} ({status_summary(rows)})"


def compute_dtypes(run: RunData) -> str:
    """The compute-dtype table with tokens/s at one point and the stability family's outcomes."""
    df = run.results
    point = _dtype_point(df)
    speeds = {r["compute_dtype"]: tokens_per_s_text(r) for _, r in point.iterrows()}
    rows = []
    for name, key, speed, quality, hardware in _LESSON_DTYPES:
        nan, losses = _stability_cells(df, key)
        rows.append((name, speed, speeds.get(key, NOT_RUN), quality, nan, losses, hardware))
    headers = (
        "Compute dtype",
        "Speed: lesson",
        "tokens/s: measured",
        "Quality: lesson",
        "NaN runs (stability)",
        f"Mean of the last {LAST_K} losses by lr (stability)",
        "Hardware: lesson",
    )
    at = setting(point.iloc[0]).split(",")[0] if not point.empty else "no point with several dtypes"
    profile = PROFILES.get(run.value("profile"))
    hardware = (
        f"profile {profile.name}: compute capability {profile.capability[0]}.{profile.capability[1]},"
        f" native bf16 {'yes' if profile.native_bf16 else 'no'} (datasheet, qlora_core.cases.gpus)"
        if profile and profile.is_gpu
        else "no GPU profile"
    )
    note = f"tokens/s at {at} (QLoRA, same point for every dtype). {hardware}.{cpu_speed_note(point)}"
    return "## Compute data type\n\n" + md_table(headers, rows) + "\n\n" + note
