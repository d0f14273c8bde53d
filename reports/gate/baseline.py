"""Baselines: one JSON file per GPU profile that a later run is gated against (`reports.gate.verdict`).

Writing one, reading one back, and refusing every unreadable kind with its own `BaselineError`
(never a pass) live here; the choice of one from a folder is `reports.gate.baseline_choice`.
See docs/gate.md#what-a-baseline-holds.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import pandas as pd

from qlora_core.measurement.result import STATUSES, write_atomic
from reports.run.frame import RunData
from reports.run.rows import device_used_gib
from reports.run.stats import rel_iqr

BASELINE_SCHEMA_VERSION: int = 3
READABLE_SCHEMA_VERSIONS: tuple[int, ...] = (2, 3)
"""The versions `load_baseline` reads: 2 is migrated to 3 in memory (`_migrate_v2`)."""
DEFAULT_MATRIX = "default"
"""`pytest bench`'s tier when no --matrix is given (the option's default)."""
NVML_USED = "nvml_used_gib"
"""The device memory the case's process used at its peak (`reports.run.rows.device_used_gib`: NVML's
peak minus the device's reading before the process; side by side, its own line): gated instead of
the raw `nvml_peak_gib`, which also holds whatever the device held before (another GPU process,
0-0.6 GiB on the H200) and so moves between runners with nothing changed in the case."""
GATED_METRICS: tuple[str, ...] = (
    "tokens_per_s",
    "kernel_ms_per_step",
    "peak_alloc_gib",
    "peak_reserved_gib",
    NVML_USED,
    "final_loss",
)
MEMORY_METRICS: tuple[str, ...] = ("peak_alloc_gib", "peak_reserved_gib", NVML_USED)
SPEED_METRICS: tuple[str, ...] = ("tokens_per_s", "kernel_ms_per_step")
"""The gated metrics that measure the hardware as much as the code: compared only between runs
on one GPU kind (`reports.gate.baseline_choice.speed_not_compared`)."""
# Stored per case beside the gated metrics: the noise and significance of the speed rules.
CASE_METRICS: tuple[str, ...] = (
    "tokens_per_s",
    "tokens_per_s_cv",
    "tokens_per_s_ci_low",
    "tokens_per_s_ci_high",
    "kernel_ms_per_step",
    "kernel_ms_per_step_cv",
    "kernel_ms_per_step_ci_low",
    "kernel_ms_per_step_ci_high",
    "gpu_busy",
    "step_ms_median",
    "step_ms_spread",
    "step_ms_rel_iqr",
    "peak_alloc_gib",
    "peak_reserved_gib",
    "nvml_peak_gib",
    "final_loss",
)
CASE_LISTS: tuple[str, ...] = ("tokens_per_s_repeats", "kernel_ms_repeats")  # per ok repeat, or null
CASE_FIELDS: tuple[str, ...] = ("case_hash", "status", "repeats", "host_bound", *CASE_METRICS, *CASE_LISTS)
# Optional per case (files written before it lack it): one run's wall seconds, which `--shard
# --shard-costs BASELINE` balances shards by. Not gated: wall time is the host's and the suite's.
CASE_WALL_S = "wall_s"
# Optional per case too: how many cases shared the device with it (`Result.hardware.side_by_side`; null:
# alone). Such a row has no speed, by design; the gate does not compare what it did not measure.
CASE_SIDE_BY_SIDE = "side_by_side"
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
    "matrix",
    "gpu_name",
    "versions",
    "command",
    "cases",
)
BASELINE_DIFF_MD = "baseline-diff.md"

# A change exactly at its limit passes; this absorbs float rounding of that boundary.
_MAX_LISTED_PROBLEMS = 20


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


class BaselineTierError(BaselineError):
    """The baseline was made of another matrix tier (`--matrix`) than the run's."""


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
    matrix = environment.get("matrix")
    return {
        "schema_version": BASELINE_SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": env["profile"],
        "matrix": matrix if isinstance(matrix, str) and matrix else tier_of_command(command),
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
    """Case entries keyed by case id, sorted, from a folded results frame (one row per case);
    the last row of a repeated case id wins."""
    cases: dict[str, dict[str, Any]] = {}
    for row in results.to_dict("records"):
        repeats = row.get("repeats")
        host_bound = row.get("host_bound")
        entry: dict[str, Any] = {
            "case_hash": str(row["case_hash"]),
            "status": str(row["status"]),
            "repeats": None if is_missing(repeats) else int(repeats),
            "host_bound": None if is_missing(host_bound) else bool(host_bound),
        }
        entry.update({metric: number_or_none(row.get(metric)) for metric in CASE_METRICS})
        entry.update({name: _numbers_or_none(row.get(name)) for name in CASE_LISTS})
        entry[CASE_WALL_S] = number_or_none(row.get(CASE_WALL_S))
        load_only = row.get("load_only")
        if not is_missing(load_only) and bool(load_only):
            entry.update(load_only_memory(row))
        else:
            entry[NVML_USED] = number_or_none(device_used_gib(pd.Series(row)))
        shared = row.get(CASE_SIDE_BY_SIDE)
        entry[CASE_SIDE_BY_SIDE] = None if is_missing(shared) else int(shared)
        if entry["step_ms_rel_iqr"] is None:
            # Rows measured before the child recorded it: the same statistic, from the step times.
            entry["step_ms_rel_iqr"] = rel_iqr([float(v) for v in row.get("step_ms") or []])
        cases[str(row["case_id"])] = entry
    return dict(sorted(cases.items()))


LOAD_ONLY_PEAKS: dict[str, str] = {
    "peak_alloc_gib": "load_peak_alloc_gib",
    "peak_reserved_gib": "load_peak_reserved_gib",
}
"""A load-only case (`Case.load_only`: the weights family, the 7B table's memory by precision)
trains nothing, so its process's peaks are its load's, recorded under the load's names: the
gate judges them as that case's memory, as it judges a trained case's peaks."""


def load_only_memory(row: dict[str, Any]) -> dict[str, float | None]:
    """The gated memory metrics of a load-only row: its load's allocator peaks and the device
    memory its process used after the load (`load_nvml_gib` above the reading before it)."""
    memory = {metric: number_or_none(row.get(field)) for metric, field in LOAD_ONLY_PEAKS.items()}
    memory[NVML_USED] = number_or_none(device_used_gib(pd.Series(row), "load_nvml_gib"))
    return memory


def run_environment(results: pd.DataFrame, environment: dict[str, Any] | None = None) -> dict[str, Any]:
    """profile, gpu_name and library versions of a run, as a baseline stores them.

    A field with several values in one run (e.g. a --resume after an upgrade) lists them all,
    comma-separated, so that the mix shows up as a flag instead of hiding.
    """
    environment = environment or {}
    versions = environment.get("versions")
    nested: dict[str, Any] = versions if isinstance(versions, dict) else {}
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
    values = {str(v) for v in results[column] if not is_missing(v) and str(v) != ""}
    return ", ".join(sorted(values))


# -- loading and validating -----------------------------------------------------------------------
def load_baseline(path: Path, *, profile: str | None = None, matrix: str | None = None) -> dict[str, Any]:
    """Read and validate a baseline (a version-2 file migrated to the current schema); `profile`
    and `matrix` (the tier), when given, must be the baseline's. A baseline whose tier is not
    recorded (null) is accepted for any tier.

    Raises BaselineFileError, BaselineSchemaError, BaselineContentError, BaselineProfileError or
    BaselineTierError, each naming the file.
    """
    path = Path(path)
    data = _read_json(path)
    _check_schema(path, data)
    if data["schema_version"] == 2:
        data = _migrate_v2(data)
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
    if matrix is not None and data["matrix"] is not None and data["matrix"] != matrix:
        raise BaselineTierError(
            path,
            f"made of matrix tier {data['matrix']!r}, but this run is tier {matrix!r} (--matrix); "
            f"use a baseline of tier {matrix!r} or create one with --save-baseline",
        )
    return data


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or a BaselineFileError saying why there is none (in words, never
    a library's exception text: a reader sees what is wrong with the file and what to do)."""
    if not path.exists():
        raise BaselineFileError(path, "file not found; create one with `pytest bench --save-baseline PATH`")
    if not path.is_file():
        raise BaselineFileError(path, "not a file: a baseline is a JSON file written by --save-baseline")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BaselineFileError(path, f"cannot be read ({e.strerror or type(e).__name__})") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BaselineFileError(
            path,
            f"not a text file (byte {e.start} is not UTF-8): not a baseline JSON; point --baseline"
            " at a file written by --save-baseline",
        ) from e
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
    """Raise BaselineSchemaError unless the file has a schema_version this code reads."""
    found = data.get("schema_version", "missing")
    # `type(...) is int`: True == 1 would pass an isinstance or == check.
    if type(found) is int and found in READABLE_SCHEMA_VERSIONS:
        return
    profile = data.get("profile") if isinstance(data.get("profile"), str) else "PROFILE"
    regenerate = f"regenerate it with `pytest bench --gpu {profile} --repeat 3 --save-baseline {path}`"
    readable = f"{READABLE_SCHEMA_VERSIONS[0]} to {READABLE_SCHEMA_VERSIONS[-1]}"
    if not data:
        detail = f"holds an empty JSON object ({{}}), not a qlora-bench baseline; {regenerate}"
    elif found == "missing":
        detail = f"schema_version is 'missing': not a qlora-bench baseline; {regenerate}"
    elif type(found) is int and found < READABLE_SCHEMA_VERSIONS[0]:
        detail = (
            f"schema_version is {found}, expected {readable} (an older baseline: it lacks the"
            f" per-repeat tokens/s, kernel time and noise the speed rules need); {regenerate}"
        )
    elif type(found) is int:
        detail = (
            f"schema_version is {found}, newer than this qlora-bench reads ({readable}): a newer"
            f" qlora-bench wrote it; update qlora-bench, or {regenerate}"
        )
    else:
        detail = f"schema_version is {found!r}, expected an integer from {readable}; {regenerate}"
    raise BaselineSchemaError(path, detail)


def _migrate_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A version-2 baseline as version 3: its tier read from the command that made it."""
    command = data.get("command")
    tier = tier_of_command(command) if isinstance(command, str) else None
    return {**data, "schema_version": BASELINE_SCHEMA_VERSION, "matrix": tier, "migrated_from": 2}


def tier_of_command(command: str) -> str | None:
    """The matrix tier a `pytest bench` command ran: its --matrix, or the option's default when
    it names none; None for a command that is not pytest's or does not parse."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if word == "--matrix" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--matrix="):
            return word.partition("=")[2]
    return DEFAULT_MATRIX if words[:1] == ["pytest"] else None


def content_problems(data: dict[str, Any]) -> list[str]:
    """Every problem with a baseline's header and case entries; [] when it is usable."""
    problems = [f"missing field {key!r}" for key in TOP_LEVEL_FIELDS if key not in data]
    for key in ("created_at", "gpu_name", "command"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"{key}={data[key]!r} must be a string")
    if "profile" in data and not (isinstance(data["profile"], str) and data["profile"]):
        problems.append(f"profile={data['profile']!r} must be a non-empty string")
    if data.get("matrix") is not None and not (isinstance(data["matrix"], str) and data["matrix"]):
        problems.append(f"matrix={data['matrix']!r} must be a non-empty string or null")
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
        if value is not None and not _is_finite(value):
            problems.append(f"{metric}={value!r} must be a finite number or null")
    wall_s = entry.get(CASE_WALL_S)
    if wall_s is not None and not (_is_finite(wall_s) and wall_s >= 0):
        problems.append(f"{CASE_WALL_S}={wall_s!r} must be a finite number >= 0 or null")
    used = entry.get(NVML_USED)
    if used is not None and not _is_finite(used):
        problems.append(f"{NVML_USED}={used!r} must be a finite number or null")
    shared = entry.get(CASE_SIDE_BY_SIDE)
    if shared is not None and not (type(shared) is int and shared >= 2):
        problems.append(f"{CASE_SIDE_BY_SIDE}={shared!r} must be an integer >= 2 or null")
    repeats = entry.get("repeats")
    if repeats is not None and not (type(repeats) is int and repeats >= 0):
        problems.append(f"repeats={repeats!r} must be an integer >= 0 or null")
    if entry.get("host_bound") not in (None, True, False):
        problems.append(f"host_bound={entry['host_bound']!r} must be true, false or null")
    for name in CASE_LISTS:
        values = entry.get(name)
        if values is not None and not (isinstance(values, list) and values and all(map(_is_finite, values))):
            problems.append(f"{name}={values!r} must be a non-empty list of finite numbers or null")
    return problems


def _is_finite(value: object) -> bool:
    return is_number(value) and math.isfinite(value)  # type: ignore[arg-type]


def _numbers_or_none(values: object) -> list[float] | None:
    """A per-repeat list as floats; None when there is none (a single repeat)."""
    if values is None or is_missing(values):
        return None
    return [float(v) for v in cast(Iterable[Any], values)]


def save_run_baseline(path: Path, run: RunData, *, command: str) -> dict[str, Any]:
    """Save the run's baseline and read it back through the validating loader."""
    save_baseline(Path(path), run.results, command=command, environment=run.environment)
    return load_baseline(Path(path), profile=run_profile(run), matrix=run_matrix(run))


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_missing(value: object) -> bool:
    """None, NaN, NA or NaT (what the frame holds for a field that was not measured)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-like values: not a missing scalar
        return False


def number_or_none(value: object) -> float | None:
    """A finite float, or None for a value not measured (None/NaN) or not finite."""
    if is_missing(value):
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def run_matrix(run: RunData) -> str | None:
    """The run's matrix tier, from its environment (or the command there); None when unknown."""
    matrix = run.environment.get("matrix")
    if isinstance(matrix, str) and matrix:
        return matrix
    command = run.environment.get("command")
    return tier_of_command(command) if isinstance(command, str) and command else None


def run_profile(run: RunData) -> str | None:
    """The run's profile, from its results or else its environment; None when neither says."""
    profile = run_environment(run.results, run.environment)["profile"]
    return profile or None
