"""Lesson section "The Memory Problem": its claims, each check beside its entry.

The 7B memory table by precision (weights, total with training) and "a 7B model fits
comfortably in T4's 15GB". The weights come from the `weights` family's load-only rows (FP32,
INT8, and the other precisions in the full tier) and every 7-8B row that loaded; the totals from
the rows that trained, read as `TOTAL_READING` says.

Each check stands next to the lesson's numbers it compares with; `CLAIMS` lists this section's
claims in the lesson's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from qlora_core.cases.families import Family
from qlora_core.cases.gpus import PROFILES
from reports.claims.common import select, within
from reports.claims.model import ON_GPU, ON_T4, Claim, Evaluation, holds, inconclusive, not_run, refuted
from reports.claims.points import with_needed
from reports.run.frame import RunData
from reports.run.rows import (
    LOADED,
    base_params,
    device_used_gib,
    family_rows,
    fp32_weights,
    fval,
    group_by,
    ids,
    median_of,
    model_sizes,
    needed_label,
    needed_view,
    on_gpu,
    present,
    quantized,
    setting,
    seven_b_rows,
    sixteen_bit,
    trained,
    where,
)
from reports.units import GB, GIB, fmt_gb, fmt_gib, pct, span

SECTION = "The Memory Problem"

LESSON_7B_PARAMS = 7e9  # the lesson's "7B model"
SEVEN_B_EXACT = (6.5e9, 7.5e9)  # a model whose 4-bit bytes per parameter may stand for "7B"
# What the lesson says (hypotheses, never measured values): weights and "Total with Training"
# per precision for a 7B model, in GB (10**9 bytes).
LESSON_7B_WEIGHTS_GB: dict[str, float] = {"FP32": 28.0, "FP16": 14.0, "INT8": 7.0, "INT4": 3.5}
LESSON_7B_TOTAL_GB: dict[str, float] = {"FP32": 100.0, "FP16": 56.0, "INT8": 28.0, "INT4": 10.0}
PRECISIONS: tuple[str, ...] = ("FP32", "FP16", "INT8", "INT4")
# Which rows hold each precision's weights: unquantized fp32 (load-only), 16-bit (the LoRA
# reference and load-only fp16/bf16), bitsandbytes int8 (load-only, and LoRA over it), nf4.
PRECISION_ROWS: dict[str, str] = {
    "FP32": "unquantized fp32 (weights family, load only)",
    "FP16": "16-bit fp16/bf16 (16-bit LoRA reference, weights family)",
    "INT8": "bitsandbytes int8, load_in_8bit (weights family: loaded, and LoRA over it)",
    "INT4": "nf4 (QLoRA rows, weights family)",
}
UNQUANTIZED = frozenset({"FP32", "FP16"})
# How "Total with Training" is read (tables.md says it too). The lesson's totals are about four
# times its weights (FP16 56 = 4 x 14, INT8 28 = 4 x 7): weights, gradients and AdamW's two
# moments all held at the table's precision, i.e. full fine-tuning. Nobody fine-tunes int8 or
# 4-bit weights in full, and the lesson's recipe is LoRA/QLoRA, so the suite measures the column
# as its readers train: LoRA on 16-bit weights, on int8 weights, QLoRA on nf4, AdamW, through the
# Trainer. FP32 weights are only loaded: nobody trains LoRA over fp32 weights, and a 7B's do not
# fit a 24 GB card to begin with.
TOTAL_READING = (
    "'Total with Training' is read as LoRA (r=16, seven projections, AdamW, Trainer) on the"
    " precision's weights: 16-bit LoRA for FP16, LoRA over LLM.int8() weights for INT8, QLoRA (nf4)"
    " for INT4; FP32 weights are loaded only; not full fine-tuning (the lesson's totals are ~4x its"
    " weights, what full fine-tuning with AdamW at that precision holds before activations)"
)
TRAINED_AS: dict[str, str] = {"FP16": "16-bit LoRA", "INT8": "LoRA on int8 weights", "INT4": "QLoRA (nf4)"}
WEIGHTS_TOL = 0.10
TOTAL_TOL = 0.25


def precision_rows(df: pd.DataFrame, precision: str) -> pd.DataFrame:
    """Rows of the 7-8B models that hold `precision`'s weights (see PRECISION_ROWS)."""
    rows = seven_b_rows(df)
    if precision == "FP32":
        return fp32_weights(rows)
    if precision == "FP16":
        return sixteen_bit(rows)
    return quantized(rows, "int8" if precision == "INT8" else "nf4")


# A row that ran out of memory under an emulated cap carries what the same case needed when rerun
# uncapped on the host GPU (`needed_*`, see docs/oom-needs.md): a load-only row's allocation
# after its load is the bytes its weights took there, always labelled as such.
NEEDED_LOAD = "needed_load_alloc_gib"


def needed_load_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """OOM rows whose uncapped rerun on the host GPU loaded the weights (`needed_load_alloc_gib`)."""
    if rows.empty or NEEDED_LOAD not in rows.columns:
        return rows.iloc[0:0]
    return rows[(rows["status"] == "oom") & present(rows[NEEDED_LOAD])]


def _needed_weights_evaluation(precision: str, rows: pd.DataFrame, sizes: dict, condition: str) -> Evaluation:
    """Weights of a precision whose rows ran out of memory under the cap, from their uncapped
    rerun: the allocation after the load, per base parameter (counted on the model's other rows)."""
    r = rows.iloc[0]
    model = str(r["model"])
    params = sizes[model][0]
    wbytes = float(r[NEEDED_LOAD]) * GIB
    at_7b = wbytes / params * LESSON_7B_PARAMS
    measured = (
        f"{model}: oom under the cap; {needed_label(r)}: {fmt_gib(float(r[NEEDED_LOAD]))} allocated after"
        f" load = {wbytes / params:.3f} bytes/param; x 7e9 params = {fmt_gb(at_7b)}"
    )
    why = (
        f"the capped row ran out of memory loading; {NEEDED_LOAD} of its uncapped rerun (the allocator"
        f" holds only the weights after a load-only case's load) / base params {params:,.0f}"
        f" ({sizes[model][1]}), scaled to 7e9 (GB = 10**9 bytes)"
    )
    return _verdict(precision, at_7b, wbytes / params, model, measured, ids(rows), condition, why)


def _verdict(
    precision: str,
    at_7b: float,
    per_param: float,
    model: str,
    measured: str,
    evidence: tuple[str, ...],
    condition: str,
    why: str,
) -> Evaluation:
    if within(at_7b / GB, LESSON_7B_WEIGHTS_GB[precision], WEIGHTS_TOL):
        return holds(measured, evidence, condition, why)
    corrected = (
        f"{precision} weights of a 7B model take ~{at_7b / GB:.1f} GB ({per_param:.3f} bytes/param"
        f" measured on {model})"
    )
    return refuted(measured, corrected, evidence, condition, why)


def _weights_evaluation(precision: str, rows: pd.DataFrame, condition: str) -> Evaluation:
    """Measured weight bytes of one 7-8B model at one precision, scaled per parameter to 7e9."""
    wbytes = median_of(rows, "weight_bytes")
    params = float(np.median([base_params(r) for _, r in rows.iterrows()]))
    per_param = wbytes / params
    at_7b = per_param * LESSON_7B_PARAMS
    model = rows["model"].iloc[0]
    measured = (
        f"{model}: {fmt_gb(wbytes)} for {params:,.0f} params = {per_param:.3f} bytes/param;"
        f" x 7e9 params = {fmt_gb(at_7b)}"
    )
    why = (
        f"weight_bytes / (total_params - trainable_params) of {model}, scaled to the lesson's"
        " 7e9 parameters (GB = 10**9 bytes)"
    )
    if precision not in UNQUANTIZED and not SEVEN_B_EXACT[0] <= params <= SEVEN_B_EXACT[1]:
        # Quantized bytes per parameter depend on the share of parameters that stay 16-bit
        # (embeddings, lm_head), which another vocabulary changes: no verdict for "7B" from it.
        return inconclusive(
            why + f"; {model} is not a 7B model and its 16-bit share (embeddings, lm_head) differs",
            measured,
            ids(rows),
            condition,
        )
    return _verdict(precision, at_7b, per_param, model, measured, ids(rows), condition, why)


def weights_by_precision(run: RunData, precisions: Sequence[str]) -> list[Evaluation]:
    """The weights of the 7-8B models at each of `precisions`, one Evaluation per model (and
    double-quant setting for INT4); where every row of a precision ran out of memory loading,
    its uncapped rerun's load (labelled "needed"); not_run for a precision no row loaded."""
    df = run.results
    out: list[Evaluation] = []
    for precision in precisions:
        candidates = precision_rows(df, precision)
        rows = select(
            candidates,
            f"7-8B {PRECISION_ROWS[precision]}",
            ("weight_bytes", "total_params"),
            condition=precision,
            statuses=LOADED,
        )
        if isinstance(rows, Evaluation):
            needed = needed_load_rows(candidates)
            sizes = model_sizes(df)
            for (model,), group in group_by(needed, ["model"]):
                condition = f"{precision} on {model}, {needed_label(group.iloc[0])}"
                out.append(_needed_weights_evaluation(precision, group, sizes, condition))
            if needed.empty:
                out.append(rows)
            continue
        by = ["model"] if precision in UNQUANTIZED else ["model", "double_quant"]
        for key, group in group_by(rows, by):
            condition = f"{precision} on {key[0]}"
            if precision == "INT4":
                condition += f" (nf4, double quant {'on' if key[1] else 'off'})"
            out.append(_weights_evaluation(precision, group, condition))
    return out


def check_weights_7b(run: RunData) -> list[Evaluation]:
    """The 7B table's "Memory for Weights" column, one Evaluation per precision and shape."""
    return weights_by_precision(run, PRECISIONS)


def check_training_total_7b(run: RunData) -> list[Evaluation]:
    """The 7B table's "Total with Training", read as LoRA/QLoRA training (TOTAL_READING): peak
    memory of the 7-8B rows that trained at each precision; FP32 weights are only loaded (the
    weights family), so their total is not run."""
    df = run.results
    out: list[Evaluation] = []
    for precision in PRECISIONS:
        kind = TRAINED_AS.get(precision)
        if kind is None:
            why = (
                f"no 7-8B training with {PRECISION_ROWS[precision]} weights is in the matrix: {TOTAL_READING}"
            )
            out.append(not_run(why, condition=precision))
            continue
        # A point that ran out of memory under a cap counts with what it needed uncapped, so the
        # range is the same on a profile whose cap those points exceed as on one they fit.
        judged = with_needed(on_gpu(trained(precision_rows(df, precision))))
        rows = select(judged.rows, f"7-8B {kind}", ("peak_reserved_gib",), condition=precision)
        if isinstance(rows, Evaluation):
            out.append(rows)
            continue
        expected = LESSON_7B_TOTAL_GB[precision]
        figures, totals_gb = [], []
        for _, r in rows.iterrows():
            device = device_used_gib(r)
            peak = device if device is not None else fval(r, "peak_reserved_gib")
            assert peak is not None  # select() kept only rows with peak_reserved_gib
            totals_gb.append(peak * GIB / GB)
            device_text = f", device {fmt_gib(device)}" if device is not None else ""
            label = judged.labels.get(str(r["case_id"]), "")
            figures.append(
                f"{setting(r)}: reserved {fmt_gib(fval(r, 'peak_reserved_gib') or 0)}{device_text}"
                + (f", {label}" if label else "")
            )
        measured = "; ".join(figures)
        points = judged.points(rows)
        models = ", ".join(dict.fromkeys(rows["model"]))
        condition = f"{precision}: {kind} (not full fine-tuning) on {models}, {where(rows)}"
        why = (
            f"device peak (NVML, context included; allocator reserved where NVML is absent) over"
            f" {len(rows)} setting(s) (a point that ran out of memory under a cap: what it needed uncapped);"
            " the lesson names no batch or length, so it holds when"
            f" {expected:g} GB lies within the measured range widened by {pct(TOTAL_TOL)}"
        )
        evidence = ids(judged.rows)
        if min(totals_gb) * (1 - TOTAL_TOL) <= expected <= max(totals_gb) * (1 + TOTAL_TOL):
            out.append(holds(measured, evidence, condition, why, points))
        else:
            corrected = f"{kind} training of this model peaked at {span(totals_gb, lambda x: f'{x:.1f}')} GB"
            out.append(refuted(measured, corrected, evidence, condition, why, points))
    return out


COMFORT = 0.10  # "comfortably": at least this share of the T4 left at the peak


def check_t4_fits_7b(run: RunData) -> list[Evaluation]:
    """Claim "a 7B model fits comfortably in T4's 15GB": 7-8B QLoRA compat rows on t4."""
    df = run.results
    rows = quantized(seven_b_rows(family_rows(df, Family.COMPAT)))
    if rows.empty:
        return [not_run("no 7-8B QLoRA compat row on t4")]
    total = PROFILES["t4"].total_gib
    out = []
    for _, r in rows.iterrows():
        condition = f"{setting(r)}, {where(pd.DataFrame([r]))}"
        evidence = (str(r["case_id"]),)
        if r["status"] == "oom":
            # The OOM is the verdict; what the point needed uncapped says by how much it misses.
            view = needed_view(r)
            need = device_used_gib(view) if view is not None and view["status"] == "ok" else None
            measured = "status oom" + (
                f"; {needed_label(r)}: {fmt_gib(need)} at its device peak" if need else ""
            )
            corrected = f"{r['model']} QLoRA does not fit the T4 at {setting(r)}"
            out.append(refuted(measured, corrected, evidence, condition))
            continue
        if r["status"] != "ok":
            out.append(inconclusive(f"ended {r['status']}: {r.get('reason') or ''}", "", evidence, condition))
            continue
        device = device_used_gib(r)
        used = device if device is not None else fval(r, "peak_reserved_gib")
        if used is None:
            out.append(inconclusive("no peak memory measured", "status ok", evidence, condition))
            continue
        left = total - used
        source = "NVML device peak" if device is not None else "peak_reserved_gib (no NVML)"
        measured = f"status ok; peak {fmt_gib(used)} ({source}) of {total:.1f} GiB: {fmt_gib(left)} left"
        why = f"'comfortably' = at least {pct(COMFORT)} of the T4 left; the lesson's 15GB is T4's 15 GiB"
        if left >= COMFORT * total:
            out.append(holds(measured, evidence, condition, why))
        else:
            out.append(
                refuted(
                    measured, f"{r['model']} fits with only {left:.2f} GiB left", evidence, condition, why
                )
            )
    return out


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="mem7b-weights",
        section=SECTION,
        judged_at=(
            "the table's 7B model at each precision: the 7-8B shapes' weight bytes after the load, scaled"
            " to 7e9 params (INT4 decided on a 7B shape only); a load that ran out of memory under a cap "
            "judged by its uncapped rerun"
        ),
        quote="Memory for Weights",
        measures=(
            "weight_bytes / base params of the 7-8B shapes that loaded (FP32 and INT8: the weights"
            " family), x 7e9, per precision; a row that ran out of memory loading: its uncapped"
            " rerun's allocation after the load, labelled needed; GB = 10**9 bytes"
        ),
        expected="FP32 28 GB, FP16 14 GB, INT8 7 GB, INT4 3.5 GB (within 10%)",
        tolerance=WEIGHTS_TOL,
        check=check_weights_7b,
    ),
    Claim(
        id="mem7b-training-total",
        section=SECTION,
        judged_at=(
            "the table's 7B model trained at each precision; it names no batch or length, so every 7-8B "
            "training point of the run (compat b1 s512, the ladder's 8B points from b4 s2048); a point "
            "that ran out of memory under a cap judged by its uncapped need"
        ),
        quote="Total with Training",
        measures=(
            "device peak (nvml_peak_gib - nvml_base_gib, else peak_reserved_gib) of the 7-8B rows that "
            "trained, per precision, over their batch/seq (read as LoRA/QLoRA with AdamW, see "
            "TOTAL_READING); compared in GB (10**9), shown in GiB too"
        ),
        expected="FP32 ~100 GB, FP16 ~56 GB, INT8 ~28 GB, INT4 ~10 GB (within the measured range +-25%)",
        tolerance=TOTAL_TOL,
        check=check_training_total_7b,
        applies_to=ON_GPU,
    ),
    Claim(
        id="t4-fits-7b",
        section=SECTION,
        judged_at=(
            'the T4 only ("T4\'s 15GB VRAM"): the 7-8B QLoRA compat rows at the smallest point (b1 s512) '
            "of the t4 profile"
        ),
        quote="a 7B model fits comfortably in T4's 15GB VRAM",
        measures=(
            "status and device peak of the 7-8B QLoRA compat rows on t4 vs T4's 15 GiB (registry total_gib)"
        ),
        expected="fits, with at least 10% of the T4 left",
        tolerance=COMFORT,
        check=check_t4_fits_7b,
        applies_to=ON_T4,
    ),
)
