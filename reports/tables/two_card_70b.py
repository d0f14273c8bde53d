"""The verdict on "70B on two 24 GB GPUs": FSDP-QLoRA's headline, decided on the configuration
its recipe runs (the `cpu_offload` row of a two-card 24 GB profile, `l4x2`), with the same case
without offload and each rank's host RAM beside it. Part of tables.md's multi-GPU section.
See docs/multi-gpu.md#the-70b-on-two-24-gb-gpus-verdict.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qlora_core.cases.gpus import PROFILES
from reports.claims.model import (
    Evaluation,
    ProfilePredicate,
    Verdict,
    holds,
    inconclusive,
    not_run,
    refuted,
)
from reports.run.frame import RunData
from reports.run.rows import (
    SEVENTY_B_CLASS_MIN,
    PeakFigures,
    fval,
    model_sizes,
    pairs,
    peak_figures,
    quantized,
    setting,
)
from reports.tables.multigpu import (
    card_fit,
    host_ram,
    multi_card_rows,
    num_gpus,
    offload_not_in_effect,
    offloaded,
)

TITLE = "### 70B on two 24 GB GPUs\n\n"
CLAIM = "fine-tuning a 70B model on two 24 GB GPUs"
SOURCE = "FSDP-QLoRA's headline (Answer.AI's fsdp_qlora: Llama-2-70B on two 24 GB GPUs, CPU offload on)"
RUN_COMMAND = "pytest bench --gpu l4x2 -k 70b"
TWO_24GB_CARDS = ProfilePredicate(
    "two cards of 24 GB (l4x2)", lambda p: p.count == 2 and 20.0 <= p.total_gib <= 24.0
)
WHY = (
    "the recipe's configuration: FSDP shards the 4-bit weights (stored in the compute dtype) and"
    " offloads the shards to the CPU; fits = ran ok under each rank's allocator cap with a per-GPU"
    " device peak at most the card's memory"
)


def two_card_rows(run: RunData) -> pd.DataFrame:
    """FSDP rows of a 70B-class 4-bit model on both cards of a two-card 24 GB profile."""
    df = multi_card_rows(run.results)
    if df.empty:
        return df
    cards = df["profile"].map(lambda p: p in PROFILES and TWO_24GB_CARDS(PROFILES[p])).astype(bool)
    gpus = pd.Series([num_gpus(r) == 2 for _, r in df.iterrows()], index=df.index, dtype=bool)
    df = quantized(df[cards & gpus & (df["strategy"] == "fsdp")])
    sizes = model_sizes(df)
    big = [m for m, (params, _) in sizes.items() if params >= SEVENTY_B_CLASS_MIN]
    return df[df["model"].astype(str).isin(big)]


def verdicts(run: RunData) -> list[Evaluation]:
    """One evaluation per row of the recipe (70B, two 24 GB cards, FSDP with CPU offload); one
    not_run when there is none, saying what the run has instead."""
    rows = two_card_rows(run)
    recipe = rows[[offloaded(r) for _, r in rows.iterrows()]] if not rows.empty else rows
    plain = rows[[not offloaded(r) for _, r in rows.iterrows()]] if not rows.empty else rows
    if recipe.empty:
        instead = "; ".join(_outcome(r) for _, r in plain.iterrows())
        why = f"no 70B FSDP-QLoRA row with CPU offload (the recipe) on {TWO_24GB_CARDS.description}"
        why += f"; this run has {instead}" if instead else f"; `{RUN_COMMAND}` runs it on two GPUs"
        return [not_run(why, evidence=tuple(str(r["case_id"]) for _, r in plain.iterrows()))]
    without = {str(a["case_id"]): b for a, b in pairs(recipe, plain, ("cpu_offload",))}
    return [_judge(r, without.get(str(r["case_id"]))) for _, r in recipe.iterrows()]


def _judge(row: pd.Series, plain: pd.Series | None) -> Evaluation:
    """The verdict of one recipe row, with the same case without offload beside it."""
    profile = PROFILES[str(row["profile"])]
    card = profile.total_gib
    flag = row.get("emulated")
    host = row.get("emulated_on") if isinstance(flag, (bool, np.bool_)) and flag else None
    emulated = f", emulated on {host}" if host else ""
    condition = (
        f"{profile.name}, {profile.count} x {card:.2f} GiB{emulated}: {setting(row)}, FSDP + CPU offload"
    )
    evidence = [str(row["case_id"])] + ([str(plain["case_id"])] if plain is not None else [])
    beside = _outcome(plain) if plain is not None else "no row of the same case without offload"
    measured = f"{_outcome(row)}; without offload: {beside}"
    held = offload_not_in_effect(row)
    if held:
        why = f"the case asked for CPU offload but its parameters were on {held} in training: not the recipe"
        return inconclusive(why, measured, evidence, condition)
    if row["status"] not in ("ok", "oom"):
        why = f"the recipe's row ended {row['status']}: {row.get('reason') or 'no reason recorded'}"
        return inconclusive(why, measured, evidence, condition)
    peaks = peak_figures(row)
    fit = card_fit(row, peaks, card)
    if fit.fits is None:
        return inconclusive(f"the recipe's row decides no fit: {fit.text}", measured, evidence, condition)
    if fit.fits:
        return holds(measured, evidence, condition, WHY)
    need = _peaks_text(peaks) if peaks is not None else f"more than the {card:.2f} GiB cap"
    corrected = (
        f"70B FSDP-QLoRA with CPU offload does not fit two {profile.card_name} cards at this point:"
        f" each GPU needs {need}"
    )
    return refuted(measured, corrected, evidence, condition, WHY)


def _outcome(row: pd.Series) -> str:
    """A row in words: "<case id>: <status>, per-GPU peaks (labelled where its uncapped rerun
    measured them), its fit on the card, each rank's host RAM peak, tokens/s"."""
    peaks = peak_figures(row)
    fit = card_fit(row, peaks, PROFILES[str(row["profile"])].total_gib)
    text = f"{row['case_id']}: {row['status']}"
    if peaks is not None:
        text += f", {_peaks_text(peaks)}"
    text += f", fits the card: {fit.text}"
    if fval(row, "cpu_peak_rss_gib") is not None:
        text += f", host RAM peak RSS {host_ram(row)}"
    tokens = fval(row, "tokens_per_s")
    return text + (f", {tokens:,.0f} tokens/s over both GPUs" if tokens is not None else "")


def _peaks_text(peaks: PeakFigures) -> str:
    """Per-GPU peaks, "per GPU allocated A, reserved R, device D GiB", labelled as needed where
    they are the uncapped rerun's."""
    parts = [
        f"{name} {value:.2f}"
        for name, value in (
            ("allocated", peaks.alloc_gib),
            ("reserved", peaks.reserved_gib),
            ("device", peaks.device_gib),
        )
        if value is not None
    ]
    label = f" {peaks.label}" if peaks.label else ""
    return f"per GPU {', '.join(parts) or 'no peak'} GiB{label}"


def section(run: RunData) -> str:
    """tables.md's verdict, after its multi-GPU table: the claim, its source, each evaluation; ""
    for a run without rows of a multi-card profile (the multi-GPU section says how to run them)."""
    if multi_card_rows(run.results).empty:
        return ""
    lines = [f'"{CLAIM}": {SOURCE}.', ""]
    for e in verdicts(run):
        head = f"- **{e.verdict.value}**" + (f" [{e.condition}]" if e.condition else "")
        body = e.measured if e.verdict is not Verdict.NOT_RUN else e.why
        lines.append(f"{head}: {body}.")
        if e.corrected:
            lines.append(f"  Corrected: {e.corrected}.")
        if e.verdict is not Verdict.NOT_RUN and e.why:
            lines.append(f"  Why: {e.why}.")
    return TITLE + "\n".join(lines)
