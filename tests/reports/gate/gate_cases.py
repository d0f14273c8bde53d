"""A clean run of three cases and the helpers the baseline tests build regressions with (hand-made
results, no GPU): `make_result` writes a case's row, `changed`/`scaled` alter one case of the clean
run, `judge` compares a run with a saved baseline, `failing`/`verdict_of` read the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qlora_core.cases.case import Case
from qlora_core.measurement.result import Result
from reports.gate.baseline import load_baseline
from reports.gate.thresholds import Thresholds
from reports.gate.verdict import GateReport, compare
from reports.run.frame import results_frame

PROFILE = "t4"
COMMAND = "pytest bench --gpu t4 --save-baseline baselines/t4.json"
ENVIRONMENT: dict[str, Any] = {"profile": PROFILE, "hostname": "runner-1"}

CASE_A = Case(model="llama-3.2-3b", compute_dtype="fp16", batch_size=4, seq_len=1024)
CASE_B = CASE_A.replace(batch_size=8)
CASE_C = CASE_A.replace(quant_type="fp4")
CASES = (CASE_A, CASE_B, CASE_C)

ENV_FIELDS: dict[str, Any] = {
    "device": "cuda",
    "gpu_name": "Tesla T4",
    "torch_version": "2.11.0",
    "transformers_version": "5.1.0",
    "peft_version": "0.21.0",
    "bitsandbytes_version": "0.50.1",
    "cuda_version": "12.8",
    "driver_version": "570.86.15",
}


def make_result(case: Case, profile: str = PROFILE, **changes: Any) -> Result:
    """An ok result with multi-GiB memory and a tight step-time spread, then `changes`."""
    scale = 1.0 + case.batch_size / 8
    values: dict[str, Any] = {
        **ENV_FIELDS,
        "status": "ok",
        "tokens_per_step": case.tokens_per_step,
        "step_ms_median": 2000.0 * scale,
        "step_ms_spread": 0.01,
        "tokens_per_s": case.tokens_per_step / (2.0 * scale),
        "kernel_ms_per_step": 1900.0 * scale,
        "peak_alloc_gib": 6.0 * scale,
        "peak_reserved_gib": 7.0 * scale,
        "nvml_base_gib": 0.5,
        "nvml_peak_gib": 0.5 + 7.5 * scale,
        "final_loss": 2.5,
    }
    values.update(changes)
    return Result.for_case(case, profile).replaced(**values)


def clean_results() -> list[Result]:
    return [make_result(case) for case in CASES]


def changed(case: Case, **changes: Any) -> list[Result]:
    """The clean run with one case's fields changed."""
    return [make_result(c, **changes) if c == case else make_result(c) for c in CASES]


def scaled(case: Case, metric: str, factor: float) -> list[Result]:
    """The clean run with one case's metric multiplied by `factor`."""
    return changed(case, **{metric: make_result(case).get_field(metric) * factor})


def judge(baseline_path: Path, run: list[Result], thresholds: Thresholds | None = None) -> GateReport:
    """Load the saved baseline for the run's profile and compare the run with it."""
    baseline = load_baseline(baseline_path, profile=PROFILE)
    return compare(baseline, results_frame(run), thresholds or Thresholds())


def failing(report: GateReport) -> set[tuple[str, str]]:
    return {(c.case_id, c.metric) for c in report.comparisons if c.verdict == "fail"}


def verdict_of(report: GateReport, case: Case, metric: str) -> str:
    (comparison,) = [c for c in report.comparisons if (c.case_id, c.metric) == (case.id, metric)]
    return comparison.verdict
