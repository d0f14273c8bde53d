"""Lesson section "Combining QLoRA with LoRA Config": its claims, each check beside its entry.

The printed trainable-parameter counts of the lesson's LoRA config and the adapters' dtype.

Each check stands next to the lesson's numbers it compares with; `CLAIMS` lists this section's
claims in the lesson's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from qlora_core.cases.case import LESSON_TARGET_MODULES
from qlora_core.models import SHAPES
from qlora_core.models.registry import PARAM_COUNTS_TABLE
from reports.claims.common import SEVEN_MODULES, select
from reports.claims.model import Claim, Evaluation, holds, refuted
from reports.run.frame import RunData
from reports.run.rows import LOADED, NoRows, group_by, ids, model_rows, num, quantized, usable

SECTION = "Combining QLoRA with LoRA Config"

LESSON_MODEL = "llama-3.2-3b"  # the lesson's meta-llama/Llama-3.2-3B-Instruct
LESSON_TRAINABLE = 3_407_872
LESSON_ALL_PARAMS = 3_213_749_248
LESSON_TRAINABLE_PCT = "0.1061"
_MODULE_SETS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "v_proj"),
    ("q_proj", "k_proj", "v_proj"),
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    LESSON_TARGET_MODULES,
)


def lora_param_count(shape: str, r: int, modules: Sequence[str]) -> int:
    """Parameters LoRA of rank r adds on `modules` of a shape of `qlora_core.models.SHAPES`."""
    return SHAPES[shape].lora_params(r, modules)


def configs_giving(count: int) -> list[str]:
    """LoRA configs (a shape of `SHAPES`, r, module set) whose adapter count equals `count`."""
    return [
        f"r={r} on {'+'.join(m.replace('_proj', '') for m in mods)} of {shape}"
        for shape in SHAPES
        for r in (4, 8, 16, 32, 64)
        for mods in _MODULE_SETS
        if lora_param_count(shape, r, mods) == count
    ]


def check_print_trainable(run: RunData) -> list[Evaluation]:
    """print_trainable_parameters for r=16 on the seven projections of Llama-3.2-3B: from the
    rows that loaded it (4-bit), and from the session's count of the architecture without
    weights (`measurements/param_counts.csv`, every tier, the CPU's included)."""
    out: list[Evaluation] = []
    loaded = _loaded_counts(run)
    if loaded is not None:
        out += _print_evaluations(*loaded, source="")
    counted = _empty_weight_counts(run)
    if counted is not None:
        out += _print_evaluations(*counted, source=" (architecture without weights)")
    if out:
        return out
    rows = _lesson_rows(run)
    found = select(
        rows, "llama-3.2-3b r=16 seven-projection", ("trainable_params", "total_params"), statuses=LOADED
    )
    assert isinstance(found, Evaluation)  # _loaded_counts found none
    return [found]


def _lesson_rows(run: RunData) -> pd.DataFrame:
    rows = model_rows(run.results, LESSON_MODEL)
    if rows.empty:
        return rows
    return rows[(num(rows["lora_r"]) == 16) & (rows["target_modules"] == SEVEN_MODULES)]


def _loaded_counts(run: RunData) -> tuple[int, int, tuple[str, ...], str] | None:
    """(trainable, total, evidence, how) from the rows that loaded the 3B model, if any."""
    rows = usable(_lesson_rows(run), LESSON_MODEL, ("trainable_params", "total_params"), statuses=LOADED)
    if isinstance(rows, NoRows):
        return None
    trainable = int(num(rows["trainable_params"]).median())
    total = int(num(rows["total_params"]).median())
    return trainable, total, ids(rows), f"trainable_params of {len(rows)} row(s)"


def _empty_weight_counts(run: RunData) -> tuple[int, int, tuple[str, ...], str] | None:
    """(trainable, total, evidence, how) from measurements/param_counts.csv, if the session
    counted the 3B model (r=16, the seven projections)."""
    table = run.measurements.get(PARAM_COUNTS_TABLE)
    if table is None or table.empty:
        return None
    rows = table[
        (table["model"] == LESSON_MODEL)
        & (num(table["lora_r"]) == 16)
        & (table["target_modules"] == SEVEN_MODULES)
    ]
    if rows.empty:
        return None
    r = rows.iloc[-1]
    how = f"peft's count of {LESSON_MODEL} built without weights ({r['method']})"
    return int(r["trainable_params"]), int(r["total_params"]), (f"measurements/{PARAM_COUNTS_TABLE}",), how


def _print_evaluations(
    trainable: int, total: int, evidence: tuple[str, ...], how: str, source: str
) -> list[Evaluation]:
    """The three numbers print_trainable_parameters prints, each against the lesson's."""
    hand = lora_param_count(LESSON_MODEL, 16, LESSON_TARGET_MODULES)
    consistency = f"hand count from the public config {hand:,}" + (
        " agrees" if hand == trainable else f" DISAGREES with the measured {trainable:,}"
    )
    matches = configs_giving(LESSON_TRAINABLE)
    out = []
    measured = f"trainable params {trainable:,}"
    why = f"{how}; {consistency}"
    condition = "trainable params" + source
    if trainable == LESSON_TRAINABLE:
        out.append(holds(measured, evidence, condition, why))
    else:
        corrected = f"r=16 on the seven projections of Llama-3.2-3B trains {trainable:,} params"
        if matches:
            corrected += f"; the lesson's {LESSON_TRAINABLE:,} is what {' or '.join(matches)} trains"
        out.append(refuted(measured, corrected, evidence, condition, why))
    base = total - trainable
    measured = f"all params {total:,} (base {base:,} + adapters {trainable:,})"
    why = "total_params as peft counts it (adapters included, 4-bit weights counted as parameters)"
    condition = "all params" + source
    if total == LESSON_ALL_PARAMS:
        out.append(holds(measured, evidence, condition, why))
    else:
        lesson_base = LESSON_ALL_PARAMS - LESSON_TRAINABLE
        corrected = (
            f"all params {total:,}; the lesson's {LESSON_ALL_PARAMS:,} minus its trainable count leaves a"
            f" base of {lesson_base:,}, not the measured {base:,}"
        )
        out.append(refuted(measured, corrected, evidence, condition, why))
    share = f"{100 * trainable / total:.4f}"
    measured = f"trainable% {share}%"
    lesson_own = f"{100 * LESSON_TRAINABLE / LESSON_ALL_PARAMS:.4f}"
    pct_why = f"trainable / all, printed to 4 decimals (the lesson's own two counts give {lesson_own}%)"
    condition = "trainable%" + source
    if share == LESSON_TRAINABLE_PCT:
        out.append(holds(measured, evidence, condition, pct_why))
    else:
        out.append(refuted(measured, f"trainable% {share}%", evidence, condition, pct_why))
    return out


LESSON_ADAPTER_DTYPES = frozenset({"float16", "bfloat16"})


def check_adapter_dtype(run: RunData) -> list[Evaluation]:
    """Claim "LoRA adapters are trained in ... (FP16/BF16)": the dtype of the trainable params."""
    df = run.results
    rows = select(quantized(df), "4-bit", ("trainable_dtypes",), statuses=LOADED)
    if isinstance(rows, Evaluation):
        return [rows]
    out = []
    for (prep, dtype), group in group_by(rows, ["prepare_kbit", "compute_dtype"]):
        found = sorted(
            {
                d.strip().replace("torch.", "")
                for v in group["trainable_dtypes"]
                for d in str(v).split(",")
                if d.strip()
            }
        )
        condition = f"prepare_kbit {'on' if prep else 'off'}, compute {dtype}"
        measured = f"trainable dtypes: {', '.join(found)} ({len(group)} rows)"
        why = "trainable_dtypes of the rows after get_peft_model"
        if set(found) <= LESSON_ADAPTER_DTYPES:
            out.append(holds(measured, ids(group), condition, why))
        else:
            corrected = f"with {condition}, LoRA adapters are trained in {', '.join(found)}"
            out.append(refuted(measured, corrected, ids(group), condition, why))
    return out


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="print-trainable-3b",
        section=SECTION,
        judged_at=(
            "the lesson's printed config: Llama-3.2-3B, r=16 on the seven projections (rows that loaded "
            "it, and the architecture without weights); no training point"
        ),
        quote="trainable params: 3,407,872 || all params: 3,213,749,248",
        measures=(
            "trainable_params, total_params of llama-3.2-3b rows with r=16 on the seven projections, and"
            " peft's count of the architecture built without weights (measurements/param_counts.csv)"
        ),
        expected="trainable 3,407,872; all 3,213,749,248; trainable% 0.1061 (exact)",
        tolerance=0.0,
        check=check_print_trainable,
    ),
    Claim(
        id="adapter-dtype",
        section=SECTION,
        judged_at=(
            "every 4-bit row after get_peft_model, per prepare on/off and compute dtype (the profile's "
            "lesson dtype: fp16 on a T4, bf16 on Ampere and later)"
        ),
        quote="LoRA adapters are trained in full precision (FP16/BF16)",
        measures="trainable_dtypes per prepare_kbit and compute dtype",
        expected="float16 or bfloat16",
        tolerance=None,
        check=check_adapter_dtype,
    ),
)
