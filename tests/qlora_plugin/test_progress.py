"""qlora_plugin.progress: the heartbeat of long cases (read from the child's Result file) and the
time left from each run's expected cost."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlora_core.cases.case import Case
from qlora_core.measurement.result import Result, Status, write_atomic
from qlora_core.process.request import RunOptions
from qlora_core.process.runner import run_case
from qlora_plugin.progress import (
    Heartbeat,
    Watched,
    heartbeat_line,
    read_stage_and_step,
    recorded_walls,
    steps_planned,
    time_left_s,
)
from qlora_plugin.shard import run_cost_s
from reports.run.folder import read_results_jsonl

CASE = Case("tiny", seq_len=64)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def write_in_stage(path: Path, stage: str, steps: int = 0) -> None:
    """A Result file as the child leaves it while `stage` runs (`checkpointer.Checkpointer`)."""
    result = Result.for_case(CASE, "cpu")
    result.status, result.reason = Status.CRASHED.value, f"died during {stage}"
    result.training.losses = [2.0] * steps
    write_atomic(path, result.to_json())


def test_the_stage_and_step_come_from_the_childs_result_file(tmp_path):
    path = tmp_path / "case.json"
    assert read_stage_and_step(path) == ("starting", None)  # the child has not written yet
    write_in_stage(path, "load")
    assert read_stage_and_step(path) == ("load", 0)
    write_in_stage(path, "training", steps=3)
    steps = CASE.warmup_steps + CASE.measured_steps
    watched = Watched("cpu-tiny", path, steps_planned(CASE, adaptive=False))
    assert heartbeat_line(watched, 62) == f"  ... cpu-tiny: training, step 3 of {steps}, running 1:02"
    adaptive = Watched("t4-tiny", path, steps_planned(CASE, adaptive=True))
    assert f"step 3 of at least {steps}," in heartbeat_line(adaptive, 62)
    assert "step 3, running" in heartbeat_line(Watched("t4-tiny (uncapped rerun)", path), 62)


def test_a_heartbeat_at_most_every_interval_for_cases_running_that_long(tmp_path):
    lines: list[str] = []
    clock = Clock()
    long, short = tmp_path / "long.json", tmp_path / "short.json"
    write_in_stage(long, "perplexity before training")
    names = {long: "cpu-long", short: "cpu-short"}
    beat = Heartbeat(lines.append, lambda p: Watched(names[p], p), interval_s=30, clock=clock)
    beat.tick([long])
    clock.now = 29
    beat.tick([long])
    assert lines == []  # nothing before a case has run the interval
    clock.now = 31
    beat.tick([long, short])  # `short` starts now
    assert lines == ["  ... cpu-long: perplexity before training, running 0:31"]
    clock.now = 50
    beat.tick([long, short])
    assert len(lines) == 1  # at most one beat per interval
    clock.now = 62
    beat.tick([long, short])
    assert lines[1:] == [
        "  ... cpu-long: perplexity before training, running 1:02",
        "  ... cpu-short: starting, running 0:31",
    ]
    clock.now = 200
    beat.tick([short])  # `long` ended: no line for it, and it is forgotten
    assert lines[-1] == "  ... cpu-short: starting, running 2:49" and len(lines) == 4


@pytest.mark.slow
def test_the_heartbeat_reads_a_real_child_while_the_parent_waits(tmp_path):
    """Through runner.run_case's on_wait, with a 1 s interval: the stages the child wrote."""
    lines: list[str] = []
    path = tmp_path / "case.json"
    beat = Heartbeat(lines.append, lambda p: Watched("cpu-tiny", p), interval_s=1.0)
    result = run_case(CASE, RunOptions(profile="cpu", timeout_s=600), path, on_wait=beat.tick)
    assert result.status == "ok", result.reason
    assert lines and all(line.startswith("  ... cpu-tiny: ") for line in lines)
    stages = {line.split(": ")[1].split(",")[0] for line in lines}
    assert stages & {"start-up", "model resolution", "load", "prepare", "LoRA", "data", "training"}, lines


def test_time_left_weighs_each_run_by_its_expected_cost():
    """Cheap cases first, expensive last (the CPU tier's order): a mean per run would promise
    far too little; the expected costs give the true time left from the first runs on."""
    cheap, dear = [20.0] * 10, [150.0] * 10
    elapsed = 5 * 20.0  # five cheap runs made, each as expected
    true_left = 5 * 20.0 + 10 * 150.0
    assert time_left_s(elapsed, cheap[:5], cheap[5:] + dear) == pytest.approx(true_left)
    naive = elapsed / 5 * 15
    assert naive == pytest.approx(300.0) and naive < true_left / 5  # what the running mean said
    # A machine twice as slow as expected: the same costs, scaled by what the runs took.
    assert time_left_s(2 * elapsed, cheap[:5], cheap[5:] + dear) == pytest.approx(2 * true_left)
    assert time_left_s(elapsed, [], cheap) is None  # nothing made yet: no scale


CPU_TIER_RUN = Path(__file__).parents[2] / "reports" / "reference" / "cpu-default-avx2"


def test_the_cpu_tiers_time_left_stays_near_what_the_measured_run_took():
    """Replays the committed cpu tier (34 cases on a 2-core AVX2-only machine, tiny cases first,
    SmolLM2 on text in the middle) with no recorded wall times, as a first run sees it: after
    each run the time left the estimate gives is within 0.65x-1.4x of what the rest took. The
    earlier CPU rate said 3.9x after the second run and 0.65x after the text cases."""
    rows = read_results_jsonl(CPU_TIER_RUN / "results.jsonl")
    assert len(rows) == 34 and all(r.timing.wall_s for r in rows)
    expected = [run_cost_s(Case.from_dict(r.case), {}, "cpu") for r in rows]
    walls = [float(r.timing.wall_s or 0.0) for r in rows]
    ratios = []
    for made in range(2, len(rows) - 4):  # the last few: seconds left, any ratio is noise
        left = time_left_s(sum(walls[:made]), expected[:made], expected[made:])
        assert left is not None
        ratios.append(left / sum(walls[made:]))
    assert 0.65 < min(ratios) and max(ratios) < 1.4, [round(r, 2) for r in ratios]


def test_recorded_walls_prefer_this_folders_runs_and_skip_an_unreadable_source(tmp_path):
    row = Result.for_case(CASE, "cpu")
    row.timing.wall_s = 12.0
    other = Result.for_case(CASE, "cpu")
    other.timing.wall_s = 18.0
    bad = tmp_path / "broken.json"
    bad.write_bytes(b"\xd9\x00not json")
    assert recorded_walls([None, bad], [row, other]) == {CASE.id: 15.0}
    assert recorded_walls([], []) == {}
