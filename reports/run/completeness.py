"""Whether a run folder holds every run its matrix planned, and the command that completes it.

`pytest bench` records in environment.json, when it opens a run folder, the runs the folder is to
hold (`planned_runs`: case id -> repeats, in matrix order; a shard's folder: its shard's cases).
Every reader compares that plan with results.jsonl, so a run cut short (Ctrl-C, a timeout, a
kill, `-k`) says so wherever it is read: claims.md and tables.md start with the `Incompleteness`
line, the console summary prints it, environment.json keeps it under `incomplete`.

A planned run counts as present once results.jsonl holds a row for it, whatever its status (a
failed run shows in the tables as failed; `--resume` reruns it too). Folders from before the plan
was recorded, and merged folders (whose missing cases `merge_notes` names), are not judged.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reports.run.folder import RESULTS_JSONL, read_results_jsonl
from reports.run.frame import RunData

PLANNED_RUNS = "planned_runs"
"""environment.json key: {case id: planned repeats} of the runs the folder is to hold."""
INCOMPLETE = "incomplete"
"""environment.json key: what was missing when the last session ended (`Incompleteness.as_json`);
null when nothing was."""
NAMED = 4  # case ids named in the line; the rest are counted (environment.json lists them all)


def completing_command(run_dir: Path | str) -> str:
    """The command that runs what a run folder lacks: its settings come from the folder."""
    return shlex.join(["pytest", "bench", "--resume", str(run_dir)])


@dataclass(frozen=True)
class Incompleteness:
    """What a run folder lacks of its plan."""

    planned_cases: int
    planned_runs: int
    missing_cases: tuple[str, ...]
    """Planned cases without a single stored run, in matrix order."""
    short_cases: tuple[tuple[str, int, int], ...]
    """(case id, runs stored, runs planned) of cases stored with fewer repeats than planned."""
    missing_runs: int
    """Planned runs without a stored row (every repeat of a missing case, the lacking repeats)."""
    command: str

    def line(self) -> str:
        """`incomplete: 2 of 6 cases missing (a, b); complete it with: pytest bench --resume X`."""
        parts = []
        if self.missing_cases:
            named = _named(self.missing_cases)
            parts.append(f"{len(self.missing_cases)} of {self.planned_cases} cases missing ({named})")
        if self.short_cases:
            shown = [f"{case_id} {stored} of {planned} runs" for case_id, stored, planned in self.short_cases]
            parts.append(f"{len(self.short_cases)} short of their repeats ({_named(shown)})")
        return f"incomplete: {', '.join(parts)}; complete it with: {self.command}"

    def as_json(self) -> dict[str, Any]:
        return {
            "summary": self.line(),
            "planned_cases": self.planned_cases,
            "planned_runs": self.planned_runs,
            "missing_runs": self.missing_runs,
            "missing_case_ids": list(self.missing_cases),
            "short_of_repeats": {case_id: [stored, planned] for case_id, stored, planned in self.short_cases},
            "complete_with": self.command,
        }


def incompleteness(
    environment: Mapping[str, Any], stored_runs: Iterable[tuple[str, int]], run_dir: Path | str
) -> Incompleteness | None:
    """What the folder lacks of `environment`'s plan, given the (case id, 0-based repeat) of every
    stored run; None when nothing is missing or the folder is not judged (no plan, a merge)."""
    planned = environment.get(PLANNED_RUNS)
    if not isinstance(planned, Mapping) or not planned or environment.get("merge"):
        return None
    repeats: dict[str, set[int]] = {}
    for case_id, repeat in stored_runs:
        repeats.setdefault(case_id, set()).add(int(repeat))
    missing: list[str] = []
    short: list[tuple[str, int, int]] = []
    missing_runs = 0
    for case_id, count in planned.items():
        have = sum(1 for r in repeats.get(case_id, ()) if r < int(count))
        missing_runs += int(count) - have
        if have == 0:
            missing.append(case_id)
        elif have < int(count):
            short.append((case_id, have, int(count)))
    if not missing and not short:
        return None
    return Incompleteness(
        planned_cases=len(planned),
        planned_runs=sum(int(n) for n in planned.values()),
        missing_cases=tuple(missing),
        short_cases=tuple(short),
        missing_runs=missing_runs,
        command=completing_command(run_dir),
    )


def _named(items: tuple[str, ...] | list[str]) -> str:
    shown = ", ".join(items[:NAMED])
    return shown + (f" +{len(items) - NAMED} more" if len(items) > NAMED else "")


def run_incompleteness(run: RunData) -> Incompleteness | None:
    """`incompleteness` of a run folder read back (`load_run`): its plan against its stored runs."""
    stored = run.repeats if run.repeats is not None else run.results
    pairs = zip(stored["case_id"], stored["repeat"]) if not stored.empty else ()
    return incompleteness(run.environment, pairs, run.run_dir or "RUN_DIR")


def folder_incompleteness(run_dir: Path, environment: Mapping[str, Any]) -> Incompleteness | None:
    """`incompleteness` of `run_dir` against `environment`'s plan, its runs read from results.jsonl."""
    stored = read_results_jsonl(Path(run_dir) / RESULTS_JSONL)
    return incompleteness(environment, ((r.case_id, r.repeat) for r in stored), run_dir)
