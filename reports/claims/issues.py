"""Lesson section "Common Issues and Solutions": its claims, each check beside its entry.

The OOM resolution order, gradient checkpointing's saving (a sentence of the T4 budget section,
judged on the ladder's rows), QLoRA's slowdown, and the NaN advice.

Each check stands next to the lesson's numbers it compares with; `CLAIMS` lists this section's
claims in the lesson's order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from qlora_core.cases.families import Family, ladder_tag
from reports.claims.common import select
from reports.claims.model import ON_GPU, Claim, Evaluation, Verdict, holds, inconclusive, not_run, refuted
from reports.claims.nan import Outcome, classify, nan_rows, outcome_text
from reports.claims.numerics import mismatch
from reports.claims.points import DEVICE_BOUND_POINT, points_text, with_needed
from reports.claims.speed import Place, device_bound_pairs, place, speed_ratio
from reports.run.frame import RunData
from reports.run.rows import (
    QUANT_FIELDS,
    PeakFigures,
    activation_gib,
    family_rows,
    fval,
    ids,
    num,
    on_gpu,
    pairs,
    peak_figures,
    point_key,
    quant_label,
    quantized,
    setting,
    sixteen_bit,
    status_summary,
    where,
)
from reports.units import fmt_gib, pct, span

SECTION = "Common Issues and Solutions"

LADDER_STEPS = 5
PEAK_TOL = 0.01  # a step may not raise a peak by more than this (allocator rounding)
_LADDER_FIELDS = ("batch_size", "grad_accum", "seq_len", "gradient_checkpointing", "optimizer", "model")


def step_change(prev: pd.Series, cur: pd.Series) -> str:
    """What a ladder step changed from the one before: "batch_size 4 -> 2, grad_accum 1 -> 2"."""
    changes = [
        f"{f} {prev[f]} -> {cur[f]}" for f in _LADDER_FIELDS if point_key(prev, [f]) != point_key(cur, [f])
    ]
    return ", ".join(changes) or "no field changed"


def _ladder_measured(k: int, p: pd.Series, c: pd.Series, peaks: list[PeakFigures | None]) -> str:
    """ "ladder:0 oom, ladder:1 oom; peak alloc 21.00 -> 17.50 GiB, ...; ladder:0, ladder:1 needed
    (measured uncapped on ...)": the two steps' statuses, their peaks and where each came from."""
    before, after = peaks
    text = f"{ladder_tag(k - 1)} {p['status']}, {ladder_tag(k)} {c['status']}; "
    if before is None or after is None:
        return text + "no complete peak on both"
    text += ", ".join(
        f"peak {name} {a:.2f} -> {b:.2f} GiB"
        for name, a, b in (
            ("alloc", before.alloc_gib, after.alloc_gib),
            ("reserved", before.reserved_gib, after.reserved_gib),
        )
        if a is not None and b is not None
    )
    for step, figures in ((k - 1, before), (k, after)):
        if figures.label:
            text += f"; {ladder_tag(step)} {figures.label}"
    return text


def check_oom_ladder(run: RunData) -> list[Evaluation]:
    """Each OOM-resolution step lowers peak memory: ladder:k vs ladder:k-1.

    A step's peak is the capped run's when it trained, else, when it ran out of memory under
    the cap, its uncapped rerun's (what it needed), so the steps before the first one
    that fits are compared too. Without a peak on both steps, a step that turned an OOM into a
    run holds and one that turned a run into an OOM is refuted.
    """
    df = run.results
    steps = {k: family_rows(df, ladder_tag(k)) for k in range(LADDER_STEPS)}
    out = []
    for k in range(1, LADDER_STEPS):
        prev, cur = steps[k - 1], steps[k]
        condition = f"step {k}"
        if prev.empty or cur.empty:
            missing = ", ".join(ladder_tag(j) for j in (k - 1, k) if steps[j].empty)
            out.append(not_run(f"{missing} not in this run", condition=condition))
            continue
        p, c = prev.iloc[-1], cur.iloc[-1]
        condition = f"step {k}: {step_change(p, c)}, {where(cur)}"
        evidence = (str(p["case_id"]), str(c["case_id"]))
        before, after = peak_figures(p), peak_figures(c)
        measured = _ladder_measured(k, p, c, [before, after])
        compared = (
            [
                (a, b)
                for a, b in (
                    (before.alloc_gib, after.alloc_gib),
                    (before.reserved_gib, after.reserved_gib),
                )
                if a is not None and b is not None
            ]
            if before is not None and after is not None
            else []
        )
        why = "peak_alloc_gib and peak_reserved_gib (needed_* where the step ran out of memory under the cap)"
        if compared:
            if all(b <= a * (1 + PEAK_TOL) for a, b in compared):
                out.append(holds(measured, evidence, condition, why))
            else:
                out.append(refuted(measured, f"step {k} raised peak memory", evidence, condition, why))
        elif p["status"] == "oom" and c["status"] == "ok":
            out.append(holds(measured, evidence, condition, "the step turned an OOM into a run"))
        elif p["status"] == "ok" and c["status"] == "oom":
            out.append(
                refuted(
                    measured, f"step {k} ran out of memory after {ladder_tag(k - 1)} fit", evidence, condition
                )
            )
        else:
            was, now = f"{ladder_tag(k - 1)} {p['status']}", f"{ladder_tag(k)} {c['status']}"
            why = f"{was} and {now}: no complete peak to compare"
            out.append(inconclusive(why, measured, evidence, condition))
    return out


GC_MIN_REDUCTION = 0.05


def check_gc_activations(run: RunData) -> list[Evaluation]:
    """Gradient checkpointing reduces activation memory: rows differing only in checkpointing."""
    df = on_gpu(run.results)
    # A point that ran out of memory under a cap is compared by what it needed uncapped.
    judged = with_needed(df[df["status"].isin({"ok", "oom"})] if not df.empty else df)
    rows = judged.rows
    gc_on = rows[rows["gradient_checkpointing"]]
    gc_off = rows[~rows["gradient_checkpointing"]]
    found = pairs(gc_on, gc_off, vary=("gradient_checkpointing",))
    if not found:
        fam = family_rows(df, Family.GC)
        if fam.empty:
            return [not_run("no rows with and without checkpointing at the same point")]
        return [
            inconclusive(f"gc rows did not both run to an outcome ({status_summary(fam)})", evidence=ids(fam))
        ]
    out = []
    for on, off in found:
        condition = f"{setting(on).replace(', checkpointing on', '')}, {where(pd.DataFrame([on]))}"
        evidence = (str(on["case_id"]), str(off["case_id"]))
        speed = ""
        if fval(on, "tokens_per_s") and fval(off, "tokens_per_s"):
            speed = (
                f"; tokens/s {fval(on, 'tokens_per_s'):,.0f} with vs {fval(off, 'tokens_per_s'):,.0f} without"
            )
        if on["status"] == "ok" and off["status"] == "oom":
            out.append(holds("without checkpointing: oom; with: ok" + speed, evidence, condition, "status"))
            continue
        if on["status"] != "ok" or off["status"] != "ok":
            out.append(inconclusive(f"with {on['status']}, without {off['status']}", "", evidence, condition))
            continue
        a, b = activation_gib(on), activation_gib(off)
        if a is None or b is None:
            out.append(inconclusive("peak_alloc_gib or lora_alloc_gib missing", "", evidence, condition))
            continue
        if a < 0 or b < 0:
            why = "a training peak below the after-LoRA allocation: inconsistent memory readings"
            out.append(inconclusive(why, f"peak - after LoRA: {a:.2f} and {b:.2f} GiB", evidence, condition))
            continue
        labels = [
            f"{side} {judged.labels[str(r['case_id'])]}"
            for side, r in (("with:", on), ("without:", off))
            if str(r["case_id"]) in judged.labels
        ]
        measured = (
            f"activations (peak - after LoRA) {fmt_gib(a)} with vs {fmt_gib(b)} without"
            + "".join(f"; {label}" for label in labels)
            + speed
        )
        why = f"peak_alloc_gib - lora_alloc_gib; a reduction of at least {pct(GC_MIN_REDUCTION)}"
        points = points_text(pd.DataFrame([on, off]), judged.labels)
        if a <= b * (1 - GC_MIN_REDUCTION):
            out.append(holds(measured, evidence, condition, why, points))
        else:
            corrected = "checkpointing did not reduce activation memory here"
            out.append(refuted(measured, corrected, evidence, condition, why, points))
    return out


LESSON_SLOWDOWN = (0.10, 0.20)


def check_qlora_slower(run: RunData) -> list[Evaluation]:
    """QLoRA (nf4) tokens/s vs the 16-bit LoRA reference at the same device-bound point."""
    df = run.results
    rows = select(df, "any", ("tokens_per_s",))
    if isinstance(rows, Evaluation):
        return [rows]
    found = pairs(quantized(rows, "nf4"), sixteen_bit(rows), vary=QUANT_FIELDS)
    if not found:
        return [not_run("no ok nf4 row has an ok 16-bit reference row at the same point")]
    found, host_note = device_bound_pairs(found)
    low, high = LESSON_SLOWDOWN
    why = f"median tokens/s; the slowdown's interval against the lesson's {pct(low)}-{pct(high)}"
    if not found:
        return [inconclusive(why, host_note, condition="overall")]
    out, slowdowns = [], []
    for q, ref in found:
        ratio = speed_ratio(q, ref)
        slowdown, slow_low, slow_high = ratio.slowdown
        slowdowns.append(slowdown)
        measured = (
            f"{quant_label(q)} {fval(q, 'tokens_per_s'):,.0f} vs 16-bit {fval(ref, 'tokens_per_s'):,.0f}"
            f" tokens/s: {slowdown:+.1%} slower [{slow_low:+.1%}, {slow_high:+.1%}] ({ratio.basis})"
        )
        condition = f"{quant_label(q)}: {setting(q)}, {where(pd.DataFrame([q]))}"
        evidence: tuple[str, ...] = (str(q["case_id"]), str(ref["case_id"]))
        verdict_at = place(slow_low, slow_high, low, high)
        if verdict_at is Place.INSIDE:
            out.append(holds(measured, evidence, condition, why))
        elif verdict_at is Place.STRADDLES:
            straddles = why + ": the interval straddles the range"
            out.append(inconclusive(straddles, measured, evidence, condition))
        else:
            corrected = f"QLoRA ran {slowdown:+.0%} slower than 16-bit LoRA at {setting(q)}"
            out.append(refuted(measured, corrected, evidence, condition, why))
    evidence = tuple(str(r["case_id"]) for pair in found for r in pair)
    measured = f"{span(slowdowns, lambda x: f'{x:+.1%}')} over {len(found)} device-bound point(s)"
    why = "; ".join(filter(None, [why, host_note]))
    verdicts = {e.verdict for e in out}
    if verdicts == {Verdict.HOLDS}:
        out.append(holds(measured, evidence, "overall", why))
    elif Verdict.REFUTED in verdicts:
        corrected = f"QLoRA ran {span(slowdowns, lambda x: f'{x:+.0%}')} slower than 16-bit LoRA"
        out.append(refuted(measured, corrected, evidence, "overall", why))
    else:
        out.append(inconclusive(why + ": some intervals straddle the range", measured, evidence, "overall"))
    return out


LESSON_NAN_LR = 1e-4


def _failure_points(rows: pd.DataFrame) -> dict[str, pd.Series]:
    """Per engine, fp16's failure point: its lowest-lr row above 1e-4 that went non-finite."""
    out: dict[str, pd.Series] = {}
    high = rows[(rows["compute_dtype"] == "fp16") & (num(rows["lr"]) > LESSON_NAN_LR * (1 + 1e-9))]
    for _, r in high.sort_values("lr").iterrows():
        found = classify(r)
        if found is not None and found.outcome is Outcome.NON_FINITE:
            out.setdefault(str(r["engine"]), r)
    return out


def _grid_text(rows: pd.DataFrame) -> str:
    """Every rate's outcome: "lr 0.0001: fine (loss 5.1 -> 3.2); lr 0.1: non-finite at step 9"."""
    return "; ".join(
        f"lr {float(r['lr']):g}: {outcome_text(r)}" for _, r in rows.sort_values("lr").iterrows()
    )


def _untested(rows: pd.DataFrame, engine: str) -> Evaluation:
    """No fp16 row of `engine` went non-finite: the grid never reached a failure."""
    fp16 = rows[(rows["engine"] == engine) & (rows["compute_dtype"] == "fp16")]
    top = f" up to lr {num(fp16['lr']).max():g}" if not fp16.empty else ""
    why = f"no fp16 row{top} went non-finite: the grid never reached a failure, the advice is untested"
    return inconclusive(why, _grid_text(fp16), ids(fp16), f"{engine}, {where(rows)}")


def _remedy(remedy: pd.Series, failure: pd.Series, measured: str, what: str) -> Evaluation:
    """holds when the remedy's run is fine; refuted (saying how it ended) otherwise."""
    condition = (
        f"{failure['engine']}, fp16 failure at lr {float(failure['lr']):g}, {where(pd.DataFrame([failure]))}"
    )
    evidence = (str(failure["case_id"]), str(remedy["case_id"]))
    why = f"{what}: holds when that run is fine (no non-finite step, no skipped-out run, no divergence)"
    found = classify(remedy)
    if found is None:
        return inconclusive(
            f"{what} did not run to an outcome ({remedy['status']})", measured, evidence, condition
        )
    differ = mismatch(((what, remedy), (f"fp16 at lr {float(failure['lr']):g}", failure)))
    if differ:
        return inconclusive(differ, measured, evidence, condition)
    if found.outcome is Outcome.FINE:
        return holds(measured, evidence, condition, why)
    return refuted(measured, f"{what} was {found.text()}", evidence, condition, why)


def _at_failure_points(
    run: RunData, judge: Callable[[pd.DataFrame, pd.Series], Evaluation]
) -> list[Evaluation]:
    """Per engine: `judge(rows of that engine, fp16's failure row)`, or inconclusive where the
    grid never reached a failure; not run without nan or stability rows."""
    rows = nan_rows(run.results)
    if rows.empty:
        return [not_run("no nan or stability rows in this run")]
    failures = _failure_points(rows)
    return [
        judge(rows[rows["engine"] == engine], failures[engine])
        if engine in failures
        else _untested(rows, engine)
        for engine in sorted(set(rows["engine"].astype(str)))
    ]


def _lr_remedy(rows: pd.DataFrame, failure: pd.Series) -> Evaluation:
    """fp16 at 1e-4 beside fp16's failure point (same settings but the lr)."""
    fp16 = rows[rows["compute_dtype"] == "fp16"]
    low = fp16[np.isclose(num(fp16["lr"]), LESSON_NAN_LR)]
    lows = [a for a, _ in pairs(low, pd.DataFrame([failure]), ("lr",))]
    if not lows:
        why = "no fp16 row at lr 1e-4 at the failure point's settings"
        return inconclusive(why, _grid_text(fp16), ids(fp16), str(failure["engine"]))
    return _remedy(lows[0], failure, _grid_text(fp16), "fp16 at lr 1e-4")


def _bf16_remedy(rows: pd.DataFrame, failure: pd.Series) -> Evaluation:
    """bf16 at fp16's failure point (same settings but the dtype)."""
    bf16 = rows[rows["compute_dtype"] == "bf16"]
    twins = [b for _, b in pairs(pd.DataFrame([failure]), bf16, ("compute_dtype",))]
    lr = f"lr {float(failure['lr']):g}"
    measured = f"fp16 {outcome_text(failure)}; bf16 " + (outcome_text(twins[0]) if twins else "not run")
    if not twins:
        why = f"no bf16 row at {lr}, fp16's failure point"
        return inconclusive(why, measured, (str(failure["case_id"]),), str(failure["engine"]))
    return _remedy(twins[0], failure, f"{lr}: {measured}", f"bf16 at {lr}")


def check_nan_lr(run: RunData) -> list[Evaluation]:
    """Advice "Reduce to 1e-4": per engine, at fp16's failure point, is the same run at 1e-4 fine?"""
    return _at_failure_points(run, _lr_remedy)


def check_nan_bf16(run: RunData) -> list[Evaluation]:
    """Advice "Use bfloat16": per engine, at fp16's failure point, is bf16 at the same rate fine?"""
    return _at_failure_points(run, _bf16_remedy)


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="oom-ladder",
        section=SECTION,
        judged_at=(
            'the lesson\'s "Solutions (in order)" from its T4 budget point (8B b4 s2048, 8-bit Adam): '
            "batch 2, batch 1 with accumulation, seq 1024, checkpointing; a step that ran out of memory "
            "under a cap judged by its uncapped need"
        ),
        quote="Solutions (in order)",
        measures=(
            "peak_alloc_gib / peak_reserved_gib (and status) of ladder:0..4, step to step; a step that ran"
            " out of memory under the cap by its uncapped rerun's needed_* peaks (labelled so)"
        ),
        expected="each step lowers peak memory (a rise within 1% counts as none)",
        tolerance=PEAK_TOL,
        check=check_oom_ladder,
        applies_to=ON_GPU,
    ),
    Claim(
        id="gc-activations",
        section="T4 Budget (15GB VRAM)",
        judged_at=(
            "every pair of points differing only in checkpointing (the gc family at the lesson's 3B "
            "point; the ladder's 8B b1 s1024 step); a point that ran out of memory under a cap judged by "
            "its uncapped need"
        ),
        quote="you can further reduce activation memory",
        measures=(
            "peak_alloc_gib - lora_alloc_gib (and status) of rows differing only in gradient checkpointing"
        ),
        expected="lower with checkpointing (by at least 5%)",
        tolerance=GC_MIN_REDUCTION,
        check=check_gc_activations,
        applies_to=ON_GPU,
    ),
    Claim(
        id="qlora-slower",
        section=SECTION,
        judged_at="the lesson names no point: nf4 vs 16-bit LoRA at " + DEVICE_BOUND_POINT,
        quote="10-20% slower than FP16 LoRA",
        measures=(
            "tokens_per_s of nf4 rows vs the 16-bit reference at the same model, batch, seq, dtype and"
            " engine, at device-bound points (host_bound rows left out), with the 95% interval over repeats"
        ),
        expected="10-20% slower: the slowdown's whole interval inside 10-20%",
        tolerance=None,
        check=check_qlora_slower,
        applies_to=ON_GPU,
    ),
    Claim(
        id="nan-lr",
        section=SECTION,
        judged_at=(
            "the lesson's 1e-4 at fp16's failure point: the nan family's lowest rate above 1e-4 where "
            "fp16 went non-finite, per engine"
        ),
        quote="Learning rate too high → Reduce to 1e-4",
        measures=(
            "nan-family rows per engine (core loop, Trainer): fp16's lowest lr above 1e-4 that went"
            " non-finite (first_nonfinite_step), and the outcome of the same run at lr 1e-4"
            " (reports.claims.nan.classify: non-finite at step k, no update, finite but diverging, fine),"
            " trained alike (the same tokens a step, through the failure's step at least)"
        ),
        expected="at fp16's failure point, the run at lr 1e-4 is fine",
        tolerance=None,
        check=check_nan_lr,
    ),
    Claim(
        id="nan-bf16",
        section=SECTION,
        judged_at=(
            "bf16 at fp16's failure point: the nan family's lowest rate above 1e-4 where fp16 went "
            "non-finite, per engine"
        ),
        quote="Numerical instability → Use bfloat16",
        measures=(
            "nan-family rows per engine: the outcome of bf16 at fp16's failure point (its lowest lr"
            " above 1e-4 that went non-finite), classified by reports.claims.nan.classify, trained alike (the"
            " same tokens a step, through the failure's step at least)"
        ),
        expected="at fp16's failure point, bf16 at the same lr is fine (finite and not diverging)",
        tolerance=None,
        check=check_nan_bf16,
    ),
)
