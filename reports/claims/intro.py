"""Lesson section "QLoRA: Quantized Training (intro)": its claims, each check beside its entry.

The lesson's opening claims: LoRA trains 99% fewer parameters; 4-bit cuts memory 4x.

Each check stands next to the lesson's numbers it compares with; `CLAIMS` lists this section's
claims in the lesson's order.
"""

from __future__ import annotations

import pandas as pd

from reports.claims.common import lesson_sized, modules_label, select, with_note, within
from reports.claims.model import Claim, Evaluation, holds, inconclusive, refuted
from reports.run.frame import RunData
from reports.run.rows import (
    LOADED,
    group_by,
    ids,
    median_of,
    num,
    present,
    quantized,
    sixteen_bit,
    stored_in_16bit,
)
from reports.units import fmt_gb

SECTION = "QLoRA: Quantized Training (intro)"

LORA_REDUCTION = 0.99
LORA_REDUCTION_TOL = 0.005  # "99%" as printed: 98.5% rounds to it


def check_lora_99(run: RunData) -> list[Evaluation]:
    """Claim "reduces the number of trainable parameters by 99%": 1 - trainable / all, per model."""
    df = run.results
    sized, note = lesson_sized(df)
    rows = select(sized, "3B-13B", ("trainable_params", "total_params"), statuses=LOADED)
    if isinstance(rows, Evaluation):
        return [with_note(rows, note)]
    out = []
    for (model, r, modules), group in group_by(rows, ["model", "lora_r", "target_modules"]):
        share = float((num(group["trainable_params"]) / num(group["total_params"])).median())
        reduction = 1 - share
        condition = f"{model}, r={int(r)} on {modules_label(modules)}"
        measured = f"trainable {share:.4%} of all params: {reduction:.2%} fewer than full fine-tuning"
        why = "; ".join(filter(None, ["1 - trainable_params / total_params", note]))
        if reduction >= LORA_REDUCTION - LORA_REDUCTION_TOL:
            out.append(holds(measured, ids(group), condition, why))
        else:
            out.append(
                refuted(
                    measured,
                    f"LoRA on {condition} cuts trainable parameters by {reduction:.1%}",
                    ids(group),
                    condition,
                    why,
                )
            )
    return out


QUANT_RATIO = 4.0
QUANT_RATIO_TOL = 0.10


def check_cut_4x(run: RunData) -> list[Evaluation]:
    """16-bit weight bytes / 4-bit weight bytes of the same model (and of its quantized layers)."""
    # The ratio depends on the embedding share, i.e. on model size: judged on the lesson's sizes.
    df, note = lesson_sized(run.results)
    four = select(quantized(stored_in_16bit(df), "nf4"), "nf4 3B-13B", ("weight_bytes",), statuses=LOADED)
    if isinstance(four, Evaluation):
        return [with_note(four, note)]
    sixteen = select(sixteen_bit(df), "16-bit 3B-13B", ("weight_bytes",), statuses=LOADED)
    if isinstance(sixteen, Evaluation):
        return [with_note(sixteen, note)]
    out: list[Evaluation] = []
    for (model, dq), group in group_by(four, ["model", "double_quant"]):
        ref = sixteen[sixteen["model"] == model]
        condition = f"{model}, nf4 double quant {'on' if dq else 'off'}"
        if ref.empty:
            out.append(inconclusive(f"no 16-bit row of {model} measured weight_bytes", condition=condition))
            continue
        b16, b4 = median_of(ref, "weight_bytes"), median_of(group, "weight_bytes")
        ratio = b16 / b4
        measured = f"16-bit {fmt_gb(b16)} / 4-bit {fmt_gb(b4)} = {ratio:.2f}x (whole model)"
        linear = linear_ratio(group)
        if linear is not None:
            measured += f"; quantized linear layers alone: {linear:.2f}x"
        evidence = ids(ref) + ids(group)
        why = (
            "weight_bytes of the 16-bit and 4-bit rows of the same model; embeddings, lm_head and norms"
            " stay 16-bit. Linear-only ratio: quantized_params x 2 bytes / (quant_data_bytes +"
            " quant_stats_bytes)" + (f"; {note}" if note else "")
        )
        if within(ratio, QUANT_RATIO, QUANT_RATIO_TOL):
            out.append(holds(measured, evidence, condition, why))
        else:
            corrected = f"4-bit storage cuts the weights of {model} {ratio:.2f}x, not 4x" + (
                f" (the quantized linear layers alone {linear:.2f}x)" if linear is not None else ""
            )
            out.append(refuted(measured, corrected, evidence, condition, why))
    return out


def linear_ratio(rows: pd.DataFrame) -> float | None:
    """16-bit bytes of the quantized layers (2 bytes per parameter) over their 4-bit bytes."""
    cols = ("quantized_params", "quant_data_bytes", "quant_stats_bytes")
    if not all(present(rows[c]).any() for c in cols):
        return None
    qparams, data, stats = (median_of(rows, c) for c in cols)
    return qparams * 2 / (data + stats)


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="lora-99pct",
        section=SECTION,
        judged_at=(
            "the lesson's LoRA config (r=16 on the seven projections) on every 3B-13B model a run loaded;"
            " counts, no training point"
        ),
        quote="reduces the number of trainable parameters by 99%",
        measures="1 - trainable_params / total_params per model and LoRA config",
        expected="at least 99% fewer trainable parameters (98.5% rounds to it)",
        tolerance=LORA_REDUCTION_TOL,
        check=check_lora_99,
    ),
    Claim(
        id="cut-4x",
        section=SECTION,
        judged_at=(
            "the lesson's 3B-13B models loaded in nf4 and in 16 bits (whole model and quantized layers "
            "alone); bytes after the load, no training point"
        ),
        quote="you immediately cut memory by 4x",
        measures=(
            "16-bit weight_bytes / nf4 weight_bytes of the same model (whole model; also the quantized linear"
            " layers alone from quantized_params, quant_data_bytes, quant_stats_bytes)"
        ),
        expected="4x (within 10%)",
        tolerance=QUANT_RATIO_TOL,
        check=check_cut_4x,
    ),
)
