"""The fit advisor: does a QLoRA setting fit a GPU, and if not, which step of the lesson's ladder
first fits (`python -m reports fit --gpu t4 --model llama-3.1-8b --batch 4 --seq 2048`)?

Every number it prints is *predicted* by `reports.fit_model`, fitted to measured rows (default:
the committed reference runs, `REFERENCE_DIR`; `--runs DIR...` chooses others), and shown beside
the model's leave-one-configuration-out error on those rows. `--measure` runs the ladder for real
through the suite's runner instead and prints measured beside predicted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from qlora_core.gpus import PROFILE_NAMES, GpuProfile, get_profile
from qlora_core.matrix import ladder_cases, tier_for
from qlora_core.models.registry import SHAPES
from qlora_core.spec import Case
from reports.fit_model import (
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
    shape_of,
    summarize,
)
from reports.frame import RESULTS_JSONL, RunData, load_run
from reports.markdown import md_table
from reports.rows import device_used_gib, peak_figures

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
MEDIAN_LIMIT = 0.05  # issue 11's acceptance for the held-out error
MAX_LIMIT = 0.10
POOL = "loop+trainer"  # the ladder trains through Trainer (matrix.USERS_ENGINE)
LADDER_STEPS = (
    "0: the setting",
    "1: batch / 2, grad accumulation x 2",
    "2: batch 1, grad accumulation",
    "3: seq / 2",
    "4: + gradient checkpointing",
)


class AdvisorError(ValueError):
    """A bad query; the message names the problem and the allowed values."""


def check_query(gpu: str, model: str, batch: int, seq: int) -> GpuProfile:
    """Every problem of the query at once, before anything is loaded or run."""
    problems = []
    profile = None
    if gpu not in PROFILE_NAMES:
        problems.append(f"unknown --gpu {gpu!r}; allowed: {', '.join(PROFILE_NAMES)}")
    else:
        profile = get_profile(gpu)
    if shape_of(model) is None:
        problems.append(f"unknown --model {model!r}; allowed: {', '.join(SHAPES)}")
    if batch < 1:
        problems.append(f"--batch {batch} must be >= 1")
    if seq < 2:
        problems.append(f"--seq {seq} must be >= 2")
    if problems or profile is None:
        raise AdvisorError("; ".join(problems))
    return profile


def query_ladder(profile: GpuProfile, model: str, batch: int, seq: int) -> list[Case]:
    """The lesson's ladder (`matrix.ladder_cases`) from the query's setting on this profile."""
    tier = dataclasses.replace(tier_for(profile), ladder_model=model, ladder_batch=batch, ladder_seq=seq)
    return ladder_cases(profile, tier)


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


@dataclass(frozen=True)
class StepAdvice:
    name: str
    case: Case
    predicted_gib: float | None
    why_not: str = ""
    measured_gib: float | None = None
    measured_status: str = ""


def advise(model: MemoryModel | None, cases: list[Case], no_model_reason: str = "") -> list[StepAdvice]:
    advice = []
    for name, case in zip(LADDER_STEPS, cases, strict=True):
        if model is None:
            advice.append(StepAdvice(name, case, None, no_model_reason))
            continue
        try:
            advice.append(StepAdvice(name, case, model.predict(case.to_dict()).footprint_gib))
        except FitError as error:
            advice.append(StepAdvice(name, case, None, str(error)))
    return advice


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


def ladder_table(profile: GpuProfile, advice: list[StepAdvice]) -> str:
    rows = []
    for step in advice:
        fits = (
            "-"
            if step.predicted_gib is None
            else ("fits" if step.predicted_gib <= profile.total_gib else "OOM")
        )
        cells = [step.name, step.case.id, _gib(step.predicted_gib), fits]
        if any(s.measured_status for s in advice):
            cells += [_gib(step.measured_gib), step.measured_status or "-"]
        cells.append(step.why_not or "")
        rows.append(cells)
    headers = [
        "ladder step",
        "case",
        "predicted device peak GiB",
        f"on {profile.name} ({profile.total_gib:.2f} GiB)",
    ]
    if any(s.measured_status for s in advice):
        headers += ["measured device peak GiB", "measured status"]
    return md_table([*headers, "why not predicted"], rows)


def verdict(profile: GpuProfile, advice: list[StepAdvice]) -> str:
    for i, step in enumerate(advice):
        if step.predicted_gib is None:
            return f"undecided: step {step.name!r} is not predictable ({step.why_not})"
        if step.predicted_gib <= profile.total_gib:
            head = (
                "fits as set"
                if i == 0
                else f"does not fit as set; the first ladder step that fits is {step.name!r}"
            )
            return f"{head} (predicted {step.predicted_gib:.2f} of {profile.total_gib:.2f} GiB)"
    return "no step of the ladder fits (predicted)"


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


def measure_ladder(
    profile: GpuProfile, cases: list[Case], out: Path, timeout_s: float
) -> dict[str, tuple[str, float | None]]:
    """Run the ladder for real, each step in its own child as `pytest bench` runs it (a warm spare,
    and an OOM under an emulated cap rerun uncapped: `qlora_core.oom_need`), its row appended to
    OUT/results.jsonl as it ends; case id -> (status, measured device peak GiB). A step that ran out
    of memory under the cap gives what it needed uncapped, and its status says so."""
    from qlora_core.oom_need import run_case_measuring_need
    from qlora_core.result import result_file_name
    from qlora_core.runner import RunOptions
    from qlora_core.spare import SparePool

    out.mkdir(parents=True, exist_ok=True)
    measured: dict[str, tuple[str, float | None]] = {}
    with SparePool() as spares:
        spares.prime()
        for case in cases:
            options = RunOptions(profile=profile.name, timeout_s=timeout_s, families="fit-advisor")
            path = out / "cases" / result_file_name(case.hash, 0)
            result = run_case_measuring_need(case, options, path, spares=spares)
            with (out / RESULTS_JSONL).open("a") as f:
                f.write(result.to_json() + "\n")
            row = pd.Series(result.row())
            figures = peak_figures(row)  # the capped run's peak, else what its rerun needed
            status, peak = result.status, device_used_gib(row)
            if figures is not None and figures.label:
                status, peak = f"oom; {figures.label}", figures.device_gib
            measured[case.id] = (status, peak)
            print(f"measured {case.id}: {status}, device peak {_gib(peak)} GiB", flush=True)
    return measured


def run_advisor(
    gpu: str,
    model_name: str,
    batch: int,
    seq: int,
    runs: Sequence[Path],
    measure_out: Path | None = None,
    timeout_s: float = 900.0,
) -> str:
    """The advisor's report (markdown). AdvisorError on a bad query, before any heavy work."""
    profile = check_query(gpu, model_name, batch, seq)
    cases = query_ladder(profile, model_name, batch, seq)
    frames = frames_of(runs)
    rows = memory_rows(frames)
    model, why = fitted_pool(rows, frames)
    advice = advise(model, cases, why)
    if measure_out is not None:
        measured = measure_ladder(profile, cases, measure_out, timeout_s)
        advice = [
            dataclasses.replace(
                a, measured_status=measured[a.case.id][0], measured_gib=measured[a.case.id][1]
            )
            for a in advice
        ]
    held = leave_one_out(rows)
    parts = [
        f"# Fit advisor: {model_name}, batch {batch}, seq {seq} on {profile.name}",
        f"**{verdict(profile, advice)}**",
        "Every GiB figure below marked *predicted* comes from a model fitted to"
        f" {len(rows)} measured rows ({', '.join(str(p) for p in runs)}); the device peak is NVML's"
        " (the CUDA context included) above what the device used before the process, the figure a"
        " card must hold. The context was measured on the rows' GPU; a T4's own context may differ.",
        ladder_table(profile, advice),
        error_line(summarize(held)) + ".",
        held_out_table(held),
    ]
    if model is not None:
        coefficients = ", ".join(f"{c:.4g}" for c in model.activation_coefficients)
        parts.append(
            f"Fitted ({model.pool}, {model.rows} rows): context {model.context_gib:.3f} GiB, optimizer bytes"
            f" per trainable parameter {model.optimizer_bytes_per_param}, activation coefficients"
            f" {coefficients}."
        )
    return "\n\n".join(parts) + "\n"
