"""tables.md's multi-GPU section: per-GPU memory of each case of a multi-card profile and the
scaling efficiency of its N-GPU cases.

A multi-GPU row is merged from its ranks (`qlora_core.process.distributed.merge_ranks`): its peak fields
are the max over ranks (what each GPU must hold), its tokens/s is over all ranks, and its kernel
time and GPU busy are the profiled window of the first rank that wrote a Result (rank 0). A row
that ran out of memory under the cap shows what its uncapped rerun needed, labelled
(`reports.run.rows.needed_label`), never as a fit. The lesson says nothing about several GPUs: this
section is the only report of them, and no claim reads these rows (`Claim.multi_card`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from qlora_core.cases.gpus import PROFILES
from reports.markdown import md_table
from reports.run.frame import RunData
from reports.run.rows import PeakFigures, fval, group_by, pairs, peak_figures, where

TITLE = "## Multi-GPU: per-GPU memory and scaling\n\n"
RUN_COMMAND = "pytest bench --gpu t4x2"
# What an N-GPU case and its one-card reference may differ in (how the work is spread over the
# GPUs, and the host under CPU offload): everything else is the same point.
SCALING_VARIES: tuple[str, ...] = ("num_gpus", "strategy", "cpu_offload")
HEADERS: tuple[str, ...] = (
    "Case",
    "Strategy",
    "GPUs",
    "4-bit storage, prepare, load",
    "Status",
    "Per-GPU peak allocated",
    "Per-GPU peak reserved",
    "Per-GPU device peak (NVML)",
    "Host RAM peak (RSS)",
    "Fits the card",
    "Tokens/s (all GPUs)",
    "Kernel ms/step",
    "NCCL ms/step",
    "GPU busy",
    "Scaling efficiency",
)


def num_gpus(row: pd.Series) -> int:
    """GPUs a row's case ran on (rows stored before the axis existed ran on one)."""
    value = fval(row, "num_gpus")
    return int(value) if value is not None else 1


def card_gib(profile: str) -> float | None:
    """Memory of one card of `profile` (`GpuProfile.total_gib`); None for an unknown or CPU profile."""
    known = PROFILES.get(profile)
    return known.total_gib if known is not None and known.is_gpu else None


def multi_card_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of a multi-card profile (every case of it, one card or several) or of num_gpus > 1."""
    if df.empty:
        return df
    counts = df["profile"].map(lambda p: PROFILES[p].count if p in PROFILES else 1)
    gpus = pd.to_numeric(df["num_gpus"], errors="coerce").fillna(1)
    return df[((counts > 1) | (gpus > 1)).astype(bool)]


def scaling_efficiency(multi: pd.Series, single: pd.Series) -> float | None:
    """tokens/s of the N-GPU row over N x tokens/s of its one-card row; None unless both measured
    tokens/s (a failed case measured none)."""
    many, one = fval(multi, "tokens_per_s"), fval(single, "tokens_per_s")
    if many is None or one is None or one <= 0:
        return None
    return many / (num_gpus(multi) * one)


def one_card_references(rows: pd.DataFrame) -> dict[str, pd.Series]:
    """Case id of each N-GPU row -> the one-card row equal to it on every field but
    `SCALING_VARIES` (the first such row; a run folded per case has at most one)."""
    multi = rows[[num_gpus(r) > 1 for _, r in rows.iterrows()]]
    single = rows[[num_gpus(r) == 1 for _, r in rows.iterrows()]]
    out: dict[str, pd.Series] = {}
    for many, one in pairs(multi, single, SCALING_VARIES):
        out.setdefault(str(many["case_id"]), one)
    return out


@dataclass(frozen=True)
class CardFit:
    """Whether a row's case fits one card of its profile, and the table's cell saying so."""

    fits: bool | None
    """None: undecided (no card memory, a failure other than oom, no peak measured)."""
    text: str


def card_fit(row: pd.Series, peaks: PeakFigures | None, card: float | None) -> CardFit:
    """An ok row fits when its per-GPU device peak (NVML, what the GPU held for it; the reserved
    peak where NVML was not read) is at most the card's memory. The allocator cap leaves out what
    the libraries take outside the allocator, so an ok row can still exceed the card. An oom row
    does not fit, whatever its uncapped rerun needed."""
    status = str(row["status"])
    if card is None:
        return CardFit(None, "- (no card memory: not a GPU profile)")
    if status == "oom":
        return CardFit(False, "no (oom under the cap)")
    if status != "ok" or peaks is None:
        return CardFit(None, f"- (status {status})")
    used, source = (
        (peaks.device_gib, "device") if peaks.device_gib is not None else (peaks.reserved_gib, "reserved")
    )
    if used is None:
        return CardFit(None, "- (no peak measured)")
    fits = used <= card
    return CardFit(fits, f"{'yes' if fits else 'no'} ({source} {used:.2f} of {card:.2f} GiB)")


def offloaded(row: pd.Series) -> bool:
    """The case asked for FSDP's CPU offload (`Case.cpu_offload`; rows stored before it: no)."""
    value = row.get("cpu_offload")
    return isinstance(value, (bool, np.bool_)) and bool(value)


def offload_not_in_effect(row: pd.Series) -> str | None:
    """Where the parameters were in training when the case asked for CPU offload and they were
    not on the host (`Result.precision.params_on_in_training`: "cuda", the offload not applied); None when
    they were, when the case asked for none, or when no step began (nothing recorded)."""
    held = row.get("params_on_in_training")
    if not offloaded(row) or not isinstance(held, str) or held in ("", "cpu"):
        return None
    return held


def strategy_label(row: pd.Series) -> str:
    """The strategy cell: "fsdp", "ddp", "single"; "fsdp + CPU offload" under the offload, saying
    where the parameters were in training when that was not the host."""
    strategy = str(row["strategy"])
    if not offloaded(row):
        return strategy
    held = offload_not_in_effect(row)
    return f"{strategy} + CPU offload" + (f" (but parameters on {held} in training)" if held else "")


def _ranks(row: pd.Series, ranks_col: str) -> str:
    """ " (ranks a, b)": each rank's value of a multi-GPU row; "" for one rank."""
    ranks = row.get(ranks_col)
    if not isinstance(ranks, (list, np.ndarray)) or len(ranks) <= 1:
        return ""
    return " (ranks " + ", ".join("-" if v is None else f"{v:.2f}" for v in ranks) + ")"


def host_ram(row: pd.Series) -> str:
    """ "P GiB (ranks a, b)": the highest peak RSS of the ranks and each rank's; "-" when none was
    measured. Under CPU offload a rank's RSS holds its shards of the parameters, their gradients
    and the optimizer's states; under rank-0-only loading rank 0's holds the model it loaded."""
    peak = fval(row, "cpu_peak_rss_gib")
    return "-" if peak is None else f"{peak:.2f} GiB" + _ranks(row, "rank_cpu_peak_rss_gib")


def _gib(value: float | None, peaks: PeakFigures | None, row: pd.Series, ranks_col: str = "") -> str:
    if peaks is None or value is None:
        return f"not measured (status {row['status']})"
    text = f"{value:.2f} GiB" + (f" {peaks.label}" if peaks.label else "")
    return text + (_ranks(row, ranks_col) if ranks_col and not peaks.label else "")


def _loaded_on(row: pd.Series) -> str:
    """Where each rank's weights were after the load: "loaded on cpu/meta" under FSDP's rank-0-only
    loading (rank 0 in CPU RAM, the others none), "loaded on cuda" when every rank loaded onto its
    GPU; "load not recorded" for rows stored before `Result.ranks.rank_loaded_on`."""
    ranks = row.get("rank_loaded_on")
    if isinstance(ranks, (list, np.ndarray)) and len(ranks) and all(ranks):
        return "loaded on " + "/".join(dict.fromkeys(str(r) for r in ranks))
    single = row.get("loaded_on")
    return f"loaded on {single}" if isinstance(single, str) and single else "load not recorded"


def _number(row: pd.Series, col: str, fmt: str) -> str:
    value = fval(row, col)
    return "-" if value is None else format(value, fmt)


def host_bound(row: pd.Series) -> bool:
    """The row's GPU waited on the host (`Result.training.host_bound`); False when not measured."""
    value = row.get("host_bound")
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _busy(row: pd.Series) -> str:
    busy = fval(row, "gpu_busy")
    if busy is None:
        return "-"
    return f"{busy:.2f}" + (" (host-bound)" if host_bound(row) else "")


def case_row(row: pd.Series, card: float | None, reference: pd.Series | None) -> tuple[str, ...]:
    """One table row: the case's per-GPU peaks, its fit on the card, speed and scaling."""
    peaks = peak_figures(row)
    efficiency = scaling_efficiency(row, reference) if reference is not None else None
    prepare = "on" if row["prepare_kbit"] else "off"
    return (
        str(row["case_id"]),
        strategy_label(row),
        str(num_gpus(row)),
        f"{row['quant_storage']}, prepare {prepare}, {_loaded_on(row)}",
        str(row["status"]),
        _gib(peaks.alloc_gib if peaks else None, peaks, row, "rank_peak_alloc_gib"),
        _gib(peaks.reserved_gib if peaks else None, peaks, row, "rank_peak_reserved_gib"),
        _gib(peaks.device_gib if peaks else None, peaks, row),
        host_ram(row),
        card_fit(row, peaks, card).text,
        _number(row, "tokens_per_s", ",.0f"),
        _number(row, "kernel_ms_per_step", ".1f"),
        _number(row, "comm_ms_per_step", ".1f"),
        _busy(row),
        _efficiency_cell(efficiency, row, reference),
    )


def _efficiency_cell(efficiency: float | None, row: pd.Series, reference: pd.Series | None) -> str:
    if efficiency is None or reference is None:
        return "-"
    either = host_bound(row) or host_bound(reference)
    return f"{efficiency:.2f}" + (" (a host-bound side)" if either else "")


def _profile_table(profile: str, rows: pd.DataFrame) -> str:
    card = card_gib(profile)
    known = PROFILES.get(profile)
    cards = f"{known.count} x {known.card_name}" if known is not None else "unknown profile"
    memory = f", {card:.2f} GiB per card" if card is not None else ""
    references = one_card_references(rows)
    table = [case_row(r, card, references.get(str(r["case_id"]))) for _, r in rows.iterrows()]
    head = f"{where(rows)} ({cards}{memory}): {shared_setting(rows)}\n\n"
    return head + md_table(HEADERS, table) + "\n\n" + _pairs_text(references)


def shared_setting(rows: pd.DataFrame) -> str:
    """The training point of the rows in words, a field's values joined by "/" where they differ
    (the table's columns show storage and prepare)."""

    def values(col: str) -> str:
        return "/".join(dict.fromkeys(str(v) for v in rows[col]))

    checkpointing = "/".join(dict.fromkeys("on" if v else "off" for v in rows["gradient_checkpointing"]))
    return (
        f"{values('model')} b{values('batch_size')} s{values('seq_len')} {values('compute_dtype')},"
        f" checkpointing {checkpointing}, engine {values('engine')}"
    )


def _pairs_text(references: dict[str, pd.Series]) -> str:
    if not references:
        return "No N-GPU case has a one-card case of equal settings: no scaling efficiency."
    by_reference: dict[str, list[str]] = {}
    for many, one in references.items():
        by_reference.setdefault(str(one["case_id"]), []).append(many)
    return (
        "Scaling efficiency against "
        + "; ".join(f"{one} for {', '.join(many)}" for one, many in by_reference.items())
        + "."
    )


def multigpu_table(run: RunData) -> str:
    """The section: one table per multi-card profile, or a line saying no multi-GPU rows ran."""
    rows = multi_card_rows(run.results)
    if rows.empty or not any(num_gpus(r) > 1 for _, r in rows.iterrows()):
        return TITLE + (
            f"not run: no multi-GPU rows (num_gpus > 1) in this run; `{RUN_COMMAND}` runs them on a"
            " machine with two GPUs."
        )
    parts = [_profile_table(str(key[0]), group) for key, group in group_by(rows, ("profile",))]
    return TITLE + "\n\n".join(parts) + "\n\n" + READING + _emulation_note(rows)


READING = (
    "Per-GPU figures are the max over the ranks (each rank's beside it); the device peak is NVML's"
    " peak minus what the GPU held before the case. A case fits the card when it ran ok and its"
    " device peak (the reserved peak where NVML was not read) is at most the card's memory: the"
    " emulation caps the allocator, not what the libraries take beside it. An out-of-memory row"
    ' shows what it needed, labelled, and does not fit. "fsdp + CPU offload" is FSDP with its CPU'
    " offload of the parameters (accelerate's fsdp_offload_params): each rank keeps its shards of the"
    " parameters and of their gradients in pinned host RAM and steps the optimizer there, and a"
    " layer comes to the GPU while it computes. Host RAM peak is each rank's peak RSS (the highest,"
    " every rank's beside it): the offloaded shards, and on rank 0 the model it loaded into CPU RAM"
    " under rank-0-only loading. Tokens/s counts every GPU's tokens; kernel time, NCCL time and"
    " GPU busy are rank 0's profiled window: kernel time is compute only, NCCL time the"
    " collectives' kernels, which run until the slowest rank joins (the wait is in them), and GPU"
    " busy counts both (- for NCCL: a run from before the two were told apart). Scaling"
    " efficiency = tokens/s of the N-GPU case / (N x tokens/s of the one-card case that differs"
    " from it only in GPUs, strategy and offload); - where there is no such pair; a host-bound"
    " side (GPU busy marked so) makes it the host's ratio."
)


def _emulation_note(rows: pd.DataFrame) -> str:
    """Why an emulated multi-card row's speed is not the profile's cards' (its memory is)."""
    emulated = rows[rows["emulated"].fillna(False).astype(bool)]
    if emulated.empty:
        return ""
    hosts = " or ".join(sorted({str(g) for g in emulated["emulated_on"] if g}))
    most = max(num_gpus(r) for _, r in emulated.iterrows())
    cards = " or ".join(sorted({PROFILES[p].card_name for p in emulated["profile"] if p in PROFILES}))
    return (
        f" The emulated cards share one host ({most} x {hosts}): the memory is exact per rank (each"
        " rank capped like one card); the speed is the host GPUs' and their link's (the run does not"
        f" record the link), not that of {cards} cards."
    )
