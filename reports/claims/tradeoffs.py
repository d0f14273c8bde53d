"""Lesson section "QLoRA vs LoRA Trade-offs": its claims, each check beside its entry.

The trade-off table: memory for a 7B model, quality, and T4 / A100 compatibility.

Each check stands next to the lesson's numbers it compares with; `CLAIMS` lists this section's
claims in the lesson's order.
"""

from __future__ import annotations

import math

import pandas as pd

from qlora_core.cases.families import Family
from reports.claims.common import select
from reports.claims.memory_problem import WEIGHTS_TOL, weights_by_precision
from reports.claims.model import ON_A100, ON_T4, Claim, Evaluation, holds, inconclusive, not_run, refuted
from reports.claims.nf4 import PPL_NOISE
from reports.claims.numerics import mismatch, trained_tokens
from reports.run.frame import RunData
from reports.run.rows import (
    QUANT_FIELDS,
    SEVENTY_B_CLASS_MIN,
    family_rows,
    fval,
    model_sizes,
    pairs,
    quant_label,
    quantized,
    sixteen_bit,
)
from reports.units import pct

SECTION = "QLoRA vs LoRA Trade-offs"


def check_tradeoff_memory_7b(run: RunData) -> list[Evaluation]:
    """The trade-off table's "Memory for 7B model": ~14 GB (16-bit) vs ~3.5 GB (4-bit)."""
    return weights_by_precision(run, ("FP16", "INT4"))


SLIGHT_QUALITY = 0.10  # a perplexity gap above this is not "slightly"
MIN_FINETUNE_TOKENS = 50_000  # tokens trained before a fine-tuned quality gap is judged


def check_tradeoff_quality(run: RunData) -> list[Evaluation]:
    """Quality "Slightly higher" (LoRA) vs "Slightly lower" (QLoRA): held-out perplexity after training."""
    df = run.results
    rows = select(family_rows(df, Family.QUALITY), "quality", ("ppl_after",))
    if isinstance(rows, Evaluation):
        return [rows]
    found = pairs(quantized(rows, "nf4"), sixteen_bit(rows), vary=QUANT_FIELDS)
    if not found:
        return [not_run("no ok nf4 quality row has an ok 16-bit reference at the same point")]
    out = []
    for q, ref in found:
        a, b = fval(q, "ppl_after"), fval(ref, "ppl_after")
        assert a is not None and b is not None
        gap = (a - b) / b
        trained = min(trained_tokens(q), trained_tokens(ref))
        measured = (
            f"ppl_after {quant_label(q)} {a:.3f} vs 16-bit {b:.3f} ({gap:+.2%}) after {trained:,} tokens"
        )
        condition = f"{quant_label(q)} vs 16-bit on {q['model']}"
        evidence = (str(q["case_id"]), str(ref["case_id"]))
        why = f"noise {pct(PPL_NOISE)}; 'slightly' = QLoRA worse by at most {pct(SLIGHT_QUALITY)}"
        differ = mismatch(((quant_label(q), q), ("16-bit", ref)))
        if differ:
            out.append(inconclusive(differ, measured, evidence, condition))
        elif trained < MIN_FINETUNE_TOKENS:
            # The claim is about fine-tuned models; after a few thousand tokens the gap is still
            # the quantization gap of the untrained weights (the CPU tier trains 2,560 tokens).
            out.append(
                inconclusive(
                    why + f": fewer than {MIN_FINETUNE_TOKENS:,} tokens trained, too little to judge"
                    " fine-tuned quality",
                    measured,
                    evidence,
                    condition,
                )
            )
        elif abs(gap) <= PPL_NOISE:
            out.append(inconclusive(why + ": the gap is within noise", measured, evidence, condition))
        elif gap <= SLIGHT_QUALITY and gap > 0:
            out.append(holds(measured, evidence, condition, why))
        elif gap < 0:
            out.append(
                refuted(
                    measured,
                    f"QLoRA reached {-gap:.1%} lower perplexity than 16-bit LoRA",
                    evidence,
                    condition,
                    why,
                )
            )
        else:
            out.append(
                refuted(
                    measured, f"QLoRA perplexity is {gap:.0%} higher: not slightly", evidence, condition, why
                )
            )
    return out


def compat_outcomes(
    df: pd.DataFrame,
) -> tuple[dict[str, dict[str, pd.Series]], dict[str, tuple[float, str]]]:
    """kind ("lora", "qlora") -> model -> its compat row; and each model's size."""
    rows = family_rows(df, Family.COMPAT)
    out: dict[str, dict[str, pd.Series]] = {"lora": {}, "qlora": {}}
    for _, r in rows.iterrows():
        out["lora" if r["quant_type"] == "none" else "qlora"][str(r["model"])] = r
    return out, model_sizes(df)


def is_computed(row: pd.Series) -> bool:
    """A row judged without loading, from its exact weight bytes (`computed_weight_bytes`)."""
    return fval(row, "computed_weight_bytes") is not None


def outcomes_text(models: dict[str, pd.Series], sizes: dict[str, tuple[float, str]]) -> str:
    """Each model's compat status, smallest first: "llama-3.2-3b ok, llama-3.1-8b oom"; a row
    judged from its weight bytes says so: "llama-2-70b oom (computed, not measured: 128.5 GiB)"."""
    ordered = sorted(models, key=lambda m: sizes.get(m, (math.inf, ""))[0])

    def text(row: pd.Series) -> str:
        if not is_computed(row):
            return str(row["status"])
        weights = fval(row, "computed_weight_bytes") or 0.0
        return f"{row['status']} (computed, not measured: 16-bit weights {weights / 2**30:.1f} GiB)"

    return ", ".join(f"{m} {text(models[m])}" for m in ordered)


def check_t4_compat(run: RunData) -> list[Evaluation]:
    """T4 compatibility "3B models only" (16-bit LoRA) and "Up to 8B models" (QLoRA): compat rows."""
    df = run.results
    outcomes, sizes = compat_outcomes(df)
    out = []
    for kind, limit, text in (("lora", 3.6e9, "3B models only"), ("qlora", 9.0e9, "Up to 8B models")):
        models = outcomes[kind]
        label = "16-bit LoRA" if kind == "lora" else "QLoRA"
        condition = f"{label}: {text}"
        if not models:
            out.append(not_run(f"no {label} compat rows on t4", condition=condition))
            continue
        evidence = tuple(str(r["case_id"]) for r in models.values())
        measured = outcomes_text(models, sizes)
        unknown = [m for m, r in models.items() if r["status"] not in {"ok", "oom"} or m not in sizes]
        if unknown:
            out.append(
                inconclusive(
                    f"{', '.join(unknown)}: no ok/oom outcome or unknown size", measured, evidence, condition
                )
            )
            continue
        within = {m: r for m, r in models.items() if sizes[m][0] < limit}
        beyond = {m: r for m, r in models.items() if sizes[m][0] >= limit}
        failed_within = [m for m, r in within.items() if r["status"] != "ok"]
        fit_beyond = [m for m, r in beyond.items() if r["status"] == "ok"]
        sources = ", ".join(sorted({s for _, s in sizes.values()}))
        why = f"compat rows (smallest training point); model sizes from: {sources}"
        if failed_within:
            out.append(
                refuted(
                    measured,
                    f"{label} runs out of memory on the T4 for {', '.join(failed_within)}",
                    evidence,
                    condition,
                    why,
                )
            )
        elif kind == "lora" and fit_beyond:
            out.append(
                refuted(
                    measured,
                    f"16-bit LoRA also fits {', '.join(fit_beyond)} on the T4",
                    evidence,
                    condition,
                    why,
                )
            )
        elif not within:
            out.append(
                inconclusive(f"no compat model below {limit / 1e9:.1f}B ran", measured, evidence, condition)
            )
        elif kind == "lora" and not beyond:
            out.append(
                inconclusive(
                    "no larger model ran as 16-bit LoRA to show the limit", measured, evidence, condition
                )
            )
        elif kind == "qlora" and max(sizes[m][0] for m in within) < 7.5e9:
            out.append(inconclusive("no 8B-class model ran as QLoRA", measured, evidence, condition))
        else:
            out.append(holds(measured, evidence, condition, why))
    return out


def check_a100_compat(run: RunData) -> list[Evaluation]:
    """A100 compatibility "Up to 70B" (16-bit LoRA) and "All sizes" (QLoRA): compat rows of each
    A100 profile in the run (a100-40gb, a100-80gb), judged apart and named in the condition."""
    df = run.results
    out: list[Evaluation] = []
    for profile in sorted(df["profile"].astype(str).unique()):
        out += _a100_compat_on(df[df["profile"].astype(str) == profile], profile)
    return out


def _a100_compat_on(df: pd.DataFrame, profile: str) -> list[Evaluation]:
    outcomes, sizes = compat_outcomes(df)
    out = []
    lora = outcomes["lora"]
    big = {m: r for m, r in lora.items() if m in sizes and sizes[m][0] >= SEVENTY_B_CLASS_MIN}
    condition = f"16-bit LoRA: Up to 70B ({profile})"
    why = "compat rows; a 16-bit ~70B row is computed from its exact weight bytes where it cannot load"
    if not big:
        ran = outcomes_text(lora, sizes) or "none"
        out.append(not_run(f"no ~70B model ran as 16-bit LoRA (compat rows: {ran})", condition=condition))
    else:
        measured = outcomes_text(big, sizes)
        evidence = tuple(str(r["case_id"]) for r in big.values())
        if all(r["status"] == "ok" for r in big.values()):
            out.append(holds(measured, evidence, condition, why))
        elif all(r["status"] in {"ok", "oom"} for r in big.values()):
            out.append(
                refuted(measured, f"16-bit LoRA of ~70B does not fit the {profile}", evidence, condition, why)
            )
        else:
            out.append(inconclusive("a ~70B 16-bit row has no ok/oom outcome", measured, evidence, condition))
    qlora = outcomes["qlora"]
    condition = f"QLoRA: All sizes ({profile})"
    if not qlora:
        out.append(not_run(f"no QLoRA compat rows on {profile}", condition=condition))
        return out
    measured = outcomes_text(qlora, sizes)
    evidence = tuple(str(r["case_id"]) for r in qlora.values())
    failed = [m for m, r in qlora.items() if r["status"] == "oom"]
    if failed:
        out.append(
            refuted(
                measured,
                f"QLoRA runs out of memory on the {profile} for {', '.join(failed)}",
                evidence,
                condition,
                "compat rows",
            )
        )
    elif (
        all(r["status"] == "ok" for r in qlora.values())
        and max(sizes.get(m, (0, ""))[0] for m in qlora) >= SEVENTY_B_CLASS_MIN
    ):
        out.append(holds(measured, evidence, condition, "compat rows up to ~70B ran ok"))
    else:
        largest = max(qlora, key=lambda m: sizes.get(m, (0.0, ""))[0])
        why = f"every size run fits (largest {largest}); 'all sizes' includes ~70B, not run"
        out.append(inconclusive(why, measured, evidence, condition))
    return out


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="tradeoff-memory-7b",
        section=SECTION,
        judged_at="the 7B model of the table at 16 and 4 bits: as mem7b-weights (FP16, INT4)",
        quote="Memory for 7B model | ~14 GB | ~3.5 GB",
        measures="as mem7b-weights, FP16 and INT4: weight_bytes per base param x 7e9; GB = 10**9 bytes",
        expected="16-bit ~14 GB, 4-bit ~3.5 GB (within 10%)",
        tolerance=WEIGHTS_TOL,
        check=check_tradeoff_memory_7b,
    ),
    Claim(
        id="tradeoff-quality",
        section=SECTION,
        judged_at=(
            "the real model's held-out perplexity after training, nf4 vs the 16-bit reference at the same"
            " point (quality family), once 50,000 tokens are trained"
        ),
        quote="Slightly higher | Slightly lower",
        measures=(
            "ppl_after of nf4 quality rows vs the 16-bit reference, trained alike (same steps and tokens)"
        ),
        expected="QLoRA worse by more than 1% noise and at most 10%",
        tolerance=SLIGHT_QUALITY,
        check=check_tradeoff_quality,
    ),
    Claim(
        id="t4-compat",
        section=SECTION,
        judged_at=(
            "the T4 only: each model's compat rows at the smallest point (b1 s512), 16-bit LoRA and QLoRA"
        ),
        quote="3B models only | Up to 8B models",
        measures="status (ok/oom) of compat rows on t4 per model, 16-bit LoRA and QLoRA",
        expected="16-bit LoRA: 3B fits, larger do not; QLoRA: every model up to 8B fits",
        tolerance=None,
        check=check_t4_compat,
        applies_to=ON_T4,
    ),
    Claim(
        id="a100-compat",
        section=SECTION,
        judged_at="A100 profiles only (a100-40gb, a100-80gb): each model's compat rows, up to the 70B shape",
        quote="Up to 70B | All sizes",
        measures="status of compat rows per A100 profile (a100-40gb, a100-80gb) per model; 16-bit 70B"
        " computed from its exact weight bytes on the meta device where it cannot load",
        expected="16-bit LoRA up to 70B fits; QLoRA fits all sizes",
        tolerance=None,
        check=check_a100_compat,
        applies_to=ON_A100,
    ),
)
