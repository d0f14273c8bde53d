"""The gate's speed rules (reports.gate.rules): kernel time, tokens/s with its minimum effect and
significance over the repeats, "too noisy to gate", host-bound cases. Hand-made rows, saved as a
baseline and read back, as the gate sees them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qlora_core.cases.case import Case
from qlora_core.measurement.result import Result
from reports.gate.baseline import load_baseline, make_baseline, save_baseline
from reports.gate.rules import MetricComparison
from reports.gate.thresholds import Thresholds
from reports.gate.verdict import GateReport, compare, render_diff_markdown
from reports.run.frame import load_run, results_frame
from reports.run.stats import mann_whitney_greater

CASE = Case(model="llama-3.1-8b", batch_size=4, seq_len=2048)
REFERENCE = Path(__file__).resolve().parents[3] / "reports" / "reference" / "h200-smoke"


def repeats(tokens_per_s: list[float], kernel_ms: float | list[float] = 100.0, **fields: Any) -> list[Result]:
    """One ok row per repeat of CASE on an H200: device-bound (tight step times) unless changed."""
    kernels = kernel_ms if isinstance(kernel_ms, list) else [kernel_ms] * len(tokens_per_s)
    device_bound = {"step_ms_rel_iqr": 0.002, "host_bound": False, "gpu_busy": 0.97}
    base = Result.for_case(CASE, "h200").replaced(
        status="ok",
        device="cuda",
        gpu_name="NVIDIA H200",
        peak_alloc_gib=24.0,
        final_loss=2.0,
        **{**device_bound, **fields},
    )
    return [
        base.replaced(repeat=i, tokens_per_s=t, kernel_ms_per_step=k)
        for i, (t, k) in enumerate(zip(tokens_per_s, kernels))
    ]


def judge(tmp_path: Path, base: list[Result], run: list[Result], **options: Any) -> GateReport:
    path = tmp_path / "h200.json"
    save_baseline(path, results_frame(base), command="pytest bench", environment={})
    return compare(load_baseline(path, profile="h200"), results_frame(run), Thresholds(), **options)


def speed(report: GateReport, metric: str = "tokens_per_s") -> MetricComparison:
    (comparison,) = [c for c in report.comparisons if c.metric == metric]
    return comparison


STEADY = [1000.0, 1002.0, 998.0, 1001.0, 999.0]


@pytest.mark.parametrize(
    ("count", "rule"),
    [
        (1, "minimum effect alone (1 repeat each: no significance test)"),
        (2, "95% CI overlap (2 vs 2 repeats)"),
        (3, "95% CI overlap (3 vs 3 repeats)"),  # 3 vs 3: the smallest p-value is 0.05, not < 0.05
        (5, "Mann-Whitney U (5 vs 5 repeats)"),
    ],
)
def test_halved_tokens_per_s_fails_under_every_rule(tmp_path, count, rule):
    report = judge(tmp_path, repeats(STEADY[:count]), repeats([v / 2 for v in STEADY[:count]]))
    comparison = speed(report)
    assert comparison.verdict == "fail" and comparison.rule == rule, comparison
    assert comparison.change_pct == pytest.approx(-50.0, abs=0.2)
    assert not report.passed and "tokens_per_s dropped 50" in report.failures[0]
    if count == 5:
        assert comparison.evidence == "p = 0.00397 (exact), alpha 0.05"  # 1 / C(10, 5) = 1 / 252
    # The same run against itself passes under the same rule.
    assert speed(judge(tmp_path, repeats(STEADY[:count]), repeats(STEADY[:count]))).verdict == "pass"


def test_a_drop_within_the_minimum_effect_passes_even_when_significant(tmp_path):
    report = judge(tmp_path, repeats(STEADY), repeats([v * 0.95 for v in STEADY]))
    comparison = speed(report)
    assert comparison.verdict == "pass" and comparison.why == "within the minimum effect"
    assert comparison.evidence.startswith("p = 0.00397")  # significant, but only -5%


def test_a_drop_beyond_the_minimum_effect_that_is_not_significant_passes(tmp_path):
    base = [1000.0, 1040.0, 960.0, 1020.0, 980.0]
    run = [920.0, 1030.0, 900.0, 990.0, 915.0]  # median -8%, but overlapping the baseline
    assert mann_whitney_greater(base, run).p > 0.05
    comparison = speed(judge(tmp_path, repeats(base), repeats(run)))
    assert comparison.verdict == "pass" and "not significant" in comparison.why
    assert comparison.change_pct == pytest.approx(-8.0)


def test_kernel_time_fails_on_a_10_percent_rise_and_passes_a_2_percent_one(tmp_path):
    slower = judge(tmp_path, repeats(STEADY), repeats(STEADY, kernel_ms=110.0))
    kernel = speed(slower, "kernel_ms_per_step")
    assert kernel.verdict == "fail" and kernel.limit == "+3.0%"
    assert "kernel_ms_per_step rose 10.0% (100.00 ms -> 110.00 ms)" in slower.failures[0]
    assert speed(slower).verdict == "pass"  # tokens/s did not move: the kernel rule alone caught it
    assert judge(tmp_path, repeats(STEADY), repeats(STEADY, kernel_ms=102.0)).passed


def test_a_host_bound_case_is_gated_on_kernel_time(tmp_path):
    host = {"host_bound": True, "gpu_busy": 0.28, "step_ms_rel_iqr": 0.3}
    noisy_base = repeats([1627.0], **host)
    # Its wall time halves, its kernels do not change: the host's jitter is not a regression...
    report = judge(tmp_path, noisy_base, repeats([800.0], **host))
    comparison = speed(report)
    assert report.passed and comparison.verdict == "n/a"
    assert comparison.rule == "kernel time (host-bound)" and "GPU busy 28%" in comparison.why
    # ...but its kernels taking 10% longer is.
    assert not judge(tmp_path, noisy_base, repeats([1627.0], kernel_ms=110.0, **host)).passed
    # Without kernel time (a CPU run, an older row) the tokens/s rules apply, and this one is too noisy.
    no_kernels = judge(
        tmp_path, repeats([1627.0], kernel_ms=None, **host), repeats([1600.0], kernel_ms=None, **host)
    )
    assert speed(no_kernels).verdict == "too noisy to gate"


def test_a_noisy_case_fails_unless_allowed_and_is_then_listed(tmp_path):
    noisy = {"step_ms_rel_iqr": 0.25}  # one repeat, steps jitter +-25%: no 7% verdict is possible
    report = judge(tmp_path, repeats([1000.0], **noisy), repeats([1000.0], **noisy))
    comparison = speed(report)
    assert comparison.verdict == "too noisy to gate" and not report.passed  # never passed unseen
    assert "noise ±25.0% (baseline: within-run relative IQR" in comparison.why
    assert report.failures == [f"{CASE.id}: tokens_per_s too noisy to gate: {comparison.why}"]
    allowed = judge(tmp_path, repeats([1000.0], **noisy), repeats([1000.0], **noisy), allow_noisy=True)
    assert allowed.passed and [c.verdict for c in allowed.too_noisy] == ["too noisy to gate (allowed)"]
    assert "1 too noisy to gate, listed" in allowed.summary
    # Repeats measure the noise between processes: two far apart give a wide interval, too noisy.
    spread = judge(tmp_path, repeats([1000.0, 1400.0]), repeats([1000.0, 1400.0]))
    assert "95% CI half-width over 2 repeats" in speed(spread).why
    # The same check on a tight case passes (no noisy verdict on quiet data).
    assert judge(tmp_path, repeats([1000.0]), repeats([1000.0])).passed


def test_the_diff_names_each_rule_its_evidence_and_the_noisy_cases(tmp_path):
    base, run = repeats(STEADY), repeats([v / 2 for v in STEADY])
    path = tmp_path / "h200.json"
    save_baseline(path, results_frame(base), command="pytest bench", environment={})
    baseline = load_baseline(path)
    text = render_diff_markdown(
        compare(baseline, results_frame(run), Thresholds()), baseline, results_frame(run)
    )
    assert "| case | metric | rule | baseline | this run | change | limit | verdict | why |" in text
    assert "Mann-Whitney U (5 vs 5 repeats) | 1,000.0 tok/s | 500.0 tok/s | -50.0%; p = 0.00397" in text
    assert "| -7.0% and significant | **fail** |" in text
    assert "| kernel time (stable across processes) | 100.00 ms | 100.00 ms | +0.0% | +3.0% | pass |" in text
    noisy = repeats([1000.0], step_ms_rel_iqr=0.25)
    report = compare(
        make_baseline(results_frame(noisy), command="", environment={}), results_frame(noisy), Thresholds()
    )
    assert "## Too noisy to gate" in render_diff_markdown(report, baseline, results_frame(noisy))


def test_the_h200_reference_with_every_tokens_per_s_halved_cannot_pass():
    # The finding: under the old widening rule 5 of the 6 smoke cases passed a halving.
    # The reference now holds 3 processes per case: every per-process value is halved too.
    run = load_run(REFERENCE)
    baseline = make_baseline(run.results, command="pytest bench", environment=run.environment)
    halved = run.results.assign(
        tokens_per_s=run.results["tokens_per_s"] / 2,
        tokens_per_s_ci_low=run.results["tokens_per_s_ci_low"] / 2,
        tokens_per_s_ci_high=run.results["tokens_per_s_ci_high"] / 2,
        tokens_per_s_repeats=[[v / 2 for v in values] for values in run.results["tokens_per_s_repeats"]],
    )
    report = compare(baseline, halved, Thresholds())
    speeds = {
        c.case_id: c for c in report.comparisons if c.metric == "tokens_per_s" and c.baseline is not None
    }
    host_bound = set(run.results.loc[run.results["host_bound"].astype(bool), "case_id"])
    assert len(speeds) == 6 and host_bound  # the SmolLM2 text row: GPU busy ~11%
    assert all(c.fails for case_id, c in speeds.items() if case_id not in host_bound), speeds
    # A host-bound row's wall time is the host's: its kernel time decides, and did not move.
    assert all(speeds[case_id].verdict == "n/a" for case_id in host_bound)
    assert not report.passed
    # Three processes per case leave none too noisy to gate; --allow-noisy changes nothing here.
    allowed = compare(baseline, halved, Thresholds(), allow_noisy=True)
    assert not allowed.passed and not allowed.too_noisy
