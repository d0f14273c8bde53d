"""Lesson section "NormalFloat4: The Optimal Format": its claims, each check beside its entry.

FP4's "equal spacing", NF4's levels "concentrated near zero", and NF4's better quality at FP4's
memory cost.

Each check stands next to the lesson's numbers it compares with; `CLAIMS` lists this section's
claims in the lesson's order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qlora_core.cases.families import Family
from reports.claims.common import lower_better, measurement, select, within
from reports.claims.model import Claim, Evaluation, holds, inconclusive, not_run, refuted
from reports.claims.numerics import mismatch
from reports.run.frame import RunData
from reports.run.rows import LOADED, family_rows, fval, group_by, num, pairs, quantized
from reports.units import pct

SECTION = "NormalFloat4: The Optimal Format"

QUANT_CODES_COLS = ("quant_type", "index", "value")
UNIFORM_CV = 0.05  # coefficient of variation of the gaps below which spacing counts as equal
NEAR_ZERO = 0.5


@dataclass(frozen=True)
class CodeStats:
    """Shape of a 4-bit code book (values normalized by their largest magnitude)."""

    levels: int
    gaps: tuple[float, ...]
    gap_cv: float
    near_zero: int
    """Distinct levels with |x| <= NEAR_ZERO."""

    @property
    def inner_gap(self) -> float:
        mid = len(self.gaps) // 2
        return min(self.gaps[mid - 1 : mid + 1]) if len(self.gaps) > 1 else self.gaps[0]

    @property
    def outer_gap(self) -> float:
        return max(self.gaps[0], self.gaps[-1])


def code_stats(values: Iterable[float]) -> CodeStats:
    """Spacing statistics of the distinct code values (+0 and -0 are one level)."""
    arr = np.asarray(list(values), dtype=float)
    arr = arr / np.abs(arr).max()
    distinct = np.unique(np.round(arr, 9) + 0.0)  # + 0.0 folds -0.0 into 0.0
    gaps = np.diff(distinct)
    cv = float(gaps.std() / gaps.mean())
    return CodeStats(
        len(distinct), tuple(float(g) for g in gaps), cv, int((np.abs(distinct) <= NEAR_ZERO + 1e-9).sum())
    )


def _codes(run: RunData) -> dict[str, CodeStats] | Evaluation:
    table = measurement(run, "quant_codes", QUANT_CODES_COLS)
    if isinstance(table, Evaluation):
        return table
    return {str(qt).lower(): code_stats(num(g["value"]).dropna()) for qt, g in table.groupby("quant_type")}


def _describe_codes(name: str, s: CodeStats) -> str:
    return (
        f"{name}: {s.levels} distinct levels, gaps {min(s.gaps):.4f} to {max(s.gaps):.4f}"
        f" (CV {s.gap_cv:.2f}), {s.near_zero} levels within |x|<={NEAR_ZERO}"
    )


def check_fp4_uniform(run: RunData) -> list[Evaluation]:
    """FP4 "Equal spacing across range": spacing of the 16 codes bitsandbytes really uses."""
    stats = _codes(run)
    if isinstance(stats, Evaluation):
        return [stats]
    if "fp4" not in stats:
        return [not_run("quant_codes has no fp4 rows")]
    s = stats["fp4"]
    measured = _describe_codes("fp4", s)
    why = f"quant_codes (values normalized to max |x| = 1); equal spacing means gap CV < {UNIFORM_CV}"
    if s.gap_cv < UNIFORM_CV:
        return [holds(measured, ("quant_codes",), "fp4", why)]
    corrected = (
        f"bitsandbytes' FP4 levels are not equally spaced: gaps grow from {min(s.gaps):.4f} to"
        f" {max(s.gaps):.4f}, {s.near_zero} of {s.levels} levels lie within |x|<={NEAR_ZERO}"
    )
    return [refuted(measured, corrected, ("quant_codes",), "fp4", why)]


def check_nf4_near_zero(run: RunData) -> list[Evaluation]:
    """NF4 "Concentrated near zero": more levels within |x|<=0.5 than an equally spaced code
    book of as many levels, and finer gaps near zero than at the ends."""
    stats = _codes(run)
    if isinstance(stats, Evaluation):
        return [stats]
    if "nf4" not in stats:
        return [not_run("quant_codes has no nf4 rows")]
    s = stats["nf4"]
    uniform = int((np.abs(np.linspace(-1, 1, s.levels)) <= NEAR_ZERO + 1e-9).sum())
    measured = _describe_codes("nf4", s) + f"; an equally spaced code book would have {uniform}"
    if "fp4" in stats:
        measured += f"; {_describe_codes('fp4', stats['fp4'])}"
    why = (
        "quant_codes: levels within |x|<=0.5 vs an equally spaced code book on [-1, 1];"
        " gap near zero vs at the ends"
    )
    if s.near_zero > uniform and s.inner_gap < s.outer_gap:
        return [holds(measured, ("quant_codes",), "nf4", why)]
    corrected = (
        f"NF4 has {s.near_zero} levels within |x|<={NEAR_ZERO} (an equally spaced code book: {uniform})"
    )
    return [refuted(measured, corrected, ("quant_codes",), "nf4", why)]


PPL_NOISE = 0.01  # relative perplexity / error difference treated as noise
SAME_MEMORY_TOL = 0.01


def _nf4_fp4_pairs(rows: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    return pairs(quantized(rows, "nf4"), quantized(rows, "fp4"), vary=("quant_type",))


def check_nf4_quality(run: RunData) -> list[Evaluation]:
    """NF4 vs FP4: held-out perplexity (before and after training), reconstruction error, bytes."""
    df = run.results
    out: list[Evaluation] = []
    quality = select(family_rows(df, Family.QUALITY), "quality", ("ppl_before",))
    if isinstance(quality, Evaluation):
        out.append(dataclasses.replace(quality, condition="perplexity"))
    else:
        found = _nf4_fp4_pairs(quality)
        if not found:
            out.append(not_run("no nf4 and fp4 quality rows at the same point", condition="perplexity"))
        for nf4, fp4 in found:
            dq = "on" if nf4["double_quant"] else "off"
            for col, stage in (("ppl_before", "before training"), ("ppl_after", "after training")):
                out.append(_compare_ppl(nf4, fp4, col, f"perplexity {stage}, double quant {dq}"))
    out += _quant_error_evaluations(run)
    out += _same_memory_evaluations(df)
    return out


def _compare_ppl(nf4: pd.Series, fp4: pd.Series, col: str, condition: str) -> Evaluation:
    a, b = fval(nf4, col), fval(fp4, col)
    evidence = (str(nf4["case_id"]), str(fp4["case_id"]))
    if a is None or b is None:
        return inconclusive(f"{col} not measured on both rows", evidence=evidence, condition=condition)
    measured = f"{col}: nf4 {a:.3f}, fp4 {b:.3f} ({(a - b) / b:+.2%})"
    # Perplexity after training depends on what was trained; before training, on the weights only.
    differ = mismatch((("nf4", nf4), ("fp4", fp4))) if col == "ppl_after" else None
    if differ:
        return inconclusive(differ, measured, evidence, condition)
    why = f"held-out perplexity on {nf4['model']}; differences within {pct(PPL_NOISE)} count as noise"
    order = lower_better(a, b, PPL_NOISE)
    if order < 0:
        return holds(measured, evidence, condition, why)
    if order == 0:
        return inconclusive(why + ": the difference is within it", measured, evidence, condition)
    return refuted(
        measured, f"FP4 gave lower perplexity than NF4 ({b:.3f} vs {a:.3f})", evidence, condition, why
    )


QUANT_ERROR_COLS = ("layer", "quant_type", "double_quant", "rel_error", "numel")


def _quant_error_evaluations(run: RunData) -> list[Evaluation]:
    table = measurement(run, "quant_error", QUANT_ERROR_COLS)
    if isinstance(table, Evaluation):
        return [dataclasses.replace(table, condition="reconstruction error")]
    out = []
    for (dq,), group in group_by(table, ["double_quant"]):
        condition = f"reconstruction error, double quant {'on' if dq else 'off'}"
        stats = {}
        for qt in ("nf4", "fp4"):
            sub = group[group["quant_type"].astype(str).str.lower() == qt]
            if sub.empty:
                continue
            err, weight = num(sub["rel_error"]), num(sub["numel"])
            stats[qt] = (float((err * weight).sum() / weight.sum()), float(err.median()), len(sub))
        if len(stats) < 2:
            out.append(not_run("quant_error lacks nf4 or fp4 layers", condition=condition))
            continue
        (nm, nmed, n), (fm, fmed, _) = stats["nf4"], stats["fp4"]
        measured = (
            f"relative error over {n} layers: nf4 mean {nm:.4f} / median {nmed:.4f};"
            f" fp4 mean {fm:.4f} / median {fmed:.4f} (mean weighted by numel)"
        )
        orders = {lower_better(nm, fm, PPL_NOISE), lower_better(nmed, fmed, PPL_NOISE)}
        why = f"measurement table quant_error; differences within {pct(PPL_NOISE)} count as noise"
        if orders == {-1}:
            out.append(holds(measured, ("quant_error",), condition, why))
        elif orders == {1}:
            corrected = "FP4 reconstructs the weights with lower error than NF4"
            out.append(refuted(measured, corrected, ("quant_error",), condition, why))
        else:
            out.append(
                inconclusive(
                    why + ": mean and median disagree or differ by noise",
                    measured,
                    ("quant_error",),
                    condition,
                )
            )
    return out


def _same_memory_evaluations(df: pd.DataFrame) -> list[Evaluation]:
    rows = select(quantized(df), "4-bit", ("weight_bytes",), condition="same memory", statuses=LOADED)
    if isinstance(rows, Evaluation):
        return [rows]
    seen: dict[tuple[Any, ...], tuple[pd.Series, pd.Series]] = {}
    for nf4, fp4 in _nf4_fp4_pairs(rows):
        seen.setdefault((nf4["model"], bool(nf4["double_quant"])), (nf4, fp4))
    if not seen:
        return [
            not_run("no nf4 and fp4 rows at the same point measured weight_bytes", condition="same memory")
        ]
    out = []
    for (model, dq), (nf4, fp4) in seen.items():
        a, b = fval(nf4, "weight_bytes"), fval(fp4, "weight_bytes")
        assert a is not None and b is not None
        condition = f"same memory: {model}, double quant {'on' if dq else 'off'}"
        measured = f"weight_bytes nf4 {a:,.0f}, fp4 {b:,.0f} ({(a - b) / b:+.3%})"
        evidence = (str(nf4["case_id"]), str(fp4["case_id"]))
        if within(a, b, SAME_MEMORY_TOL):
            out.append(holds(measured, evidence, condition))
        else:
            out.append(
                refuted(
                    measured, f"NF4 weights take {(a - b) / b:+.1%} the bytes of FP4", evidence, condition
                )
            )
    return out


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="fp4-uniform",
        section=SECTION,
        judged_at="bitsandbytes' FP4 code table; no training point, the same on every profile",
        quote="FP4 (uniform) | Equal spacing across range",
        measures=(
            "spacing of the distinct fp4 code values (measurement quant_codes): coefficient of variation of "
            "the gaps; levels within |x|<=0.5"
        ),
        expected="equal spacing: gap CV < 0.05",
        tolerance=UNIFORM_CV,
        check=check_fp4_uniform,
    ),
    Claim(
        id="nf4-near-zero",
        section=SECTION,
        judged_at="bitsandbytes' NF4 code table; no training point, the same on every profile",
        quote="NF4 (normal-aware) | Concentrated near zero",
        measures=(
            "nf4 code values (quant_codes): levels within |x|<=0.5 vs an equally spaced code book, and the "
            "gap near zero vs at the ends"
        ),
        expected="more levels near zero than equal spacing gives, finer gaps near zero",
        tolerance=None,
        check=check_nf4_near_zero,
    ),
    Claim(
        id="nf4-quality",
        section=SECTION,
        judged_at=(
            "NF4 vs FP4 at equal settings: the real model's held-out perplexity (quality family), "
            "per-layer reconstruction error, weight bytes of every model loaded in both"
        ),
        quote="better quality than FP4 with the same memory cost",
        measures=(
            "quality rows ppl_before/ppl_after nf4 vs fp4 (with and without double quant; ppl_after of rows"
            " trained alike, same steps and tokens); quant_error table "
            "mean/median rel_error; weight_bytes nf4 vs fp4"
        ),
        expected="NF4 lower perplexity and error (beyond 1% noise), equal bytes (within 1%)",
        tolerance=PPL_NOISE,
        check=check_nf4_quality,
    ),
)
