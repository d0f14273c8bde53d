"""The fit advisor: does a QLoRA setting fit a GPU as given, and if not, what is the smallest
change that makes it fit (`python -m reports fit --gpu t4 --model llama-3.1-8b --batch-size 1
--seq-len 1024 --optimizer adamw_8bit`; the question's options: `reports.fit.query`)? Every number
is predicted by `reports.fit.model`; this package launches no case (`tools/measure_fit.py` does).
See docs/fit.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from qlora_core.cases.case import Case
from qlora_core.cases.gpus import GpuProfile
from reports.fit.model import (
    ErrorSummary,
    FitError,
    HeldOut,
    MemoryModel,
    MemoryRow,
    fit,
    leave_one_out,
    lora_stages,
    memory_rows,
    run_frame,
    summarize,
)
from reports.fit.query import REFERENCE_DIR, AdvisorError, describe
from reports.markdown import md_table
from reports.run.folder import RESULTS_JSONL
from reports.run.frame import RunData, load_run
from reports.run.rows import device_used_gib, peak_figures

__all__ = ["REFERENCE_DIR", "AdvisorError"]  # the CLI's imports, from their home (fit_query)
MEDIAN_LIMIT = 0.05  # the advisor's target for the held-out error
MAX_LIMIT = 0.10
POOL = "loop+trainer"  # the setting trains through Trainer (matrix.USERS_ENGINE)
MAX_SEQ_HALVINGS = 3
MIN_SEQ_LEN = 8  # Case.seq_len's lower bound (spec.validate)


def run_dirs(paths: Sequence[Path]) -> list[Path]:
    """The run folders under `paths` (a folder with results.jsonl, or folders holding them)."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise AdvisorError(f"--runs {path}: not a folder")
        here = (
            [path]
            if (path / RESULTS_JSONL).is_file()
            else sorted(p.parent for p in path.rglob(RESULTS_JSONL))
        )
        if not here:
            raise AdvisorError(f"--runs {path}: no {RESULTS_JSONL} in it or under it")
        found += here
    return found


def frames_of(paths: Sequence[Path]) -> list[pd.DataFrame]:
    return [run_frame(load_run(d)) for d in run_dirs(paths)]


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def error_line(summary: ErrorSummary) -> str:
    verdict = "meets" if summary.meets(MEDIAN_LIMIT, MAX_LIMIT) else "does NOT meet"
    return (
        f"held-out error (leave one configuration out) over {summary.predicted} rows: median"
        f" {_pct(summary.median)}, max {_pct(summary.max)} of the measured device peak; {verdict} the"
        f" target (median <= {MEDIAN_LIMIT:.0%}, max <= {MAX_LIMIT:.0%}); {summary.not_predictable} rows"
        " not predictable from the others"
    )


def held_out_table(held: list[HeldOut]) -> str:
    rows = [
        [
            h.row.case_id,
            h.row.source,
            _gib(h.row.footprint_gib),
            _gib(h.predicted_gib),
            _pct(h.error) if h.why_not == "" else f"not predictable: {h.why_not}",
        ]
        for h in held
    ]
    return md_table(["held-out row", "peak from", "measured GiB", "predicted GiB", "error"], rows)


def fitted_pool(rows: list[MemoryRow], frames: list[pd.DataFrame]) -> tuple[MemoryModel | None, str]:
    """The ladder's engine pool fitted to `rows`, knowing the LoRA stage of every row in `frames`."""
    try:
        model = fit([row for row in rows if row.pool == POOL])
    except FitError as error:
        return None, str(error)
    return dataclasses.replace(model, statics={**lora_stages(frames), **model.statics}), ""


def fit_section(run: RunData) -> str:
    """tables.md: the advisor's held-out error on this run's own measured rows."""
    rows = memory_rows([run_frame(run)])
    title = "## Fit advisor: held-out error on this run's rows"
    if not rows:
        why = "no row of this run has a device peak (ok on a GPU, or an OOM's uncapped rerun)"
        return f"{title}\n\nnot run: {why}."
    held = leave_one_out(rows)
    return "\n\n".join(
        [
            title,
            f"Predicted by `python -m reports fit`'s model; {error_line(summarize(held))}.",
            held_out_table(held),
        ]
    )


# -- the changes tried, smallest first -------------------------------------------------------
@dataclass(frozen=True)
class Change:
    """The setting with some of the ladder's knobs turned (none: the setting as given)."""

    case: Case
    label: str
    seq_halvings: int
    rank: tuple[int, ...]
    """Sort key: smallest change first (see the module docstring)."""


def _batches(setting: Case) -> list[tuple[int, int]]:
    """(batch, grad accumulation) from the setting's down to batch 1, the tokens per optimizer
    step kept: halving while the batch is even, then straight to 1."""
    out = [(setting.batch_size, setting.grad_accum)]
    batch = setting.batch_size
    while batch > 1:
        batch = batch // 2 if batch % 2 == 0 else 1
        out.append((batch, setting.grad_accum * setting.batch_size // batch))
    return out


def changes(setting: Case) -> list[Change]:
    """The setting, then every combination of the ladder's knobs, smallest change first."""
    seqs = [setting.seq_len >> k for k in range(MAX_SEQ_HALVINGS + 1) if setting.seq_len >> k >= MIN_SEQ_LEN]
    checkpointing = sorted(
        {setting.gradient_checkpointing, True}, key=lambda gc: gc != setting.gradient_checkpointing
    )
    found = []
    for halvings, seq in enumerate(seqs):
        for step, (batch, accum) in enumerate(_batches(setting)):
            for gc in checkpointing:
                parts = []
                if step:
                    parts.append(f"batch {batch} x grad accumulation {accum}")
                if gc != setting.gradient_checkpointing:
                    parts.append("gradient checkpointing on")
                if halvings:
                    parts.append(f"seq {seq}")
                case = setting.replace(
                    batch_size=batch, grad_accum=accum, gradient_checkpointing=gc, seq_len=seq
                )
                knobs = (step > 0) + (gc != setting.gradient_checkpointing)
                rank = (halvings, knobs, int(gc != setting.gradient_checkpointing), step)
                found.append(Change(case, " + ".join(parts) or "as set", halvings, rank))
    return sorted(found, key=lambda change: change.rank)


@dataclass(frozen=True)
class StepAdvice:
    change: Change
    predicted_gib: float | None
    why_not: str = ""

    @property
    def case(self) -> Case:
        return self.change.case


def predict_all(
    model: MemoryModel | None, tried: list[Change], no_model_reason: str = ""
) -> list[StepAdvice]:
    advice = []
    for change in tried:
        if model is None:
            advice.append(StepAdvice(change, None, no_model_reason))
            continue
        try:
            advice.append(StepAdvice(change, model.predict(change.case.to_dict()).footprint_gib))
        except FitError as error:
            advice.append(StepAdvice(change, None, str(error)))
    return advice


@dataclass(frozen=True)
class Advice:
    profile: GpuProfile
    steps: list[StepAdvice]
    """The setting first, then the changes smallest first, up to the first predicted to fit."""
    model: MemoryModel | None
    rows: list[MemoryRow]
    held: list[HeldOut]
    runs: list[Path]

    @property
    def setting(self) -> StepAdvice:
        return self.steps[0]

    @property
    def answer(self) -> StepAdvice | None:
        """The first step predicted to fit (the setting itself when it fits)."""
        return next((s for s in self.steps if self.fits(s)), None)

    def fits(self, step: StepAdvice) -> bool:
        return step.predicted_gib is not None and step.predicted_gib <= self.profile.total_gib

    def to_measure(self) -> list[Case]:
        """What `tools/measure_fit.py` runs: the setting and, when it is another, the answer."""
        answer = self.answer
        return [self.setting.case] + (
            [answer.case] if answer is not None and answer is not self.setting else []
        )


def advise(profile: GpuProfile, setting: Case, runs: Sequence[Path]) -> Advice:
    """Predict the setting and the changes from the rows under `runs`. AdvisorError on a bad folder."""
    frames = frames_of(runs)
    rows = memory_rows(frames)
    model, why = fitted_pool(rows, frames)
    steps = predict_all(model, changes(setting), why)
    total = profile.total_gib
    first = next(
        (i for i, s in enumerate(steps) if s.predicted_gib is not None and s.predicted_gib <= total), None
    )
    shown = steps if first is None else steps[: first + 1]
    return Advice(profile, shown, model, rows, leave_one_out(rows), list(runs))


# -- the report --------------------------------------------------------------------------------
def _edge(predicted_gib: float, total_gib: float, summary: ErrorSummary) -> str:
    """A note when the card's memory is within the model's max held-out error of the prediction."""
    if summary.max is None or abs(predicted_gib - total_gib) > summary.max * predicted_gib:
        return ""
    return f", at the edge: within the model's max held-out error ({_pct(summary.max)}) of the card"


def headline(advice: Advice, summary: ErrorSummary) -> str:
    """The answer for the setting as given, then the smallest change that makes it fit."""
    setting, answer, total = advice.setting, advice.answer, advice.profile.total_gib
    if setting.predicted_gib is None:
        return f"undecided: the setting is not predictable from the measured rows ({setting.why_not})"
    of = f"predicted {setting.predicted_gib:.2f} GiB of {total:.2f} GiB on {advice.profile.name}"
    if answer is setting:
        return f"fits: {of}{_edge(setting.predicted_gib, total, summary)}"
    head = f"does not fit: {of}{_edge(setting.predicted_gib, total, summary)}"
    skipped = sum(1 for step in advice.steps[1:] if step.predicted_gib is None)
    unknown = f" ({skipped} of the changes tried not predictable: see the table)" if skipped else ""
    if answer is None:
        shortest = advice.steps[-1].case.seq_len
        tried = f"batch 1 with accumulation, checkpointing, seq down to {shortest}"
        return f"{head}; no change tried fits ({tried}){unknown}"
    change = answer.change
    what = "the smallest change that fits"
    if change.seq_halvings:
        what += f" shortens the sequence from {setting.case.seq_len} to {answer.case.seq_len} tokens"
    predicted = answer.predicted_gib
    assert predicted is not None  # it fits: it was predicted
    edge = _edge(predicted, total, summary)
    return f"{head}; {what}: {change.label} (predicted {predicted:.2f} GiB{edge}){unknown}"


def steps_table(advice: Advice, measured: Mapping[str, tuple[str, float | None]] | None) -> str:
    total = advice.profile.total_gib
    headers = ["change", "case", "predicted device peak GiB", f"on {advice.profile.name} ({total:.2f} GiB)"]
    if measured is not None:
        headers += ["measured device peak GiB", "measured status"]
    rows = []
    for step in advice.steps:
        fits = "-" if step.predicted_gib is None else ("fits" if advice.fits(step) else "OOM")
        cells: list[Any] = [step.change.label, step.case.id, _gib(step.predicted_gib), fits]
        if measured is not None:
            status, peak = measured.get(step.case.id, ("not run", None))
            cells += [_gib(peak), status]
        rows.append([*cells, step.why_not])
    return md_table([*headers, "why not predicted"], rows)


def render(
    advice: Advice,
    show_held_out: bool = False,
    measured: Mapping[str, tuple[str, float | None]] | None = None,
) -> str:
    """The advisor's report (markdown): the headline first, the held-out rows only when asked."""
    summary = summarize(advice.held)
    setting = advice.setting.case
    parts = [
        f"# Fit advisor: {setting.model} on {advice.profile.name} ({advice.profile.total_gib:.2f} GiB)",
        f"**{headline(advice, summary)}**",
        f"Setting: {describe(setting)}; trained through transformers' Trainer (case `{setting.id}`).",
        steps_table(advice, measured),
        error_line(summary) + "." + ("" if show_held_out else " Every held-out row: `--show-held-out`."),
    ]
    if show_held_out:
        parts.append(held_out_table(advice.held))
    if advice.model is not None:
        model = advice.model
        coefficients = ", ".join(f"{c:.4g}" for c in model.activation_coefficients)
        optimizer = ", ".join(f"{name} {bpp:.3g}" for name, bpp in model.optimizer_bytes_per_param.items())
        parts.append(
            f"Fitted ({model.pool}, {model.rows} rows): context {model.context_gib:.3f} GiB, optimizer bytes"
            f" per trainable parameter: {optimizer}; activation coefficients {coefficients}."
        )
    parts.append(
        "Every *predicted* GiB figure comes from a model fitted to"
        f" {len(advice.rows)} measured rows ({', '.join(str(p) for p in advice.runs)}); the device peak is"
        " NVML's (the CUDA context included) above what the device used before the process, the figure a"
        " card must hold. The context was measured on the rows' GPU; a T4's own context may differ."
    )
    return "\n\n".join(parts) + "\n"


def run_advisor(profile: GpuProfile, setting: Case, runs: Sequence[Path], show_held_out: bool = False) -> str:
    """The advisor's report for a checked query (`fit_query.query_case`)."""
    return render(advise(profile, setting, runs), show_held_out)


def measured_figures(row: Mapping[str, Any]) -> tuple[str, float | None]:
    """A measured row's (status, device peak GiB): an OOM under an emulated cap gives what its
    uncapped rerun needed, and its status says so."""
    series = pd.Series(dict(row))
    figures = peak_figures(series)  # the capped run's peak, else what its rerun needed
    status, peak = str(series["status"]), device_used_gib(series)
    if figures is not None and figures.label:
        status, peak = f"oom; {figures.label}", figures.device_gib
    return status, peak
