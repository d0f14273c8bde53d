"""Lesson section "Compute Data Type": its claims, each check beside its entry.

The compute-dtype table: float32 "Slow", bfloat16 "Better" than float16, "T4 does not support
bfloat16". The stability family's pairing lives here; the NaN advice (`issues`) reuses it.

Each check stands next to the lesson's numbers it compares with; `CLAIMS` lists this section's
claims in the lesson's order.
"""

from __future__ import annotations

import pandas as pd

from qlora_core.cases.families import Family
from qlora_core.cases.gpus import PROFILES
from reports.claims.common import lower_better, select
from reports.claims.model import ON_GPU, ON_T4, Claim, Evaluation, holds, inconclusive, not_run, refuted
from reports.claims.numerics import LAST_K, last_losses, mismatch
from reports.claims.points import DEVICE_BOUND_POINT
from reports.claims.speed import Place, device_bound_pairs, place, speed_ratio
from reports.run.frame import RunData
from reports.run.rows import (
    family_rows,
    fval,
    ids,
    is_nan_run,
    pairs,
    present,
    quantized,
    setting,
    status_summary,
    where,
)
from reports.units import pct, span

SECTION = "Compute Data Type"

SLOW_MARGIN = 0.10  # fp32 must be at least this much slower to be "Slow" next to "Fast"
QUALITY_NOISE = 0.02  # relative difference of the last losses' means treated as noise


def check_dtype_speed(run: RunData) -> list[Evaluation]:
    """float32 "Slow" vs float16/bfloat16 "Fast": tokens/s at the same device-bound point."""
    df = run.results
    rows = select(quantized(df), "4-bit", ("tokens_per_s",))
    if isinstance(rows, Evaluation):
        return [rows]
    fp32 = rows[rows["compute_dtype"] == "fp32"]
    if fp32.empty:
        return [not_run("no ok fp32-compute row with tokens/s in this run")]
    out = []
    why = f"'Slow' vs 'Fast' = fp32 at least {pct(SLOW_MARGIN)} below, the whole interval"
    for dtype in ("fp16", "bf16"):
        found = pairs(fp32, rows[rows["compute_dtype"] == dtype], vary=("compute_dtype",))
        if not found:
            out.append(not_run(f"no ok {dtype} row at the fp32 row's point", condition=f"fp32 vs {dtype}"))
            continue
        found, host_note = device_bound_pairs(found)
        if not found:
            out.append(inconclusive(why, host_note, condition=f"fp32 vs {dtype}"))
            continue
        for slow, fast in found:
            ratio = speed_ratio(slow, fast)
            measured = (
                f"fp32 {fval(slow, 'tokens_per_s'):,.0f} vs {dtype} {fval(fast, 'tokens_per_s'):,.0f}"
                f" tokens/s: fp32 at {ratio.text()}"
            )
            condition = f"fp32 vs {dtype}: {setting(fast)}, {where(pd.DataFrame([slow, fast]))}"
            evidence = (str(slow["case_id"]), str(fast["case_id"]))
            verdict_at = place(ratio.low, ratio.high, 0.0, 1 - SLOW_MARGIN)
            if verdict_at is Place.INSIDE:
                out.append(holds(measured, evidence, condition, why))
            elif verdict_at is Place.OUTSIDE:
                corrected = f"fp32 compute ran at {ratio.ratio:.2f}x the tokens/s of {dtype}: not 'Slow'"
                out.append(refuted(measured, corrected, evidence, condition, why))
            else:
                straddles = why + ": the interval straddles the margin"
                out.append(inconclusive(straddles, measured, evidence, condition))
    return out


def stability_pairs(df: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """(fp16 row, bf16 row) of the stability family at the same learning rate and point."""
    rows = family_rows(df, Family.STABILITY)
    rows = rows[rows["status"].isin({"ok", "nan"})]
    return pairs(
        rows[rows["compute_dtype"] == "fp16"], rows[rows["compute_dtype"] == "bf16"], ("compute_dtype",)
    )


def stability_gate(df: pd.DataFrame) -> list[Evaluation]:
    """not_run / inconclusive when the stability family cannot answer at all; [] when it can."""
    fam = family_rows(df, Family.STABILITY)
    if fam.empty:
        return [not_run("no stability rows in this run")]
    if not stability_pairs(df):
        return [
            inconclusive(
                f"no fp16/bf16 stability pair ran to an outcome ({status_summary(fam)})", evidence=ids(fam)
            )
        ]
    return []


def loss_text(row: pd.Series) -> str:
    """How a stability row ended: "NaN at step k", or the mean of its last losses and its final
    loss: "2.6522 (final 2.5733)"."""
    if is_nan_run(row):
        step = fval(row, "first_nonfinite_step")
        return "NaN" + (f" at step {int(step)}" if step is not None else "")
    window = last_losses(row)
    final = fval(row, "final_loss")
    final_text = f"final {final:.4f}" if final is not None else "final loss not measured"
    return f"{window.mean:.4f} ({final_text})" if window is not None else final_text


def check_bf16_quality(run: RunData) -> list[Evaluation]:
    """bfloat16 "Better" than float16: NaN outcomes of the stability rows per lr, else the mean of
    their last training losses over the same steps (`reports.claims.numerics`)."""
    df = run.results
    gate = stability_gate(df)
    if gate:
        return gate
    out = []
    for fp16, bf16 in stability_pairs(df):
        condition = f"lr {float(fp16['lr']):g}, {where(pd.DataFrame([fp16, bf16]))}"
        evidence = (str(fp16["case_id"]), str(bf16["case_id"]))
        measured = f"fp16 {loss_text(fp16)}; bf16 {loss_text(bf16)}"
        differ = mismatch((("bf16", bf16), ("fp16", fp16)))
        if differ:
            out.append(inconclusive(differ, measured, evidence, condition))
            continue
        nan16, nanb = is_nan_run(fp16), is_nan_run(bf16)
        if nan16 or nanb:
            why = f"stability rows on {fp16['model']}: NaN outcomes"
            if nan16 and not nanb:
                out.append(holds(measured, evidence, condition, why))
            elif nanb and not nan16:
                out.append(refuted(measured, "bf16 went NaN where fp16 did not", evidence, condition, why))
            else:
                out.append(inconclusive("both dtypes went NaN", measured, evidence, condition))
            continue
        a, b = last_losses(bf16), last_losses(fp16)
        if a is None or b is None:
            why = f"fewer than {LAST_K} finite training losses on a row: no mean of the last {LAST_K}"
            out.append(inconclusive(why, measured, evidence, condition))
            continue
        measured += f"; {a.text()}"
        why = (
            f"stability rows on {fp16['model']}, {a.text()}; means within {pct(QUALITY_NOISE)} count as equal"
        )
        order = lower_better(a.mean, b.mean, QUALITY_NOISE)
        if order < 0:
            out.append(holds(measured, evidence, condition, why))
        elif order > 0:
            corrected = (
                f"fp16 reached a lower mean of its last {a.size} training losses than bf16"
                f" ({b.mean:.4f} vs {a.mean:.4f})"
            )
            out.append(refuted(measured, corrected, evidence, condition, why))
        else:
            out.append(inconclusive(why + ": no difference beyond it", measured, evidence, condition))
    return out


def check_t4_bf16(run: RunData) -> list[Evaluation]:
    """Claim "T4 does not support bfloat16": native hardware, whether bf16 runs, and its speed."""
    df = run.results
    return [_t4_bf16_hardware(df), _t4_bf16_runs(df), _t4_bf16_speed(df)]


def _emulation_blocks(rows: pd.DataFrame, condition: str) -> Evaluation | None:
    """Inconclusive when the bf16 rows ran on a larger GPU standing in for the T4: that GPU has
    bf16 hardware, so neither whether bf16 runs on a T4 nor how fast shows in them."""
    bf16 = rows[rows["compute_dtype"] == "bf16"]
    if bf16.empty or not bf16["emulated"].any():
        return None
    hosts = ", ".join(sorted({str(e) for e in bf16["emulated_on"] if e})) or "a larger GPU"
    why = (
        f"emulated on {hosts}, which has bf16 hardware: whether bf16 runs on a T4, and how fast, is not shown"
    )
    measured = f"bf16 rows: {status_summary(bf16)}" if condition == "bf16 runs" else ""
    return inconclusive(why, measured, ids(bf16), condition)


def _t4_bf16_hardware(df: pd.DataFrame) -> Evaluation:
    """bf16_native of rows on a real T4; the registry's capability (a datasheet fact) otherwise."""
    condition = "hardware (native bf16)"
    real = df[~df["emulated"]]
    native = real[present(real["bf16_native"])]
    if not native.empty:
        flags = sorted({bool(v) for v in native["bf16_native"]})
        measured = f"bf16_native = {flags} on {', '.join(sorted(set(native['gpu_name'].astype(str))))}"
        if flags == [False]:
            return holds(measured, ids(native), condition, "bf16_native measured on a real T4")
        return refuted(measured, "this T4-profile GPU reports native bf16", ids(native), condition)
    t4 = PROFILES["t4"]
    capability = f"{t4.capability[0]}.{t4.capability[1]}"
    why = (
        f"datasheet fact, not measured (qlora_core.cases.gpus registry: T4 compute capability {capability});"
        " no row ran on a real T4"
    )
    measured = f"capability {capability} (datasheet)"
    if t4.native_bf16:
        return refuted(measured, "the registry gives T4 native bf16", (), condition, why)
    return holds(measured, (), condition, why)


def _t4_bf16_runs(df: pd.DataFrame) -> Evaluation:
    """Whether bf16 rows ran on a real T4 (refuting "does not support" in the sense of "cannot")."""
    condition = "bf16 runs"
    bf16 = df[df["compute_dtype"] == "bf16"]
    if bf16.empty:
        return not_run("no bf16 row on profile t4", condition=condition)
    blocked = _emulation_blocks(df, condition)
    if blocked is not None:
        return blocked
    torch_says = sorted({str(v) for v in bf16["bf16_torch_supported"].dropna()})
    torch_text = ", ".join(torch_says) or "n/a"
    measured = f"bf16 rows: {status_summary(bf16)}; torch.cuda.is_bf16_supported() = {torch_text}"
    if (bf16["status"] == "ok").any():
        corrected = (
            "T4 has no bf16 hardware (capability 7.5), but bf16 training runs on it (through emulation)"
        )
        return refuted(measured, corrected, ids(bf16), condition, "status of the bf16 rows on a real T4")
    if bf16["status"].isin({"unsupported", "cuda_error", "crashed"}).all():
        return holds(measured, ids(bf16), condition, "every bf16 row failed on a real T4")
    return inconclusive("bf16 rows neither ran ok nor failed as unsupported", measured, ids(bf16), condition)


def _t4_bf16_speed(df: pd.DataFrame) -> Evaluation:
    """bf16 vs fp16 tokens/s at the same point on a real T4."""
    condition = "bf16 speed"
    blocked = _emulation_blocks(df, condition)
    if blocked is not None:
        return blocked
    rows = select(quantized(df), "4-bit t4", ("tokens_per_s",), condition=condition)
    if isinstance(rows, Evaluation):
        return rows
    found = pairs(
        rows[rows["compute_dtype"] == "bf16"], rows[rows["compute_dtype"] == "fp16"], ("compute_dtype",)
    )
    if not found:
        return not_run("no ok bf16 and fp16 rows at the same point", condition=condition)
    ratios = [(fval(b, "tokens_per_s") or 0) / (fval(f, "tokens_per_s") or 1) for b, f in found]
    evidence = tuple(str(r["case_id"]) for pair in found for r in pair)
    measured = (
        f"bf16 at {span(ratios, lambda x: f'{x:.2f}x')} the tokens/s of fp16 over {len(found)} point(s)"
    )
    if max(ratios) <= 1 - SLOW_MARGIN:
        return holds(
            measured, evidence, condition, "bf16 clearly slower than fp16: consistent with no bf16 hardware"
        )
    return inconclusive("bf16 is not clearly slower than fp16 on this T4", measured, evidence, condition)


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="dtype-speed",
        section=SECTION,
        judged_at="the lesson names no point: fp32 vs fp16/bf16 compute at " + DEVICE_BOUND_POINT,
        quote="float32 | Slow",
        measures=(
            "tokens_per_s of the fp32-compute row vs fp16/bf16 rows at the same device-bound point"
            " (host_bound rows left out), with the 95% interval over repeats"
        ),
        expected="fp32 at least 10% slower than fp16 and bf16: the ratio's whole interval at or below 0.9",
        tolerance=SLOW_MARGIN,
        check=check_dtype_speed,
        applies_to=ON_GPU,
    ),
    Claim(
        id="bf16-quality",
        section=SECTION,
        judged_at=(
            "fp16 vs bf16 compute on the real model at the stability family's learning rates (1e-4, 2e-4,"
            " 1e-3), the same rows on every profile"
        ),
        quote="bfloat16 | Fast | Better",
        measures=(
            "stability rows fp16 vs bf16 per lr, trained alike (same steps and tokens, else not compared):"
            f" NaN outcome (status nan, first_nonfinite_step), the mean of the last {LAST_K} training"
            " losses (same steps, same batches)"
        ),
        expected=(
            f"bf16 better than fp16 (no NaN where fp16 has one; a lower mean of the last {LAST_K}"
            " losses beyond 2%)"
        ),
        tolerance=QUALITY_NOISE,
        check=check_bf16_quality,
    ),
    Claim(
        id="t4-no-bf16",
        section=SECTION,
        judged_at=(
            "the T4 only: real-T4 rows decide whether bf16 runs and how fast; an emulated T4 gives its "
            "datasheet capability only"
        ),
        quote="T4 does not support bfloat16",
        measures=(
            "bf16_native of real-T4 rows (else the registry's capability, a datasheet fact); status and "
            "bf16_torch_supported of bf16 rows; bf16 vs fp16 tokens_per_s"
        ),
        expected="no bf16 on T4 (hardware; whether it runs; speed)",
        tolerance=None,
        check=check_t4_bf16,
        applies_to=ON_T4,
    ),
)
