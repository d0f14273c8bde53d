"""Lesson section "Memory Calculation Guide": its claims, each check beside its entry.

The formula Parameters x Bits / 8 and its examples, and the training overheads (adapters,
optimizer states, activations).

Each check stands next to the lesson's numbers it compares with; `CLAIMS` lists this section's
claims in the lesson's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from qlora_core.cases.families import Family
from reports.claims.common import in_range, lesson_sized, modules_label, select, with_note, within
from reports.claims.model import ON_GPU, Claim, Evaluation, holds, inconclusive, not_run, refuted
from reports.claims.points import Judged, left_out_text, points_text, with_needed
from reports.claims.t4_budget import LESSON_BUDGET_POINT
from reports.run.frame import RunData
from reports.run.rows import (
    LOADED,
    activation_gib,
    adapter_gib,
    base_params,
    family_rows,
    fval,
    group_by,
    ids,
    median_of,
    num,
    on_gpu,
    present,
    quant_label,
    quantized,
    stored_in_16bit,
    where,
)
from reports.units import GB, fmt_gb, fmt_gib, pct, span

SECTION = "Memory Calculation Guide"

# The formula's examples (the lesson's, not measured): parameters in billions -> GB at 4 bits.
LESSON_FORMULA_SIZES_B: tuple[int, ...] = (3, 7, 8, 13)
FORMULA_TOL = 0.15


def nominal_size(params: float, sizes: Sequence[int] = LESSON_FORMULA_SIZES_B) -> int | None:
    """The lesson example size (in B) nearest to `params`, when within 12% of it."""
    best = min(sizes, key=lambda s: abs(params / 1e9 - s) / s)
    return best if abs(params / 1e9 - best) / best <= 0.12 else None


def weight_breakdown(rows: pd.DataFrame) -> str:
    """Where a 4-bit model's bytes go, from the measured byte columns."""
    cols = ("quant_data_bytes", "quant_stats_bytes", "quantized_params")
    if not all(present(rows[c]).any() for c in cols):
        return ""
    total, data, stats = (median_of(rows, c) for c in ("weight_bytes", *cols[:2]))
    base = float(np.median([base_params(r) for _, r in rows.iterrows()]))
    rest_params = base - median_of(rows, "quantized_params")
    return (
        f"4-bit payload {data / GB:.2f} GB + quant stats {stats / GB:.2f} GB + {rest_params:,.0f}"
        f" non-quantized params {(total - data - stats) / GB:.2f} GB"
    )


def check_formula(run: RunData) -> list[Evaluation]:
    """params x 4 / 8 against the measured 4-bit weight bytes, per lesson example size."""
    df = run.results
    rows = select(quantized(stored_in_16bit(df)), "4-bit", ("weight_bytes", "total_params"), statuses=LOADED)
    by_size: dict[int, list[tuple[str, pd.DataFrame]]] = {s: [] for s in LESSON_FORMULA_SIZES_B}
    if not isinstance(rows, Evaluation):
        for (model,), group in group_by(rows, ["model"]):
            lesson_cfg = group[group["double_quant"] & (group["quant_type"] == "nf4")]
            group = lesson_cfg if not lesson_cfg.empty else group
            size = nominal_size(float(np.median([base_params(r) for _, r in group.iterrows()])))
            if size is not None:
                by_size[size].append((str(model), group))
    out: list[Evaluation] = []
    for size, models in by_size.items():
        condition = f"{size}B, 4-bit"
        if not models:
            why = f"no 4-bit row of a ~{size}B model measured weight_bytes in this run"
            if isinstance(rows, Evaluation):
                why += f" ({rows.why})"
            out.append(not_run(why, condition=condition))
            continue
        for model, group in models:
            params = float(np.median([base_params(r) for _, r in group.iterrows()]))
            formula = params * 4 / 8
            wbytes = median_of(group, "weight_bytes")
            ratio = wbytes / formula
            measured = (
                f"{model} ({params:,.0f} params): formula {fmt_gb(formula)}, measured {fmt_gb(wbytes)}"
                f" = {ratio:.2f}x formula ({quant_label(group.iloc[0])})"
            )
            breakdown = weight_breakdown(group)
            why = "formula with the model's real parameter count vs weight_bytes" + (
                f"; {breakdown}" if breakdown else ""
            )
            cond = f"{condition}: {model}"
            if within(ratio, 1.0, FORMULA_TOL):
                out.append(holds(measured, ids(group), cond, why))
            else:
                corrected = f"{model} in 4-bit takes {wbytes / GB:.2f} GB, {ratio:.2f}x params x 4 / 8"
                out.append(refuted(measured, corrected, ids(group), cond, why))
    return out


LESSON_ADAPTER_GB = (0.1, 0.5)
LESSON_OPTIMIZER_GB = (1.0, 2.0)
LESSON_ACTIVATION_GB = (2.0, 8.0)
RANGE_TOL = 0.10


def check_adapter_overhead(run: RunData) -> list[Evaluation]:
    """Range "LoRA adapters: +0.1-0.5 GB", per model and LoRA config (GiB from the allocator)."""
    df = run.results
    sized, note = lesson_sized(quantized(df))
    rows = select(sized, "4-bit 3B-13B", ("trainable_params",), statuses=LOADED)
    if isinstance(rows, Evaluation):
        return [with_note(rows, note)]
    out = []
    for (model, r, modules), group in group_by(rows, ["model", "lora_r", "target_modules"]):
        values = [v for v in (adapter_gib(row) for _, row in group.iterrows()) if v is not None]
        condition = f"{model}, r={int(r)} on {modules_label(modules)}"
        if not values:
            out.append(
                inconclusive(
                    "no adapter memory could be read (allocator or dtype missing)",
                    condition=condition,
                    evidence=ids(group),
                )
            )
            continue
        gib = [v for v, _ in values]
        value = float(np.median(gib))
        measured = f"{span(gib, fmt_gib)} ({values[0][1]})"
        low, high = LESSON_ADAPTER_GB
        why = "; ".join(
            filter(None, [f"lesson range {low}-{high} GB, bounds widened by {pct(RANGE_TOL)}", note])
        )
        if in_range(value, *LESSON_ADAPTER_GB, RANGE_TOL):
            out.append(holds(measured, ids(group), condition, why))
        else:
            out.append(
                refuted(
                    measured,
                    f"LoRA adapters of {condition} take {fmt_gib(value)}",
                    ids(group),
                    condition,
                    why,
                )
            )
    return out


def check_optimizer_overhead(run: RunData) -> list[Evaluation]:
    """Range "Optimizer states: +1-2 GB": optimizer_state_bytes per model and optimizer."""
    df = run.results
    sized, note = lesson_sized(quantized(df))
    # A point that ran out of memory under a cap counts with its uncapped rerun's states.
    judged = with_needed(sized)
    rows = select(judged.rows, "4-bit 3B-13B", ("optimizer_state_bytes",), statuses=LOADED)
    if isinstance(rows, Evaluation):
        return [with_note(rows, note)]
    out = []
    low, high = LESSON_OPTIMIZER_GB
    for (model, optimizer), group in group_by(rows, ["model", "optimizer"]):
        values = list(num(group["optimizer_state_bytes"]))
        value = float(np.median(values))
        trainable = fval(group.iloc[0], "trainable_params")
        measured = f"{span(values, fmt_gb)}" + (
            f" for {trainable:,.0f} trainable params" if trainable else ""
        )
        condition = f"{model}, {optimizer}"
        why = "; ".join(
            filter(
                None,
                [f"optimizer_state_bytes (every tensor in optimizer.state); lesson {low}-{high} GB", note],
            )
        )
        points = points_text(group, judged.labels)
        if in_range(value / GB, low, high, RANGE_TOL):
            out.append(holds(measured, ids(group), condition, why, points))
        else:
            corrected = f"{optimizer} states of {model} take {fmt_gb(value)}"
            out.append(refuted(measured, corrected, ids(group), condition, why, points))
    return out


def budget_point(row: pd.Series) -> bool:
    """The row trained at the lesson's T4 budget point (batch 4, seq 2048, no accumulation)."""
    point = (fval(row, "batch_size"), fval(row, "seq_len"))
    return point == tuple(float(v) for v in LESSON_BUDGET_POINT) and (fval(row, "grad_accum") or 1) == 1


def check_activation_overhead(run: RunData) -> list[Evaluation]:
    """Range "Activation memory: +2-8 GB": peak - after-LoRA allocation at every point of the sweep
    (the lesson's T4 budget point b4 s2048 among them); a point that ran out of memory under the
    cap is judged by what its uncapped rerun needed, labelled so; a point with no figure at all
    keeps the claim from holding, and so does a run without the budget point (a shard of a tier)."""
    judged_all = with_needed(on_gpu(family_rows(run.results, Family.SWEEP)))
    rows = select(judged_all.rows, "sweep", ("peak_alloc_gib", "lora_alloc_gib"))
    if isinstance(rows, Evaluation):
        return [rows]
    out = []
    low, high = LESSON_ACTIVATION_GB
    for (gc, prep), group in group_by(judged_all.rows, ["gradient_checkpointing", "prepare_kbit"]):
        judged = Judged(group, judged_all.labels)
        kept = rows[rows["case_id"].isin(group["case_id"])]
        condition = (
            f"{', '.join(dict.fromkeys(group['model']))}, checkpointing {'on' if gc else 'off'},"
            f" prepare_kbit {'on' if prep else 'off'}, {where(group)}"
        )
        missing = left_out_text(judged.left_out(kept))
        points = judged.points(kept)
        if kept.empty:
            why = f"no point measured its peak: {missing}"
            out.append(inconclusive(why, "", ids(group), condition, points))
            continue
        # `kept` measured both figures (`select` above), so every row has its activation memory.
        values = [(v, r) for _, r in kept.iterrows() if (v := activation_gib(r)) is not None]
        gib = [v for v, _ in values]
        lowest, highest = min(values, key=lambda vr: vr[0])[1], max(values, key=lambda vr: vr[0])[1]
        measured = (
            f"{span(gib, fmt_gib)} over {len(gib)} points (lowest at {judged.point(lowest)},"
            f" highest at {judged.point(highest)})"
        )
        why = (
            "peak_alloc_gib - lora_alloc_gib (activations plus adapter gradients and optimizer states);"
            f" holds when every point lies in {low}-{high} GB widened by {pct(RANGE_TOL)}"
        )
        outside = [(v, r) for v, r in values if not in_range(v, low, high, RANGE_TOL)]
        if outside:
            at = ", ".join(f"{judged.point(r)}: {fmt_gib(v)}" for v, r in outside)
            corrected = (
                f"activation memory measured {span(gib, lambda x: f'{x:.2f}')} GiB over the sweep;"
                f" outside {low:g}-{high:g} GB at {at}"
            )
            out.append(refuted(measured, corrected, ids(group), condition, why, points))
        elif missing:
            why += f"; every measured point lies in it, but {missing}: what it needs is unknown"
            out.append(inconclusive(why, measured, ids(group), condition, points))
        elif not any(budget_point(r) for _, r in kept.iterrows()):
            why += (
                f"; every point of this run lies in it, but the lesson's T4 budget point"
                f" b{LESSON_BUDGET_POINT[0]} s{LESSON_BUDGET_POINT[1]} is not among them"
            )
            out.append(inconclusive(why, measured, ids(group), condition, points))
        else:
            out.append(holds(measured, ids(group), condition, why, points))
    return out


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="formula-examples",
        section=SECTION,
        judged_at=(
            "the formula's examples 3B, 7B, 8B, 13B at 4 bits: each model of those sizes a run loaded "
            "(13B on GPUs of 40 GB or more only)"
        ),
        quote="Parameters (B) × Bits / 8",
        measures=(
            "base params x 4 / 8 (the model's real count) vs weight_bytes of its 4-bit rows, for the lesson's"
            " 3B, 7B, 8B, 13B examples; GB = 10**9 bytes"
        ),
        expected="3B 1.5 GB, 7B 3.5 GB, 8B 4 GB, 13B 6.5 GB: measured within 15% of the formula",
        tolerance=FORMULA_TOL,
        check=check_formula,
    ),
    Claim(
        id="overhead-adapters",
        section=SECTION,
        judged_at=(
            "the lesson's 3B-13B models per LoRA config: what get_peft_model adds to the allocation; no "
            "training point"
        ),
        quote="LoRA adapters: +0.1-0.5 GB",
        measures=(
            "lora_alloc_gib - prepare_alloc_gib on CUDA (else trainable_params x dtype bytes), per "
            "model/config, GiB"
        ),
        expected="0.1-0.5 GB (bounds widened by 10%)",
        tolerance=RANGE_TOL,
        check=check_adapter_overhead,
    ),
    Claim(
        id="overhead-optimizer",
        section=SECTION,
        judged_at=(
            "the lesson's 3B-13B models per optimizer (AdamW, and the T4 budget's 8-bit Adam): states "
            "after training at any batch/seq; a point that ran out of memory under a cap judged by its "
            "uncapped need"
        ),
        quote="Optimizer states: +1-2 GB",
        measures=(
            "optimizer_state_bytes (every tensor in optimizer.state after training) per 3B-13B model and"
            " optimizer; GB = 10**9 bytes"
        ),
        expected="1-2 GB (bounds widened by 10%)",
        tolerance=RANGE_TOL,
        check=check_optimizer_overhead,
    ),
    Claim(
        id="overhead-activations",
        section=SECTION,
        judged_at=(
            'the batch sizes and sequence lengths it "depends on": the sweep at the lesson\'s config (3B, '
            "nf4 + double quant, checkpointing) over b1-b4 x s512-s2048, the T4 budget's b4 s2048 "
            "included; a point that ran out of memory under a cap judged by its uncapped need"
        ),
        quote="Activation memory: +2-8 GB",
        measures="peak_alloc_gib - lora_alloc_gib over the sweep's batch/seq points, GiB",
        expected="every point within 2-8 GB (bounds widened by 10%)",
        tolerance=RANGE_TOL,
        check=check_activation_overhead,
        applies_to=ON_GPU,
    ),
)
