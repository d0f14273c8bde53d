"""Release gating: a run compared against a stored baseline fails on regressions.

A baseline (`reports.baseline`) holds per case id the case hash, the status and the gated
metrics. `compare` matches a run's cases to it by case id and
hash and judges each metric against `Thresholds`:

- tokens_per_s fails when it drops by more than max(tokens_per_s_drop_pct,
  speed_noise_multiple x the step-time spread in %), the spread being the larger of the baseline's
  and the run's (p90 - p10) / median. A rise never fails.
- each memory metric fails when it rises by more than max(memory_rise_pct % of the baseline,
  memory_rise_min_mib MiB). A drop never fails.
- final_loss fails when it rises by more than final_loss_rise_pct % of |baseline|.
- any change of status fails (ok -> oom, and oom -> ok too: the baseline is stale); a changed case
  hash, a case on one side only, and a metric measured on one side only fail as well.

A different GPU or library version is a flag, not a failure: judging a release bump is what the
gate is for. A different profile, and every kind of unreadable baseline, is a `BaselineError`
(never a pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qlora_core.result import Status, write_atomic
from reports.baseline import (
    BASELINE_DIFF_MD,
    GATED_METRICS,
    MEMORY_METRICS,
    VERSION_COLUMNS,
    BaselineProfileError,
    cases_of,
    load_baseline,
    run_environment,
    run_profile,
)
from reports.frame import RunData
from reports.markdown import md_table
from reports.thresholds import Thresholds

_UNKNOWN = "(unknown)"
_OK = Status.OK.value
_REL_EPS = 1e-9
_MIB_IN_GIB = 1024


# -- comparing ------------------------------------------------------------------------------------
@dataclass
class MetricComparison:
    """One case x metric judgement."""

    case_id: str
    metric: str
    baseline: float | None
    current: float | None
    change_pct: float | None
    """(current - baseline) / |baseline| x 100; None where either is missing or baseline is 0."""
    limit: str
    """The allowed change as people read it, e.g. "-7.0% (noise floor 3x2.1%)"."""
    verdict: str
    """"pass", "fail" or "n/a" (not compared: not measured, status not ok, case changed)."""
    why: str


@dataclass
class StatusChange:
    """A case whose status differs from the baseline's (always a failure)."""

    case_id: str
    baseline: str
    current: str


@dataclass
class HashChange:
    """A case id whose definition (case hash) differs from the baseline's (always a failure)."""

    case_id: str
    baseline: str
    current: str


@dataclass
class GateReport:
    """Everything `compare` found; `passed` is the gate's answer."""

    comparisons: list[MetricComparison] = field(default_factory=list)
    status_changes: list[StatusChange] = field(default_factory=list)
    only_in_baseline: list[str] = field(default_factory=list)
    only_in_run: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    """Environment differences (GPU, library versions), each "name: old -> new". Not failures."""
    hash_changes: list[HashChange] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """One human line per failure, each naming the case (and the metric)."""
        lines = [
            f"{c.case_id}: case definition changed (case_hash {c.baseline} -> {c.current}); "
            "regenerate the baseline"
            for c in self.hash_changes
        ]
        lines += [f"{c.case_id}: status changed {c.baseline} -> {c.current}" for c in self.status_changes]
        lines += [f"{c.case_id}: {c.metric} {c.why}" for c in self.comparisons if c.verdict == "fail"]
        lines += [f"{case_id}: in the baseline but not in this run" for case_id in self.only_in_baseline]
        lines += [
            f"{case_id}: in this run but not in the baseline; regenerate the baseline"
            for case_id in self.only_in_run
        ]
        return lines

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def summary(self) -> str:
        """The one-line overall verdict."""
        failures = self.failures
        checked = sum(c.verdict != "n/a" for c in self.comparisons)
        if not failures:
            return f"PASS: no regressions ({checked} metric checks passed)"
        return f"FAIL: {len(failures)} failure(s); {checked} metric checks made"


def compare(baseline: dict[str, Any], results: pd.DataFrame, thresholds: Thresholds) -> GateReport:
    """Judge a run's results against a (validated) baseline of the same profile."""
    env = run_environment(results)
    if env["profile"] and env["profile"] != baseline["profile"]:
        raise BaselineProfileError(
            None, f"made for profile {baseline['profile']!r}, but the results are profile {env['profile']!r}"
        )
    base_cases: dict[str, dict[str, Any]] = baseline["cases"]
    run_cases = cases_of(results)
    report = GateReport(
        only_in_baseline=sorted(set(base_cases) - set(run_cases)),
        only_in_run=sorted(set(run_cases) - set(base_cases)),
        flags=environment_flags(baseline, env),
    )
    for case_id in sorted(set(base_cases) & set(run_cases)):
        _compare_case(report, case_id, base_cases[case_id], run_cases[case_id], thresholds)
    return report


def _compare_case(
    report: GateReport,
    case_id: str,
    base: dict[str, Any],
    run: dict[str, Any],
    thresholds: Thresholds,
) -> None:
    """Add one matched case's definition, status and metric verdicts to `report`."""
    skip_why = ""
    if base["case_hash"] != run["case_hash"]:
        report.hash_changes.append(HashChange(case_id, base["case_hash"], run["case_hash"]))
        skip_why = "not compared: the case definition changed"
    elif base["status"] != run["status"]:
        report.status_changes.append(StatusChange(case_id, base["status"], run["status"]))
        skip_why = f"not compared: status changed {base['status']} -> {run['status']}"
    elif base["status"] != _OK:
        skip_why = f"not compared: status {base['status']} on both sides"
    for metric in GATED_METRICS:
        if skip_why:
            comparison = MetricComparison(
                case_id, metric, base.get(metric), run.get(metric), None, "", "n/a", skip_why
            )
        else:
            comparison = compare_metric(case_id, metric, base, run, thresholds)
        report.comparisons.append(comparison)


def compare_metric(
    case_id: str,
    metric: str,
    base: dict[str, Any],
    run: dict[str, Any],
    thresholds: Thresholds,
) -> MetricComparison:
    """Judge one gated metric of a case that is ok on both sides."""
    b, c = base.get(metric), run.get(metric)
    if metric == "tokens_per_s":
        allowed, limit = speed_limit(thresholds, base.get("step_ms_spread"), run.get("step_ms_spread"), b)
    elif metric in MEMORY_METRICS:
        allowed, limit = memory_limit(thresholds, b)
    elif metric == "final_loss":
        allowed, limit = loss_limit(thresholds, b)
    else:
        raise ValueError(f"{metric!r} is not a gated metric; gated: {list(GATED_METRICS)}")

    if b is None and c is None:
        return MetricComparison(case_id, metric, b, c, None, limit, "n/a", "not measured on either side")
    if c is None:
        return MetricComparison(
            case_id, metric, b, c, None, limit, "fail", f"was measured ({_fmt(metric, b)}), now missing"
        )
    if b is None:
        return MetricComparison(
            case_id,
            metric,
            b,
            c,
            None,
            limit,
            "fail",
            f"was not measured in the baseline, now is ({_fmt(metric, c)}); regenerate the baseline",
        )
    change_pct = (c - b) / abs(b) * 100 if b != 0 else None
    # Only the harmful direction counts: a drop of speed, a rise of memory or loss.
    harm = b - c if metric == "tokens_per_s" else c - b
    if harm > allowed + _REL_EPS * max(abs(b), 1.0):
        why = f"{_describe_harm(metric, b, c, change_pct)}, beyond the limit {limit}"
        return MetricComparison(case_id, metric, b, c, change_pct, limit, "fail", why)
    return MetricComparison(case_id, metric, b, c, change_pct, limit, "pass", "within the limit")


def _describe_harm(metric: str, base: float, current: float, change_pct: float | None) -> str:
    """E.g. "dropped 10.0% (1,000.0 -> 900.0 tok/s)" or "rose 512 MiB, 5.0% (10.000 -> 10.500 GiB)"."""
    direction = "dropped" if metric == "tokens_per_s" else "rose"
    size = f"{abs(change_pct):.1f}%" if change_pct is not None else "from 0"
    if metric in MEMORY_METRICS:
        size = f"{abs(current - base) * _MIB_IN_GIB:.0f} MiB, {size}"
    return f"{direction} {size} ({_fmt(metric, base)} -> {_fmt(metric, current)})"


def speed_limit(
    thresholds: Thresholds, base_spread: float | None, run_spread: float | None, base: float | None
) -> tuple[float, str]:
    """Allowed drop of tokens/s (absolute) and its text, widened to the measured noise floor."""
    spreads = [s for s in (base_spread, run_spread) if s is not None]
    spread_pct = 100 * max(spreads) if spreads else 0.0
    limit_pct = max(thresholds.tokens_per_s_drop_pct, thresholds.speed_noise_multiple * spread_pct)
    if spreads:
        text = f"-{limit_pct:.1f}% (noise floor {thresholds.speed_noise_multiple:g}x{spread_pct:.1f}%)"
    else:
        text = f"-{limit_pct:.1f}% (no step-time spread measured)"
    allowed = abs(base) * limit_pct / 100 if base is not None else 0.0
    return allowed, text


def memory_limit(thresholds: Thresholds, base_gib: float | None) -> tuple[float, str]:
    """Allowed rise of a memory metric in GiB: max(pct of the baseline, the MiB floor)."""
    floor_gib = thresholds.memory_rise_min_mib / _MIB_IN_GIB
    pct_gib = abs(base_gib) * thresholds.memory_rise_pct / 100 if base_gib is not None else 0.0
    allowed = max(pct_gib, floor_gib)
    text = (
        f"+{allowed * _MIB_IN_GIB:.0f} MiB "
        f"(max of {thresholds.memory_rise_pct:g}% and {thresholds.memory_rise_min_mib:g} MiB)"
    )
    return allowed, text


def loss_limit(thresholds: Thresholds, base: float | None) -> tuple[float, str]:
    """Allowed rise of final_loss: a percentage of |baseline|."""
    allowed = abs(base) * thresholds.final_loss_rise_pct / 100 if base is not None else 0.0
    return allowed, f"+{thresholds.final_loss_rise_pct:.1f}%"


def environment_flags(baseline: dict[str, Any], run_env: dict[str, Any]) -> list[str]:
    """Each difference of GPU name or library version, as "name: old -> new"."""
    pairs = [("GPU", baseline.get("gpu_name", ""), run_env["gpu_name"])]
    base_versions = baseline.get("versions", {})
    pairs += [(lib, base_versions.get(lib, ""), run_env["versions"][lib]) for lib in VERSION_COLUMNS]
    return [f"{name}: {old or _UNKNOWN} -> {new or _UNKNOWN}" for name, old, new in pairs if old != new]


# -- the gate as the bench session runs it --------------------------------------------------------
def gate(baseline_path: Path, run: RunData, thresholds: Thresholds, run_dir: Path) -> GateReport:
    """Load the baseline for the run's profile, compare, and write `run_dir/baseline-diff.md`.

    Raises a BaselineError when the baseline cannot be used; the caller fails on it.
    """
    baseline = load_baseline(Path(baseline_path), profile=run_profile(run))
    report = compare(baseline, run.results, thresholds)
    forced = run.environment.get("forced")
    if forced:
        # --force runs every case with a field changed under the matrix's ids: a simulated change.
        report.flags.append(f"forced fields (simulated code change): {forced}")
    text = render_diff_markdown(report, baseline, run.results)
    write_atomic(Path(run_dir) / BASELINE_DIFF_MD, text)
    return report


# -- rendering ------------------------------------------------------------------------------------
def render_diff_markdown(report: GateReport, baseline: dict[str, Any], results: pd.DataFrame) -> str:
    """baseline-diff.md: environments, flags, every case x metric, status changes, one-sided cases."""
    env = run_environment(results)
    verdict = "PASS" if report.passed else "FAIL"
    parts = [
        f"# Baseline comparison: {verdict}",
        f"**Verdict: {report.summary}**",
        "## Environments",
        _environment_table(baseline, env),
    ]
    if report.flags:
        parts += [
            "## Flags (the environment changed: this is what the gate judges)",
            "\n".join(f"- **{flag}**" for flag in report.flags),
        ]
    if report.failures:
        parts += ["## Failures", "\n".join(f"- {line}" for line in report.failures)]
    parts += ["## Metrics", _metrics_table(report.comparisons)]
    parts += [
        "## Status changes",
        _table(
            ["case", "baseline", "this run"],
            [[c.case_id, c.baseline, c.current] for c in report.status_changes],
        ),
        "## Case definition changes",
        _table(
            ["case", "baseline case_hash", "this run case_hash"],
            [[c.case_id, c.baseline, c.current] for c in report.hash_changes],
        ),
        "## Cases in the baseline only",
        _bullets(report.only_in_baseline),
        "## Cases in this run only",
        _bullets(report.only_in_run),
    ]
    return "\n\n".join(parts) + "\n"


def _environment_table(baseline: dict[str, Any], env: dict[str, Any]) -> str:
    base_versions = baseline.get("versions", {})
    rows = [
        ["profile", baseline.get("profile", ""), env["profile"]],
        ["GPU", baseline.get("gpu_name", ""), env["gpu_name"]],
    ]
    rows += [[lib, base_versions.get(lib, ""), env["versions"][lib]] for lib in VERSION_COLUMNS]
    rows = [[name, old or _UNKNOWN, new or _UNKNOWN] for name, old, new in rows]
    for row in rows:
        if row[1] != row[2]:
            row[0] = f"**{row[0]}** (changed)"
    rows += [
        ["created", baseline.get("created_at", ""), "this run"],
        ["command", f"`{baseline.get('command', '')}`", ""],
    ]
    return _table(["", "baseline", "this run"], rows)


def _metrics_table(comparisons: list[MetricComparison]) -> str:
    rows = [
        [
            c.case_id,
            c.metric,
            _fmt(c.metric, c.baseline),
            _fmt(c.metric, c.current),
            f"{c.change_pct:+.1f}%" if c.change_pct is not None else "",
            c.limit,
            f"**{c.verdict}**" if c.verdict == "fail" else c.verdict,
            c.why,
        ]
        for c in comparisons
    ]
    return _table(["case", "metric", "baseline", "this run", "change", "limit", "verdict", "why"], rows)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table ("(none)" when there are no rows)."""
    return md_table(header, rows) if rows else "(none)"


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items) if items else "(none)"


def _fmt(metric: str, value: float | None) -> str:
    """A metric value with its unit; "-" when not measured."""
    if value is None:
        return "-"
    if metric == "tokens_per_s":
        return f"{value:,.1f} tok/s"
    if metric.endswith("_gib"):
        return f"{value:.3f} GiB"
    return f"{value:.4f}"


# -- small helpers --------------------------------------------------------------------------------
