"""Release gating: a run compared against a stored baseline fails on regressions.

`compare` matches a run's cases (repeats folded) to a baseline (`reports.gate.baseline`) by case id and
hash and judges each metric by its rule (`reports.gate.rules`). See docs/gate.md#the-gate and
docs/gate.md#what-else-fails.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qlora_core.measurement.result import Status, write_atomic
from reports.gate.baseline import (
    BASELINE_DIFF_MD,
    GATED_METRICS,
    SPEED_METRICS,
    VERSION_COLUMNS,
    BaselineProfileError,
    cases_of,
    run_environment,
    run_matrix,
    run_profile,
)
from reports.gate.baseline_choice import choose_baseline, device_label, speed_not_compared
from reports.gate.rules import NOISY_ALLOWED, NOT_COMPARED, TOO_NOISY, MetricComparison, compare_metric, fmt
from reports.gate.thresholds import REQUIRE_SPEED_FLAG, Thresholds
from reports.markdown import md_table
from reports.run.frame import RunData

_UNKNOWN = "(unknown)"
_OK = Status.OK.value


# -- comparing ------------------------------------------------------------------------------------
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
    not_selected: list[str] = field(default_factory=list)
    """Baseline cases this session deselected (`-k`): not run on purpose, listed, not failures."""
    flags: list[str] = field(default_factory=list)
    """Environment differences (GPU, library versions), each "name: old -> new". Not failures."""
    hash_changes: list[HashChange] = field(default_factory=list)
    speed_not_compared: str = ""
    """Why no speed was compared ("speed not compared: baseline from X, run on Y"); "" when it was."""
    require_speed: bool = False
    """--require-speed: speed that could not be compared is a failure."""
    baseline_note: str = ""
    """How the baseline was chosen from a folder of baselines; "" for a file named as it is."""

    @property
    def failures(self) -> list[str]:
        """One human line per failure, each naming the case (and the metric)."""
        lines = [
            f"{c.case_id}: case definition changed (case_hash {c.baseline} -> {c.current}); "
            "regenerate the baseline"
            for c in self.hash_changes
        ]
        lines += [f"{c.case_id}: status changed {c.baseline} -> {c.current}" for c in self.status_changes]
        noisy = f"{TOO_NOISY}: "
        lines += [
            f"{c.case_id}: {c.metric} {noisy if c.verdict == TOO_NOISY else ''}{c.why}"
            for c in self.comparisons
            if c.fails
        ]
        lines += [f"{case_id}: in the baseline but not in this run" for case_id in self.only_in_baseline]
        lines += [
            f"{case_id}: in this run but not in the baseline; regenerate the baseline"
            for case_id in self.only_in_run
        ]
        if self.require_speed and self.speed_not_compared:
            lines.append(
                f"{self.speed_not_compared}, and {REQUIRE_SPEED_FLAG} demands speed gating: gate"
                " against a baseline measured on this GPU"
            )
        if not self.comparisons and not lines:
            # A gate that compared nothing must not pass: every baseline case was deselected.
            lines.append("no case of the baseline ran in this run: nothing was compared")
        return lines

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def too_noisy(self) -> list[MetricComparison]:
        """Comparisons too noisy to gate: failures, or listed only under --allow-noisy."""
        return [c for c in self.comparisons if c.verdict in (TOO_NOISY, NOISY_ALLOWED)]

    @property
    def summary(self) -> str:
        """The one-line overall verdict, and why speed was not compared when it was not."""
        speed = f"; {self.speed_not_compared}" if self.speed_not_compared else ""
        return self.verdict + speed

    @property
    def verdict(self) -> str:
        """PASS or FAIL with the count of checks made (`summary` without the speed note)."""
        failures = self.failures
        checked = sum(c.verdict != NOT_COMPARED for c in self.comparisons)
        if not failures:
            noisy = len(self.too_noisy)
            listed = f"; {noisy} too noisy to gate, listed (--allow-noisy)" if noisy else ""
            return f"PASS: no regressions ({checked} metric checks made{listed})"
        return f"FAIL: {len(failures)} failure(s); {checked} metric checks made"


def compare(
    baseline: dict[str, Any],
    results: pd.DataFrame,
    thresholds: Thresholds,
    allow_noisy: bool = False,
    selected: Collection[str] | None = None,
    require_speed: bool = False,
) -> GateReport:
    """Judge a run's results (repeats folded) against a (validated) baseline of the same profile.

    `allow_noisy`: a case too noisy to gate on tokens/s is listed instead of failing.
    `require_speed`: speed that cannot be compared (another GPU kind) fails the gate.
    `selected`: the case ids the session meant to run (after `-k`), None for all; a baseline case
    outside it is listed as not selected, while one selected but absent from the run fails.
    """
    env = run_environment(results)
    if env["profile"] and env["profile"] != baseline["profile"]:
        raise BaselineProfileError(
            None, f"made for profile {baseline['profile']!r}, but the results are profile {env['profile']!r}"
        )
    base_cases: dict[str, dict[str, Any]] = baseline["cases"]
    run_cases = cases_of(results)
    missing = set(base_cases) - set(run_cases)
    unselected = missing - set(selected) if selected is not None else set()
    report = GateReport(
        only_in_baseline=sorted(missing - unselected),
        not_selected=sorted(unselected),
        only_in_run=sorted(set(run_cases) - set(base_cases)),
        flags=environment_flags(baseline, env),
        speed_not_compared=speed_not_compared(baseline, env["gpu_name"], env["profile"] or None),
        require_speed=require_speed,
    )
    for case_id in sorted(set(base_cases) & set(run_cases)):
        _compare_case(report, case_id, base_cases[case_id], run_cases[case_id], thresholds, allow_noisy)
    return report


def _compare_case(
    report: GateReport,
    case_id: str,
    base: dict[str, Any],
    run: dict[str, Any],
    thresholds: Thresholds,
    allow_noisy: bool,
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
                case_id, metric, base.get(metric), run.get(metric), None, "", NOT_COMPARED, skip_why
            )
        elif metric in SPEED_METRICS and report.speed_not_compared:
            # Another GPU kind: the difference is the hardware's, never a regression nor a pass.
            why = report.speed_not_compared
            comparison = MetricComparison(
                case_id, metric, base.get(metric), run.get(metric), None, "", NOT_COMPARED, why, "another GPU"
            )
        else:
            comparison = compare_metric(case_id, metric, base, run, thresholds, allow_noisy)
        report.comparisons.append(comparison)


def environment_flags(baseline: dict[str, Any], run_env: dict[str, Any]) -> list[str]:
    """Each difference of GPU name or library version, as "name: old -> new"."""
    pairs = [("GPU", baseline.get("gpu_name", ""), run_env["gpu_name"])]
    base_versions = baseline.get("versions", {})
    pairs += [(lib, base_versions.get(lib, ""), run_env["versions"][lib]) for lib in VERSION_COLUMNS]
    return [f"{name}: {old or _UNKNOWN} -> {new or _UNKNOWN}" for name, old, new in pairs if old != new]


# -- the gate as the bench session runs it --------------------------------------------------------
def gate(
    baseline_path: Path,
    run: RunData,
    thresholds: Thresholds,
    run_dir: Path,
    allow_noisy: bool = False,
    selected: Collection[str] | None = None,
    require_speed: bool = False,
) -> GateReport:
    """Load the baseline for the run's profile and tier (`baseline_path` a file, or a folder to
    choose from by profile, tier and GPU), compare, and write `run_dir/baseline-diff.md`.

    Raises a BaselineError when the baseline cannot be used; the caller fails on it.
    """
    gpu_name = run_environment(run.results, run.environment)["gpu_name"]
    choice = choose_baseline(Path(baseline_path), run_profile(run), run_matrix(run), gpu_name)
    baseline = choice.baseline
    report = compare(baseline, run.results, thresholds, allow_noisy, selected, require_speed)
    report.baseline_note = choice.note
    forced = run.environment.get("forced")
    if forced:
        # --force runs every case with a field changed under the matrix's ids: a simulated change.
        report.flags.append(f"forced fields (simulated code change): {forced}")
    text = render_diff_markdown(report, baseline, run.results, run.environment)
    write_atomic(Path(run_dir) / BASELINE_DIFF_MD, text)
    return report


# -- rendering ------------------------------------------------------------------------------------
def render_diff_markdown(
    report: GateReport,
    baseline: dict[str, Any],
    results: pd.DataFrame,
    environment: dict[str, Any] | None = None,
) -> str:
    """baseline-diff.md: environments, flags, every case x metric, status changes, one-sided cases."""
    env = {**run_environment(results, environment), "matrix": (environment or {}).get("matrix")}
    verdict = "PASS" if report.passed else "FAIL"
    parts = [
        f"# Baseline comparison: {verdict}",
        f"**Verdict: {report.summary}**",
    ]
    if report.speed_not_compared:
        parts += [
            "## Speed not compared",
            f"**{report.speed_not_compared}.** Kernel times differ 8-13% between GPU kinds at the same"
            " case, so a speed difference against another GPU measures the hardware: tokens/s and"
            " kernel time are `n/a` below, neither regressions nor passes. Memory, statuses and"
            " losses are gated (allocator peaks are identical across GPU kinds under one cap)."
            + (
                f" `{REQUIRE_SPEED_FLAG}` was given: this fails the gate."
                if report.require_speed
                else f" `{REQUIRE_SPEED_FLAG}` makes this a failure."
            ),
        ]
    if report.baseline_note:
        parts.append(f"_{report.baseline_note}_")
    parts += [
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
    if report.too_noisy:
        parts += [
            "## Too noisy to gate",
            "Their tokens/s noise needs a limit over twice the minimum effect: no verdict on speed"
            " (they fail the gate unless `--allow-noisy`; then they are listed here).",
            "\n".join(f"- {c.case_id}: {c.verdict}: {c.why}" for c in report.too_noisy),
        ]
    parts += [
        "## Metrics",
        "Each row: the rule that decided, the change with its evidence (p-value or 95% intervals"
        " of the median over the repeats), the limit and the verdict.",
        _metrics_table(report.comparisons),
    ]
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
        "## Baseline cases not selected in this run (-k)",
        _bullets(report.not_selected),
    ]
    return "\n\n".join(parts) + "\n"


def _environment_table(baseline: dict[str, Any], env: dict[str, Any]) -> str:
    base_versions = baseline.get("versions", {})
    rows = [
        ["profile", baseline.get("profile", ""), env["profile"]],
        ["tier", baseline.get("matrix") or "", env.get("matrix") or ""],
        [
            "GPU",
            device_label(str(baseline.get("gpu_name") or ""), baseline.get("profile")),
            device_label(env["gpu_name"], env["profile"] or baseline.get("profile")),
        ],
    ]
    rows += [[lib, base_versions.get(lib, ""), env["versions"][lib]] for lib in VERSION_COLUMNS]
    rows = [[name, old or _UNKNOWN, new or _UNKNOWN] for name, old, new in rows]
    for row in rows:
        # A tier this run's folder does not record (an older run folder) is unknown, not changed.
        if row[1] != row[2] and not (row[0] == "tier" and row[2] == _UNKNOWN):
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
            c.rule,
            fmt(c.metric, c.baseline),
            fmt(c.metric, c.current),
            _change_text(c),
            c.limit,
            f"**{c.verdict}**" if c.fails else c.verdict,
            c.why,
        ]
        for c in comparisons
    ]
    header = ["case", "metric", "rule", "baseline", "this run", "change", "limit", "verdict", "why"]
    return _table(header, rows)


def _change_text(c: MetricComparison) -> str:
    """The change in % and the evidence its rule weighed (a p-value, the intervals, the noise)."""
    change = f"{c.change_pct:+.1f}%" if c.change_pct is not None else ""
    return "; ".join(part for part in (change, c.evidence) if part)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table ("(none)" when there are no rows)."""
    return md_table(header, rows) if rows else "(none)"


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items) if items else "(none)"
