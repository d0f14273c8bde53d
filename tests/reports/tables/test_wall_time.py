"""reports.tables.wall_time: where a run's wall time went, read from the committed H200 run of the t4
default tier (its rows, its uncapped reruns' own files) and from made-up rows with known times."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlora_core.measurement.result import Result
from reports.tables.wall_time import (
    ALONE,
    OTHER,
    SHARED,
    UNCAPPED,
    elapsed_s,
    render_wall_time,
    stage_sums,
    timed_runs,
    wall_time_line,
)

ROOT = Path(__file__).resolve().parents[3]
T4_ON_H200 = ROOT / "reports" / "reference" / "t4-default-on-h200"


def _run(start: str, end: str, wall_s: float, **phases: float) -> Result:
    stamp = "2026-01-01T00:{}+00:00"
    return Result.from_dict(
        dict(
            case_id="c",
            case_hash="h",
            profile="t4",
            case={},
            started_at=stamp.format(start),
            finished_at=stamp.format(end),
            wall_s=wall_s,
            **phases,
        )
    )


def test_elapsed_time_is_the_union_of_the_runs_intervals_not_their_sum():
    apart = [_run("00:00", "00:10", 10.0), _run("01:00", "01:05", 5.0)]
    assert elapsed_s(apart) == 15.0
    overlapping = [_run("00:00", "00:10", 10.0), _run("00:05", "00:20", 15.0), _run("00:06", "00:08", 2.0)]
    assert elapsed_s(overlapping) == 20.0  # 27 s of walls in 20 s of clock
    assert (
        elapsed_s([_run("", "", 5.0).replaced(started_at="", finished_at="")]) == 0.0
    )  # no timestamps: not counted


def test_each_runs_wall_splits_into_its_stages_and_the_rest():
    sums = stage_sums([_run("00:00", "00:10", 10.0, import_s=3.0, load_s=2.0, train_s=4.0)])
    assert (sums["import"], sums["load"], sums["measured steps"], sums[OTHER]) == (3.0, 2.0, 4.0, 1.0)
    assert sum(sums.values()) == 10.0
    assert stage_sums([_run("00:00", "00:01", 1.0, train_s=2.0)])[OTHER] == 0.0  # never negative


def test_the_committed_t4_run_shows_its_groups_and_their_overlap():
    runs = timed_runs(T4_ON_H200)
    by_how = {how: [r.result for r in runs if r.how == how] for how in (ALONE, SHARED, UNCAPPED)}
    assert {how: len(rs) for how, rs in by_how.items()} == {ALONE: 13, SHARED: 34, UNCAPPED: 8}
    shared = by_how[SHARED]
    # 34 cases side by side, 8 at a time: 132 s of clock (the reference README's figure) for 810 s of walls
    assert elapsed_s(shared) == pytest.approx(132, abs=2)
    assert sum(r.timing.wall_s or 0 for r in shared) > 5 * elapsed_s(shared)
    text = render_wall_time(T4_ON_H200)
    assert text.startswith("# Where the wall time went")
    assert "| side by side | 34 | 13" in text and "## By family" in text and "| ladder |" in text
    line = wall_time_line(T4_ON_H200)
    assert line.startswith("time: alone 13 runs") and "wall_time.md" in line


def test_a_folder_without_runs_has_no_time_line(tmp_path: Path):
    assert wall_time_line(tmp_path) == ""
    assert "runs: 0" in render_wall_time(tmp_path)
