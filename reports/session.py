"""The state of one `pytest bench` session: its options, its run folder, its results.

The root `conftest.py` parses the command line into `BenchOptions` once (bad values fail there,
before anything heavy); `bench/conftest.py` builds the matrix from them and hands each case to
`BenchSession.run`, which runs it in a child (or reuses a stored result with --resume), appends
it to `results.jsonl` and prints one progress line. At the end `finish` writes the tables.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
import shlex
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qlora_core.gpus import DetectedGpu, GpuProfile, is_emulated
from qlora_core.matrix import PlannedCase
from qlora_core.result import FINAL_STATUSES, Result, write_atomic
from qlora_core.runner import RunOptions, run_case
from qlora_core.spec import FIELD_NAMES, Case, CaseError
from reports.frame import (
    ENVIRONMENT_JSON,
    MEASUREMENTS_DIR,
    RESULTS_JSONL,
    RunData,
    load_run,
    read_results_jsonl,
)

CASES_DIR = "cases"
_FORCEABLE = tuple(f for f in FIELD_NAMES if f not in ("model", "extra"))


@dataclass(frozen=True)
class BenchOptions:
    """The `qlora-bench` command-line options, validated."""

    gpu: str
    profile: GpuProfile
    gpu_present: DetectedGpu | None
    matrix: str
    models: tuple[str, ...]
    out: Path
    resume: Path | None
    case_timeout_s: float
    baseline: Path | None
    save_baseline: Path | None
    thresholds: Any
    force: tuple[tuple[str, Any], ...]
    command_line: str

    @property
    def emulated(self) -> bool:
        return is_emulated(self.profile, self.gpu_present)


def parse_force(items: list[str]) -> tuple[tuple[str, Any], ...]:
    """`FIELD=VALUE` pairs for --force, typed like the Case field; errors name the fields."""
    forced: list[tuple[str, Any]] = []
    problems: list[str] = []
    defaults = {f.name: f.default for f in dataclasses.fields(Case)}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or name not in _FORCEABLE:
            problems.append(f"--force {item!r}: expected FIELD=VALUE with FIELD one of {list(_FORCEABLE)}")
            continue
        default = defaults[name]
        try:
            value: Any
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false", "on", "off", "1", "0"):
                    raise ValueError("expected true/false")
                value = raw.lower() in ("true", "on", "1")
            elif isinstance(default, int):
                value = int(raw)
            elif isinstance(default, float):
                value = float(raw)
            elif isinstance(default, tuple):
                value = tuple(s for s in raw.split(",") if s)
            else:
                value = raw
        except ValueError as exc:
            problems.append(f"--force {item!r}: {exc}")
            continue
        forced.append((name, value))
    if problems:
        raise CaseError(problems)
    return tuple(forced)


def command_line() -> str:
    return shlex.join(["pytest", *sys.argv[1:]]) if sys.argv else "pytest"


@dataclass
class BenchSession:
    """Run folder and results of one session. Create with `BenchSession.open`."""

    options: BenchOptions
    run_dir: Path
    planned: list[PlannedCase] = field(default_factory=list)
    results: dict[str, Result] = field(default_factory=dict)  # by case hash, this session
    stored: dict[str, Result] = field(default_factory=dict)  # from --resume
    reused: set[str] = field(default_factory=set)
    write_line: Callable[[str], None] = print
    started_at: str = ""
    earlier_commands: list[str] = field(default_factory=list)  # sessions this run resumed

    @classmethod
    def open(cls, options: BenchOptions, write_line: Callable[[str], None] = print) -> BenchSession:
        if options.resume is not None:
            run_dir = options.resume
            stored = {r.case_hash: r for r in read_results_jsonl(run_dir / RESULTS_JSONL)}
        else:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = options.out / f"{options.profile.name}-{options.matrix}-{stamp}"
            suffix = 1
            while run_dir.exists():
                suffix += 1
                run_dir = options.out / f"{options.profile.name}-{options.matrix}-{stamp}-{suffix}"
            stored = {}
        run_dir.mkdir(parents=True, exist_ok=True)
        session = cls(options, run_dir, stored=stored, write_line=write_line)
        if options.resume is not None and (run_dir / ENVIRONMENT_JSON).exists():
            earlier = json.loads((run_dir / ENVIRONMENT_JSON).read_text())
            session.earlier_commands = earlier.get("commands") or [earlier.get("command", "")]
        session.started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        session.write_environment()
        return session

    # -- running ---------------------------------------------------------------------------------
    def executed_case(self, planned: PlannedCase) -> Case:
        """The case as run: the matrix's case with any --force fields applied."""
        if not self.options.force:
            return planned.case
        return planned.case.replace(**dict(self.options.force))

    def run(self, planned: PlannedCase) -> Result:
        """Run (or, on --resume, reuse) one planned case; append and report its Result."""
        case = planned.case
        previous = self.stored.get(case.hash)
        if previous is not None and previous.status in FINAL_STATUSES and not self.options.force:
            self.reused.add(case.hash)
            self.results[case.hash] = previous
            self._progress(previous, reused=True)
            return previous
        forced = ",".join(f"{k}={v}" for k, v in self.options.force)
        run_opts = RunOptions(
            profile=self.options.profile.name,
            timeout_s=self.options.case_timeout_s,
            families=planned.tags,
            overrides=forced,
        )
        executed = self.executed_case(planned)
        result = run_case(executed, run_opts, self.run_dir / CASES_DIR / f"{case.hash}.json")
        # The matrix's identity stays the key (the gate matches on it); what ran is in `case`.
        result.case_id, result.case_hash = case.id, case.hash
        self.record(result)
        return result

    def record(self, result: Result) -> None:
        self.results[result.case_hash] = result
        with (self.run_dir / RESULTS_JSONL).open("a") as f:
            f.write(result.to_json() + "\n")
            f.flush()
        self._progress(result)

    def _progress(self, r: Result, reused: bool = False) -> None:
        done = len(self.results)
        total = len(self.planned) or done
        speed = f"{r.tokens_per_s:,.0f} tok/s" if r.tokens_per_s else "-"
        peak = r.peak_reserved_gib if r.peak_reserved_gib is not None else r.cpu_peak_rss_gib
        peak_text = f"peak {peak:.2f} GiB" if peak is not None else "peak -"
        took = "reused" if reused else f"{r.wall_s or 0:.1f} s"
        name = f"{self.options.profile.name}-{r.case_id}"
        line = f"[{done}/{total}] {name}  {r.status}  {speed}  {peak_text}  ({took})"
        if r.status != "ok" and r.reason:
            line += f"  {r.reason.splitlines()[0][:160]}"
        self.write_line(line)

    def record_measurement(self, name: str, rows: list[dict[str, Any]]) -> Path:
        """Store an in-process measurement table as measurements/<name>.csv (replacing it)."""
        path = self.run_dir / MEASUREMENTS_DIR / f"{name}.csv"
        write_atomic(path, pd.DataFrame(rows).to_csv(index=False))
        return path

    def append_measurement(self, name: str, row: dict[str, Any]) -> Path:
        """Add one row to measurements/<name>.csv (rows from earlier in this session are kept)."""
        path = self.run_dir / MEASUREMENTS_DIR / f"{name}.csv"
        rows = pd.read_csv(path).to_dict("records") if path.exists() else []
        return self.record_measurement(name, [*rows, row])

    # -- reading back ----------------------------------------------------------------------------
    def load(self) -> RunData:
        return load_run(self.run_dir)

    # -- outputs ---------------------------------------------------------------------------------
    def environment(self) -> dict[str, Any]:
        from qlora_core.child import environment_fields

        gpu = self.options.gpu_present
        return {
            "profile": self.options.profile.name,
            "matrix": self.options.matrix,
            "gpu_present": gpu.name if gpu else None,
            "gpu_total_gib": gpu.total_gib if gpu else None,
            "gpu_capability": ".".join(map(str, gpu.capability)) if gpu else None,
            "driver_version": gpu.driver_version if gpu else None,
            "emulated": self.options.emulated,
            "emulated_on": gpu.name if (gpu and self.options.emulated) else None,
            "forced": dict(self.options.force),
            "command": self.options.command_line,
            # Every session that added to this folder (--resume), oldest first.
            "commands": [*self.earlier_commands, self.options.command_line],
            "host": platform.node(),
            "platform": platform.platform(),
            "started_at": self.started_at,
            **environment_fields(),
        }

    def write_environment(self) -> None:
        write_atomic(self.run_dir / ENVIRONMENT_JSON, json.dumps(self.environment(), indent=2, default=str))

    def finish(self) -> dict[str, Path]:
        """Write results.csv/.parquet and the environment; return the paths written."""
        env = self.environment()
        env["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        env["cases"] = len(self.results)
        write_atomic(self.run_dir / ENVIRONMENT_JSON, json.dumps(env, indent=2, default=str))
        frame = load_run(self.run_dir).results
        paths = {"jsonl": self.run_dir / RESULTS_JSONL}
        csv = frame.copy()
        for col in ("step_ms", "losses", "grad_norms"):
            if col in csv:
                csv[col] = csv[col].map(json.dumps)
        write_atomic(self.run_dir / "results.csv", csv.to_csv(index=False))
        paths["csv"] = self.run_dir / "results.csv"
        try:
            frame.to_parquet(self.run_dir / "results.parquet", index=False)
            paths["parquet"] = self.run_dir / "results.parquet"
        except (ImportError, ValueError) as exc:  # never lose the run over an optional format
            self.write_line(f"results.parquet not written: {exc}")
        return paths

    def summary_lines(self) -> list[str]:
        """Cases by status, the slowest cases, the folder."""
        results = list(self.results.values())
        counts = Counter(r.status for r in results)
        lines = [
            f"qlora-bench: {len(results)} cases on profile {self.options.profile.name}"
            + (f" (emulated on {self.options.gpu_present.name})" if self.options.emulated else "")
            + ": "
            + ", ".join(f"{n} {s}" for s, n in counts.most_common()),
        ]
        if self.reused:
            lines.append(f"  {len(self.reused)} reused from {self.run_dir} (--resume)")
        slow = sorted((r for r in results if r.wall_s), key=lambda r: -(r.wall_s or 0))[:5]
        if slow:
            lines.append("  slowest: " + ", ".join(f"{r.case_id} {r.wall_s:.0f} s" for r in slow))
        lines.append(f"  run folder: {self.run_dir}")
        return lines
