"""Lesson section "Double Quantization": its claims, each check beside its entry.

The scaling factors' overhead in bytes, their stored width, and the compute cost of double
quantization.

Each check stands next to the lesson's numbers it compares with; `CLAIMS` lists this section's
claims in the lesson's order.
"""

from __future__ import annotations

import math

import pandas as pd

from reports.claims.common import measurement, select, within
from reports.claims.memory_problem import LESSON_7B_PARAMS
from reports.claims.model import ON_GPU, Claim, Evaluation, holds, inconclusive, not_run, refuted
from reports.claims.points import DEVICE_BOUND_POINT
from reports.claims.speed import Place, device_bound_pairs, place, speed_ratio
from reports.run.frame import RunData
from reports.run.rows import (
    DTYPE_BYTES,
    LOADED,
    fval,
    ids,
    median_of,
    num,
    pairs,
    present,
    quant_label,
    quantized,
    setting,
    seven_b_rows,
    where,
)
from reports.units import GB, fmt_gb, pct, span

SECTION = "Double Quantization"

LESSON_DQ_OVERHEAD_GB: dict[bool, float] = {False: 0.5, True: 0.06}
DQ_OVERHEAD_TOL = 0.25
LESSON_FACTOR_BITS: dict[bool, int] = {False: 32, True: 4}
QUANT_STATE_COLS = ("double_quant", "absmax_dtype")
# Below this many quantized parameters, per-tensor constants of a QuantState (each weight's
# 16-entry code table, the nested code and offset) weigh on bits/param and do not scale to 7B.
DQ_SCALING_MIN_QPARAMS = 1e9


def _stats_bits(
    rows: pd.DataFrame, run: RunData, dq: bool
) -> tuple[float, str, tuple[str, ...]] | Evaluation:
    """Bits of scaling factors per quantized parameter, and their source: rows of models with at
    least DQ_SCALING_MIN_QPARAMS quantized params, else the quant_state_layout table's
    stats_bits_per_param (one large weight), else inconclusive (only small models measured)."""
    condition = f"double quant {'on' if dq else 'off'}"
    group = rows[rows["double_quant"] == dq] if not rows.empty else rows
    large = group[num(group["quantized_params"]) >= DQ_SCALING_MIN_QPARAMS] if not group.empty else group
    if not large.empty:
        bits = num(large["quant_stats_bytes"]) * 8 / num(large["quantized_params"])
        models = ", ".join(dict.fromkeys(large["model"].astype(str)))
        return float(bits.median()), f"quant_stats_bytes x 8 / quantized_params of {models}", ids(large)
    table = run.measurements.get("quant_state_layout")
    if table is not None and {"double_quant", "stats_bits_per_param"} <= set(table.columns):
        match = table[table["double_quant"] == dq]
        if not match.empty and present(match["stats_bits_per_param"]).any():
            bits = float(num(match["stats_bits_per_param"]).dropna().iloc[0])
            return (
                bits,
                "stats_bits_per_param of measurement table quant_state_layout",
                ("quant_state_layout",),
            )
    if group.empty:
        return not_run(f"no 4-bit row with {condition} measured quant_stats_bytes", condition=condition)
    bits = num(group["quant_stats_bytes"]) * 8 / num(group["quantized_params"])
    why = (
        f"only models below {DQ_SCALING_MIN_QPARAMS:.0e} quantized params measured it, where per-tensor"
        " constants (code tables, offsets) inflate bits/param; no quant_state_layout table to fall back on"
    )
    return inconclusive(
        why, f"{span(list(bits), lambda x: f'{x:.4f}')} bits/quantized param", ids(group), condition
    )


def check_dq_overhead(run: RunData) -> list[Evaluation]:
    """Scaling-factor bits per quantized parameter, scaled to the quantized parameter count of
    the 7-8B shape that ran (7e9 where none did)."""
    df = run.results
    rows = select(quantized(df), "4-bit", ("quant_stats_bytes", "quantized_params"), statuses=LOADED)
    if isinstance(rows, Evaluation):
        if run.measurements.get("quant_state_layout") is None:
            return [rows]
        rows = quantized(df).iloc[0:0]
    seven = seven_b_rows(rows)
    if not seven.empty:
        target = median_of(seven, "quantized_params")
        scaling = f"scaled to {seven['model'].iloc[0]}'s {target:,.0f} quantized params (measured)"
    else:
        target = LESSON_7B_PARAMS
        scaling = "scaled to the lesson's 7e9 params (no 7-8B row measured its quantized params)"
    out = []
    for dq in (False, True):
        condition = f"double quant {'on' if dq else 'off'}"
        found = _stats_bits(rows, run, dq)
        if isinstance(found, Evaluation):
            out.append(found)
            continue
        per_param, source, evidence = found
        overhead = per_param * target / 8
        measured = f"{per_param:.4f} bits/quantized param -> {fmt_gb(overhead)} ({scaling})"
        why = f"{source}; GB = 10**9 bytes"
        if within(overhead / GB, LESSON_DQ_OVERHEAD_GB[dq], DQ_OVERHEAD_TOL):
            out.append(holds(measured, evidence, condition, why))
        else:
            corrected = f"scaling factors take ~{overhead / GB:.2f} GB for a 7-8B model with {condition}"
            out.append(refuted(measured, corrected, evidence, condition, why))
    return out


def _dtype_bits(name: str) -> int | None:
    width = DTYPE_BYTES.get(str(name).replace("torch.", "").strip())
    return None if width is None else width * 8


def check_dq_factor_dtype(run: RunData) -> list[Evaluation]:
    """Bit width of the stored scaling factors (absmax) without and with double quantization."""
    table = measurement(run, "quant_state_layout", QUANT_STATE_COLS)
    out = []
    for dq in (False, True):
        condition = f"double quant {'on' if dq else 'off'}"
        lesson = "FP32" if not dq else "4-bit"
        if isinstance(table, Evaluation):
            why = (
                f"{table.why}: bits per quantized parameter (claim dq-overhead-bytes) do not identify the"
                " factors' width without the block size"
            )
            out.append(inconclusive(why, condition=condition))
            continue
        rows = table[table["double_quant"] == dq]
        if rows.empty:
            out.append(not_run(f"quant_state_layout has no row with {condition}", condition=condition))
            continue
        row = rows.iloc[0]
        bits = fval(row, "absmax_bits") if "absmax_bits" in rows.columns else None
        if bits is None:
            bits = _dtype_bits(row["absmax_dtype"])
        if bits is None:
            out.append(inconclusive(f"unknown absmax dtype {row['absmax_dtype']!r}", condition=condition))
            continue
        measured = f"absmax {row['absmax_dtype']} ({int(bits)} bits)"
        for col in ("blocksize", "nested_absmax_dtype", "nested_blocksize"):
            if col in rows.columns and present(rows[col]).iloc[0]:
                measured += f", {col} {row[col]}"
        why = f"measurement table quant_state_layout; the lesson says {lesson}"
        if int(bits) == LESSON_FACTOR_BITS[dq]:
            out.append(holds(measured, ("quant_state_layout",), condition, why))
        else:
            corrected = (
                f"with {condition} the scaling factors are stored as {row['absmax_dtype']} ({int(bits)}-bit)"
            )
            out.append(refuted(measured, corrected, ("quant_state_layout",), condition, why))
    return out


MINOR_OVERHEAD = 0.10  # the largest slowdown still called "minor"


def check_dq_compute_overhead(run: RunData) -> list[Evaluation]:
    """tokens/s with double quantization vs without, at the same device-bound point."""
    df = run.results
    rows = select(quantized(df), "4-bit", ("tokens_per_s",))
    if isinstance(rows, Evaluation):
        return [rows]
    dq_on = rows[rows["double_quant"]]
    dq_off = rows[~rows["double_quant"]]
    found = pairs(dq_on, dq_off, vary=("double_quant",))
    if not found:
        return [not_run("no ok 4-bit rows with and without double quant at the same point")]
    found, host_note = device_bound_pairs(found)
    why = "; ".join(
        filter(None, [f"'minor' = at most {pct(MINOR_OVERHEAD)} slower, the whole interval", host_note])
    )
    if not found:
        return [inconclusive(why, host_note)]
    out = []
    for on, off in found:
        ratio = speed_ratio(on, off)
        slowdown, slow_low, slow_high = ratio.slowdown
        measured = (
            f"{fval(on, 'tokens_per_s'):,.0f} vs {fval(off, 'tokens_per_s'):,.0f} tokens/s: double quant"
            f" {slowdown:+.1%} slower [{slow_low:+.1%}, {slow_high:+.1%}] ({ratio.basis})"
        )
        condition = f"{quant_label(off)}: {setting(on)}, {where(pd.DataFrame([on]))}"
        evidence = (str(on["case_id"]), str(off["case_id"]))
        # "Minor" has no lower bound: double quantization may as well cost nothing or be faster.
        verdict_at = place(slow_low, slow_high, -math.inf, MINOR_OVERHEAD)
        if verdict_at is Place.INSIDE:
            out.append(holds(measured, evidence, condition, why))
        elif verdict_at is Place.STRADDLES:
            out.append(inconclusive(why + ": the interval straddles it", measured, evidence, condition))
        else:
            corrected = f"double quantization costs {slowdown:.0%} of tokens/s here"
            out.append(refuted(measured, corrected, evidence, condition, why))
    return out


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="dq-overhead-bytes",
        section=SECTION,
        judged_at=(
            'the lesson\'s "7B model": scaling-factor bits per quantized parameter (models above 1e9 '
            "quantized params) scaled to the 7-8B shape's quantized params"
        ),
        quote="~0.5 GB overhead for 7B model",
        measures=(
            "quant_stats_bytes x 8 / quantized_params (bits per quantized param), scaled to the 7-8B shape's "
            "quantized params; GB = 10**9 bytes"
        ),
        expected="~0.5 GB without double quant, ~0.06 GB with (within 25%)",
        tolerance=DQ_OVERHEAD_TOL,
        check=check_dq_overhead,
    ),
    Claim(
        id="dq-factor-dtype",
        section=SECTION,
        judged_at="bitsandbytes' QuantState layout with and without double quantization; no training point",
        quote="Scaling factors: 4-bit (also compact)",
        measures="absmax dtype / bits from measurement quant_state_layout, without and with double quant",
        expected="FP32 factors without double quant, 4-bit with",
        tolerance=None,
        check=check_dq_factor_dtype,
    ),
    Claim(
        id="dq-compute-overhead",
        section=SECTION,
        judged_at="the lesson names no point: double quant on vs off at " + DEVICE_BOUND_POINT,
        quote="It adds minor computational overhead",
        measures=(
            "tokens_per_s with vs without double quant at the same device-bound point (host_bound rows"
            " left out), with the 95% interval over repeats"
        ),
        expected="at most 10% slower: the slowdown's whole interval at or below 10%",
        tolerance=MINOR_OVERHEAD,
        check=check_dq_compute_overhead,
        applies_to=ON_GPU,
    ),
)
