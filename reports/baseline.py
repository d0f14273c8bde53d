"""Release gating: a run compared against a stored baseline fails on regressions.

A baseline is one JSON file per GPU profile: the environment it was measured in (GPU, torch,
transformers, peft, bitsandbytes, CUDA, driver), the command that made it, and per case id the
case hash, the status and the gated metrics. `compare` matches a run's cases to it by case id and
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

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from qlora_core.result import STATUSES, Status, write_atomic
from reports.frame import RunData
from reports.markdown import md_table
from reports.thresholds import Thresholds

BASELINE_SCHEMA_VERSION: int = 1
GATED_METRICS: tuple[str, ...] = (
    "tokens_per_s",
    "peak_alloc_gib",
    "peak_reserved_gib",
    "nvml_peak_gib",
    "final_loss",
)
MEMORY_METRICS: tuple[str, ...] = ("peak_alloc_gib", "peak_reserved_gib", "nvml_peak_gib")
# Stored per case beside the gated metrics: the step-time spread sizes the speed threshold.
CASE_METRICS: tuple[str, ...] = (
    "tokens_per_s",
    "step_ms_median",
    "step_ms_spread",
    "peak_alloc_gib",
    "peak_reserved_gib",
    "nvml_peak_gib",
    "final_loss",
)
CASE_FIELDS: tuple[str, ...] = ("case_hash", "status", *CASE_METRICS)
# Library name in the baseline's `versions` -> column of the results frame.
VERSION_COLUMNS: dict[str, str] = {
    "torch": "torch_version",
    "transformers": "transformers_version",
    "peft": "peft_version",
    "bitsandbytes": "bitsandbytes_version",
    "cuda": "cuda_version",
    "driver": "driver_version",
}
TOP_LEVEL_FIELDS: tuple[str, ...] = (
    "schema_version",
    "created_at",
    "profile",
    "gpu_name",
    "versions",
    "command",
    "cases",
)
BASELINE_DIFF_MD = "baseline-diff.md"

_MIB_IN_GIB = 1024
_OK = Status.OK.value
# A change exactly at its limit passes; this absorbs float rounding of that boundary.
_REL_EPS = 1e-9
_MAX_LISTED_PROBLEMS = 20
_UNKNOWN = "(unknown)"


# -- errors ---------------------------------------------------------------------------------------
class BaselineError(ValueError):
    """A baseline that cannot be used; the gate must fail (never pass) on it."""

    def __init__(self, path: Path | str | None, detail: str):
        self.path = path
        self.detail = detail
        where = f"baseline {path}" if path is not None else "baseline"
        super().__init__(f"{where}: {detail}")


class BaselineFileError(BaselineError):
    """The file is missing, empty, unreadable or not valid JSON (e.g. truncated)."""


class BaselineSchemaError(BaselineError):
    """The file's schema_version is missing or not the one this code reads."""


class BaselineContentError(BaselineError):
    """Fields are missing or malformed, in the header or in a case entry; or there are no cases."""


class BaselineProfileError(BaselineError):
    """The baseline was made for another GPU profile than the run's."""


# -- building and writing a baseline --------------------------------------------------------------
def make_baseline(results: pd.DataFrame, *, command: str, environment: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able baseline of a run: its environment, its command and every case's metrics.

    Environment fields come from the results rows (each child records them) and fall back to
    `environment` (the run's environment.json). Metrics not measured are None.
    """
    cases = cases_of(results)
    if not cases:
        raise ValueError("no results to make a baseline of: the run has no cases")
    env = run_environment(results, environment)
    if not env["profile"]:
        raise ValueError("the results name no profile; a baseline is keyed by profile")
    if "," in env["profile"]:
        raise ValueError(f"results of several profiles ({env['profile']}); make one baseline per profile")
    return {
        "schema_version": BASELINE_SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": env["profile"],
        "gpu_name": env["gpu_name"],
        "versions": env["versions"],
        "command": command,
        "cases": cases,
    }


def save_baseline(
    path: Path, results: pd.DataFrame, *, command: str, environment: dict[str, Any]
) -> dict[str, Any]:
    """Write the baseline of `results` to `path` atomically (a reader sees the old or the new file)."""
    baseline = make_baseline(results, command=command, environment=environment)
    text = json.dumps(baseline, indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_atomic(Path(path), text)
    return baseline


def cases_of(results: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Case entries keyed by case id, sorted; the last row of a repeated case id wins."""
    cases: dict[str, dict[str, Any]] = {}
    for row in results.to_dict("records"):
        entry: dict[str, Any] = {
            "case_hash": str(row["case_hash"]),
            "status": str(row["status"]),
        }
        entry.update({metric: _number_or_none(row.get(metric)) for metric in CASE_METRICS})
        cases[str(row["case_id"])] = entry
    return dict(sorted(cases.items()))


def run_environment(results: pd.DataFrame, environment: dict[str, Any] | None = None) -> dict[str, Any]:
    """profile, gpu_name and library versions of a run, as a baseline stores them.

    A field with several values in one run (e.g. a --resume after an upgrade) lists them all,
    comma-separated, so that the mix shows up as a flag instead of hiding.
    """
    environment = environment or {}
    nested = environment.get("versions") if isinstance(environment.get("versions"), dict) else {}
    versions = {
        lib: _column_value(results, column)
        or str(environment.get(column) or environment.get(lib) or nested.get(lib) or "")
        for lib, column in VERSION_COLUMNS.items()
    }
    return {
        "profile": _column_value(results, "profile") or str(environment.get("profile") or ""),
        "gpu_name": _column_value(results, "gpu_name")
        or str(environment.get("gpu_name") or environment.get("gpu_present") or ""),
        "versions": versions,
    }


def _column_value(results: pd.DataFrame, column: str) -> str:
    """The distinct non-empty values of a text column, sorted and comma-joined; "" if none."""
    if column not in results.columns:
        return ""
    values = {str(v) for v in results[column] if not _is_missing(v) and str(v) != ""}
    return ", ".join(sorted(values))


# -- loading and validating -----------------------------------------------------------------------
def load_baseline(path: Path, *, profile: str | None = None) -> dict[str, Any]:
    """Read and validate a baseline; `profile`, when given, must be the baseline's.

    Raises BaselineFileError, BaselineSchemaError, BaselineContentError or BaselineProfileError,
    each naming the file.
    """
    path = Path(path)
    data = _read_json(path)
    _check_schema(path, data)
    problems = content_problems(data)
    if problems:
        listed = problems[:_MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        tail = f"\n  - ... and {more} more" if more else ""
        raise BaselineContentError(
            path,
            "invalid content; regenerate it with `--save-baseline`:\n  - " + "\n  - ".join(listed) + tail,
        )
    if profile is not None and data["profile"] != profile:
        raise BaselineProfileError(
            path,
            f"made for profile {data['profile']!r}, but this run is profile {profile!r}; "
            f"use the baseline of profile {profile!r} or create one with --save-baseline",
        )
    return data


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or a BaselineFileError saying why there is none."""
    if not path.exists():
        raise BaselineFileError(path, "file not found; create one with `pytest bench --save-baseline PATH`")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BaselineFileError(path, f"cannot be read: {e}") from e
    if not text.strip():
        raise BaselineFileError(path, "file is empty; regenerate it with `--save-baseline`")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BaselineFileError(
            path,
            f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); the file may be "
            "truncated: regenerate it with `--save-baseline`",
        ) from e
    if not isinstance(data, dict):
        raise BaselineFileError(path, f"expected a JSON object, found {type(data).__name__}")
    return data


def _check_schema(path: Path, data: dict[str, Any]) -> None:
    """Raise BaselineSchemaError unless the file has this code's schema_version."""
    found = data.get("schema_version", "missing")
    # `type(...) is int`: True == 1 would pass an isinstance or == check.
    if type(found) is int and found == BASELINE_SCHEMA_VERSION:
        return
    profile = data.get("profile") if isinstance(data.get("profile"), str) else "PROFILE"
    raise BaselineSchemaError(
        path,
        f"schema_version is {found!r}, expected {BASELINE_SCHEMA_VERSION}; regenerate it with "
        f"`pytest bench --gpu {profile} --save-baseline {path}`",
    )


def content_problems(data: dict[str, Any]) -> list[str]:
    """Every problem with a baseline's header and case entries; [] when it is usable."""
    problems = [f"missing field {key!r}" for key in TOP_LEVEL_FIELDS if key not in data]
    for key in ("created_at", "gpu_name", "command"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"{key}={data[key]!r} must be a string")
    if "profile" in data and not (isinstance(data["profile"], str) and data["profile"]):
        problems.append(f"profile={data['profile']!r} must be a non-empty string")
    if "versions" in data:
        problems += _versions_problems(data["versions"])
    if "cases" in data:
        cases = data["cases"]
        if not isinstance(cases, dict):
            problems.append(f"cases must be an object keyed by case id, found {type(cases).__name__}")
        elif not cases:
            problems.append("no cases: a baseline needs at least one case")
        else:
            for case_id, entry in cases.items():
                problems += [f"case {case_id!r}: {p}" for p in _case_problems(entry)]
    return problems


def _versions_problems(versions: object) -> list[str]:
    if not isinstance(versions, dict):
        return [f"versions must be an object, found {type(versions).__name__}"]
    problems = [f"versions: missing field {lib!r}" for lib in VERSION_COLUMNS if lib not in versions]
    problems += [
        f"versions: {lib}={value!r} must be a string"
        for lib, value in versions.items()
        if not isinstance(value, str)
    ]
    return problems


def _case_problems(entry: object) -> list[str]:
    """Problems with one case entry of a baseline."""
    if not isinstance(entry, dict):
        return [f"expected an object, found {type(entry).__name__}"]
    problems = [f"missing field {key!r}" for key in CASE_FIELDS if key not in entry]
    if "case_hash" in entry and not (isinstance(entry["case_hash"], str) and entry["case_hash"]):
        problems.append(f"case_hash={entry['case_hash']!r} must be a non-empty string")
    if "status" in entry and entry["status"] not in STATUSES:
        problems.append(f"status={entry['status']!r} is not one of {list(STATUSES)}")
    for metric in CASE_METRICS:
        value = entry.get(metric)
        if value is not None and not (_is_number(value) and math.isfinite(value)):
            problems.append(f"{metric}={value!r} must be a finite number or null")
    return problems


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
def run_profile(run: RunData) -> str | None:
    """The run's profile, from its results or else its environment; None when neither says."""
    profile = run_environment(run.results, run.environment)["profile"]
    return profile or None


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


def save_run_baseline(path: Path, run: RunData, *, command: str) -> dict[str, Any]:
    """Save the run's baseline and read it back through the validating loader."""
    save_baseline(Path(path), run.results, command=command, environment=run.environment)
    return load_baseline(Path(path), profile=run_profile(run))


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
def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_missing(value: object) -> bool:
    """None, NaN, NA or NaT (what the frame holds for a field that was not measured)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-like values: not a missing scalar
        return False


def _number_or_none(value: object) -> float | None:
    """A finite float, or None for a value not measured (None/NaN) or not finite."""
    if _is_missing(value):
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None
