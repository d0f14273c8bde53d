"""wall_time.md: where a run's wall time went, by how its cases ran, by family and by stage.

Every run of a case records its wall time (`Result.timing.wall_s`, the parent's: spawn to exit) and its
phases (`start_s`, `import_s`, `create_s`, `load_s`, `prepare_s`, `warmup_s`, `train_s`,
`profile_s`, `eval_s`; `qlora_core.process.child`); the rest of a run's wall ("other") is the model's
resolution, the data, the CUDA and NVML set-up, a wait for a spare and the Result's writing. Runs
that are not rows are counted too: an OOM's uncapped rerun (`cases/<hash>-uncapped.json`) and a
lane run set aside for a rerun alone (`cases/<hash>-lane.json`). Runs side by side overlap, so a
group's elapsed time (the union of its runs' start-to-end intervals, to the second) is shown
beside the sum of their walls. Read from the folder only, like every report.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qlora_core.cases.matrix import family_name
from qlora_core.measurement.result import Result
from qlora_core.process.lanes import LANE_SUFFIX
from qlora_core.process.oom_need import UNCAPPED_SUFFIX
from reports.markdown import md_table
from reports.run.folder import CASES_DIR, RESULTS_JSONL, read_case_file, read_environment, read_results_jsonl

WALL_TIME_MD = "wall_time.md"
STAGES: tuple[tuple[str, str], ...] = (
    ("start_s", "start"),
    ("import_s", "import"),
    ("create_s", "checkpoint creation"),
    ("load_s", "load"),
    ("prepare_s", "prepare + LoRA"),
    ("warmup_s", "warm-up"),
    ("train_s", "measured steps"),
    ("profile_s", "profiler"),
    ("eval_s", "perplexity"),
)
OTHER = "other"

ALONE, SHARED, AFTER_LANE = "alone", "side by side", "alone after a lane run"
SET_ASIDE, UNCAPPED = "lane runs set aside", "uncapped reruns (memory only)"
HOW_ORDER = (ALONE, SHARED, SET_ASIDE, AFTER_LANE, UNCAPPED)


@dataclass(frozen=True)
class TimedRun:
    """One run of a case and how it ran (`HOW_ORDER`)."""

    result: Result
    how: str

    @property
    def family(self) -> str:
        """The first family the case serves (a case serving several is counted once, there)."""
        first = self.result.families.split(",", 1)[0]
        return family_name(first) if first else "-"


def how_it_ran(result: Result) -> str:
    """ALONE, SHARED or AFTER_LANE for a row of results.jsonl."""
    if result.hardware.lane_rerun_reason:
        return AFTER_LANE
    return SHARED if result.hardware.side_by_side else ALONE


def timed_runs(run_dir: Path) -> list[TimedRun]:
    """Every run the folder records: its rows (each repeat) and its reruns' and set-aside lane
    runs' own Result files."""
    runs = [TimedRun(r, how_it_ran(r)) for r in read_results_jsonl(run_dir / RESULTS_JSONL)]
    for suffix, how in ((UNCAPPED_SUFFIX, UNCAPPED), (LANE_SUFFIX, SET_ASIDE)):
        for path in sorted((run_dir / CASES_DIR).glob(f"*{suffix}.json")):
            runs.append(TimedRun(read_case_file(path), how))
    return runs


def _when(stamp: str) -> float | None:
    try:
        return _dt.datetime.fromisoformat(stamp).timestamp()
    except (TypeError, ValueError):
        return None


def elapsed_s(results: Iterable[Result]) -> float:
    """Wall-clock seconds while any of `results` ran: the union of their start-to-end intervals."""
    spans = []
    for r in results:
        start, end = _when(r.started_at), _when(r.finished_at)
        if start is not None and end is not None:
            spans.append((start, max(end, start + (r.timing.wall_s or 0.0))))
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def stage_sums(results: Iterable[Result]) -> dict[str, float]:
    """Seconds per stage summed over `results` (`STAGES`), and `OTHER`: their walls' rest."""
    sums = {label: 0.0 for _, label in STAGES} | {OTHER: 0.0}
    for r in results:
        staged = 0.0
        for name, label in STAGES:
            value = r.get_field(name) or 0.0
            sums[label] += value
            staged += value
        sums[OTHER] += max(0.0, (r.timing.wall_s or 0.0) - staged)
    return sums


def _seconds(value: float) -> str:
    return f"{value:.0f}"


def _rows(groups: dict[str, list[Result]], with_elapsed: bool) -> list[list[str]]:
    rows = []
    for name, results in groups.items():
        cells = [name, str(len(results))]
        if with_elapsed:
            cells.append(_seconds(elapsed_s(results)))
        cells.append(_seconds(sum(r.timing.wall_s or 0.0 for r in results)))
        cells += [_seconds(v) for v in stage_sums(results).values()]
        rows.append(cells)
    return rows


def _by(runs: Sequence[TimedRun], key: str) -> dict[str, list[Result]]:
    groups: dict[str, list[Result]] = {}
    for run in runs:
        groups.setdefault(getattr(run, key), []).append(run.result)
    if key == "how":
        return {how: groups[how] for how in HOW_ORDER if how in groups}
    return dict(sorted(groups.items(), key=lambda item: -sum(r.timing.wall_s or 0.0 for r in item[1])))


def render_wall_time(run_dir: Path) -> str:
    """wall_time.md for the run folder `run_dir`."""
    runs = timed_runs(Path(run_dir))
    stages = [label for _, label in STAGES] + [OTHER]
    lines = ["# Where the wall time went", ""]
    environment = read_environment(Path(run_dir))
    start, end = _when(environment.get("started_at", "")), _when(environment.get("finished_at", ""))
    results = [run.result for run in runs]
    running_s = elapsed_s(results)
    if start is not None and end is not None:
        lines.append(f"- the latest session: {end - start:.0f} s from its start to its results written")
        outside_s = end - start - running_s
        if outside_s >= 0:  # (a resumed folder's runs began in earlier sessions)
            lines.append(
                f"- with no run going (collection, the session's start, in-process measurements):"
                f" {outside_s:.0f} s"
            )
    lines += [
        f"- runs: {len(runs)}; with a run going: {running_s:.0f} s",
        f"- warm spares' imports before their hand-over (not in any wall):"
        f" {sum(r.timing.spare_import_s or 0.0 for r in results):.0f} s",
        "",
        "Seconds. Elapsed: wall-clock time while any run of the group ran (runs side by side"
        " overlap, so their walls add up to more). The stage columns sum each run's own phases;"
        " other: the rest of its wall (model resolution, data, CUDA and NVML set-up, a wait for a"
        " spare, writing the Result).",
        "",
        "## By how the runs ran",
        "",
        md_table(["How", "Runs", "Elapsed", "Sum of wall", *stages], _rows(_by(runs, "how"), True)),
        "",
        "## By family (each case under the first family it serves)",
        "",
        md_table(["Family", "Runs", "Sum of wall", *stages], _rows(_by(runs, "family"), False)),
    ]
    return "\n".join(lines) + "\n"


def wall_time_line(run_dir: Path, stages_shown: int = 4) -> str:
    """One console line: each way of running's runs and elapsed time, and the stages that took
    the most, summed over runs; "" when the folder has no run."""
    runs = timed_runs(Path(run_dir))
    if not runs:
        return ""
    groups = _by(runs, "how")
    how = ", ".join(f"{name} {len(rs)} runs {elapsed_s(rs):.0f} s" for name, rs in groups.items())
    sums = stage_sums(run.result for run in runs)
    top = sorted(sums.items(), key=lambda item: -item[1])[:stages_shown]
    stages = ", ".join(f"{label} {seconds:.0f} s" for label, seconds in top)
    return f"time: {how}; summed over runs: {stages} ({WALL_TIME_MD})"
