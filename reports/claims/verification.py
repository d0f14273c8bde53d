"""Lesson section "Memory Verification": its claims, each check beside its entry.

The printed memory after loading the 3B model in 4-bit, and the T4 headroom it leaves.

Each check stands next to the lesson's numbers it compares with; `CLAIMS` lists this section's
claims in the lesson's order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qlora_core.cases.gpus import PROFILES
from reports.claims.common import select, within
from reports.claims.model import ON_GPU, ON_T4, Claim, Evaluation, holds, not_run, refuted
from reports.run.frame import RunData
from reports.run.rows import LOADED, ids, median_of, model_rows, num, on_gpu, quantized, where
from reports.units import fmt_gib, span

SECTION = "Memory Verification"

LESSON_3B_LOAD_GIB: dict[str, float] = {"allocated": 2.84, "reserved": 3.14}
LOAD_TOL = 0.10
LESSON_3B_APPROX_GIB = 3.0
LESSON_3B_LEFT_GIB = 12.0
HEADROOM_TOL = 0.15


def _3b_load_rows(df: pd.DataFrame) -> pd.DataFrame | Evaluation:
    """llama-3.2-3b nf4+dq rows on CUDA that measured the load, in the lesson's compute dtype.

    The lesson's T4 config computes in fp16 (bf16 on Ampere); the compute dtype can change the
    dtype of the non-quantized weights at load, so rows of other dtypes are not its output.
    """
    rows = quantized(model_rows(on_gpu(df), "llama-3.2-3b"), "nf4")
    rows = rows[rows["double_quant"]]
    rows = select(rows, "llama-3.2-3b nf4+dq", ("load_alloc_gib", "load_reserved_gib"), statuses=LOADED)
    if isinstance(rows, Evaluation):
        return rows
    lesson_dtype = next((d for d in ("fp16", "bf16") if (rows["compute_dtype"] == d).any()), None)
    if lesson_dtype is None:
        why = f"no llama-3.2-3b nf4+dq row computes in fp16 or bf16 ({', '.join(set(rows['compute_dtype']))})"
        return not_run(why, evidence=ids(rows))
    return rows[rows["compute_dtype"] == lesson_dtype]


def check_3b_load(run: RunData) -> list[Evaluation]:
    """Output "Allocated: 2.84 GB" / "Reserved: 3.14 GB" after loading the 3B model in 4-bit (GiB)."""
    rows = _3b_load_rows(run.results)
    if isinstance(rows, Evaluation):
        return [rows]
    out = []
    dtype = rows["compute_dtype"].iloc[0]
    for stat, col in (("allocated", "load_alloc_gib"), ("reserved", "load_reserved_gib")):
        values = list(num(rows[col]))
        value = float(np.median(values))
        measured = f"{stat} {span(values, fmt_gib)} over {len(values)} row(s)"
        condition = f"{stat}, compute {dtype}, {where(rows)}"
        why = f"{col} after load (the lesson prints memory_{stat}() / 1024**3, i.e. GiB)"
        if within(value, LESSON_3B_LOAD_GIB[stat], LOAD_TOL):
            out.append(holds(measured, ids(rows), condition, why))
        else:
            corrected = f"the 3B model in 4-bit shows {stat} {value:.2f} GiB after load"
            out.append(refuted(measured, corrected, ids(rows), condition, why))
    return out


def check_3b_headroom(run: RunData) -> list[Evaluation]:
    """Claim "~3GB in 4-bit, leaving 12GB": load allocation; T4 memory minus what the load reserved."""
    rows = _3b_load_rows(run.results)
    if isinstance(rows, Evaluation):
        return [rows]
    total = PROFILES["t4"].total_gib
    alloc, reserved = median_of(rows, "load_alloc_gib"), median_of(rows, "load_reserved_gib")
    left = total - reserved
    cond = f"compute {rows['compute_dtype'].iloc[0]}, {where(rows)}"
    out = []
    measured = f"load allocated {fmt_gib(alloc)}"
    why = "load_alloc_gib (GiB)"
    if within(alloc, LESSON_3B_APPROX_GIB, HEADROOM_TOL):
        out.append(holds(measured, ids(rows), f"~3GB: {cond}", why))
    else:
        out.append(
            refuted(measured, f"the 3B model takes {alloc:.2f} GiB in 4-bit", ids(rows), f"~3GB: {cond}", why)
        )
    measured = (
        f"{total:.2f} GiB (T4 as the driver reports it) - load reserved {reserved:.2f} GiB = {fmt_gib(left)}"
    )
    why = "profile total_gib (registry) minus load_reserved_gib; the CUDA context is not included"
    if within(left, LESSON_3B_LEFT_GIB, HEADROOM_TOL):
        out.append(holds(measured, ids(rows), f"leaving 12GB: {cond}", why))
    else:
        corrected = f"after loading the 3B model, {left:.1f} GiB of the T4 are left"
        out.append(refuted(measured, corrected, ids(rows), f"leaving 12GB: {cond}", why))
    return out


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="t4-3b-load",
        section=SECTION,
        judged_at=(
            "the lesson's Llama-3.2-3B in nf4 + double quant right after loading, in its T4 config's fp16"
            " (bf16 where no fp16 row); any GPU profile, no training point"
        ),
        quote="Allocated: 2.84 GB",
        measures="load_alloc_gib / load_reserved_gib of llama-3.2-3b nf4+dq rows (torch's GB = GiB)",
        expected="allocated 2.84, reserved 3.14 GiB (within 10%)",
        tolerance=LOAD_TOL,
        check=check_3b_load,
        applies_to=ON_GPU,
    ),
    Claim(
        id="t4-3b-headroom",
        section=SECTION,
        judged_at="the T4 only: the 3B model's load against the T4's 15 GB",
        quote="leaving 12GB for LoRA adapters and training state",
        measures="load_alloc_gib of llama-3.2-3b nf4+dq; T4 total_gib (registry) - load_reserved_gib, in GiB",
        expected="~3 GiB loaded, ~12 GiB left (within 15%)",
        tolerance=HEADROOM_TOL,
        check=check_3b_headroom,
        applies_to=ON_T4,
    ),
)
