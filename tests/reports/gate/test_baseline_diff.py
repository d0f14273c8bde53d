"""Release gate: the diff report of a comparison, and `gate()` that writes it (hand-made results,
no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reports.gate.baseline import BASELINE_DIFF_MD, GATED_METRICS, BaselineProfileError, load_baseline
from reports.gate.thresholds import Thresholds
from reports.gate.verdict import compare, gate, render_diff_markdown
from reports.run.frame import RunData, results_frame
from tests.reports.gate.gate_cases import (
    CASE_A,
    CASE_B,
    CASE_C,
    CASES,
    COMMAND,
    ENVIRONMENT,
    PROFILE,
    clean_results,
    failing,
    make_result,
    scaled,
)


# -- the diff report ------------------------------------------------------------------------------
def test_render_diff_markdown_shows_everything(baseline_path: Path) -> None:
    new = CASE_A.replace(seq_len=2048)
    run = [
        make_result(
            CASE_A, tokens_per_s=make_result(CASE_A).training.tokens_per_s * 0.8, torch_version="2.12.0"
        ),
        make_result(CASE_B, status="oom", torch_version="2.12.0"),
        make_result(new, torch_version="2.12.0"),
    ]
    frame = results_frame(run)
    baseline = load_baseline(baseline_path, profile=PROFILE)
    report = compare(baseline, frame, Thresholds())
    text = render_diff_markdown(report, baseline, frame)
    assert text.startswith("# Baseline comparison: FAIL\n")
    assert f"**Verdict: {report.summary}**" in text
    assert "torch: 2.11.0 -> 2.12.0" in text
    assert "| **torch** (changed) | 2.11.0 | 2.12.0 |" in text
    assert COMMAND in text
    for case in (CASE_A, CASE_B):
        for metric in GATED_METRICS:
            assert f"| {case.id} | {metric} |" in text
    assert f"| {CASE_B.id} | ok | oom |" in text
    assert f"## Cases in the baseline only\n\n- {CASE_C.id}" in text
    assert f"## Cases in this run only\n\n- {new.id}" in text
    for line in report.failures:
        assert line in text


def test_render_diff_markdown_of_a_clean_run(baseline_path: Path) -> None:
    frame = results_frame(clean_results())
    baseline = load_baseline(baseline_path, profile=PROFILE)
    text = render_diff_markdown(compare(baseline, frame, Thresholds()), baseline, frame)
    assert text.startswith("# Baseline comparison: PASS\n")
    assert "**Verdict: PASS: no regressions (18 metric checks made)**" in text
    assert "## Flags" not in text and "## Failures" not in text


# -- gate(): what bench/test_gate.py runs ---------------------------------------------------------
def test_gate_writes_the_diff_and_returns_the_report(baseline_path: Path, tmp_path: Path) -> None:
    run = RunData(results_frame(scaled(CASE_A, "peak_alloc_gib", 1.10)), environment=ENVIRONMENT)
    report = gate(baseline_path, run, Thresholds(), tmp_path / "run")
    assert failing(report) == {(CASE_A.id, "peak_alloc_gib")}
    diff = (tmp_path / "run" / BASELINE_DIFF_MD).read_text()
    assert diff.startswith("# Baseline comparison: FAIL")


def test_gate_flags_a_forced_run(baseline_path: Path, tmp_path: Path) -> None:
    run = RunData(results_frame(clean_results()), environment={"forced": {"prepare_kbit": False}})
    report = gate(baseline_path, run, Thresholds(), tmp_path)
    assert report.passed
    assert report.flags == ["forced fields (simulated code change): {'prepare_kbit': False}"]
    assert "forced fields" in (tmp_path / BASELINE_DIFF_MD).read_text()


def test_gate_raises_on_a_baseline_of_another_profile(baseline_path: Path, tmp_path: Path) -> None:
    run = RunData(results_frame([make_result(c, profile="l4") for c in CASES]))
    with pytest.raises(BaselineProfileError, match=str(baseline_path)):
        gate(baseline_path, run, Thresholds(), tmp_path)
    assert not (tmp_path / BASELINE_DIFF_MD).exists()
