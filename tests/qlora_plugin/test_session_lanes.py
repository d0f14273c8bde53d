"""Lanes of a real card through BenchSession: the session an h100 profile on a (simulated) 80 GB
H100 runs. Its children run on this machine's CPU (no GPU: no allocator cap), so the OOM a lane's
cap would cause is an injected fault in the lane run only; the case's rerun alone runs clean."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from qlora_core.cases.case import Case
from qlora_core.cases.gpus import DetectedGpu, get_profile
from qlora_core.cases.matrix import PlannedCase
from qlora_core.measurement.result import Result, result_file_name
from qlora_core.process.lanes import Lane, lane_share_gib
from qlora_core.process.side_by_side import Job
from qlora_plugin.session import BenchSession, CaseRun
from reports.run.folder import CASES_DIR, RESULTS_JSONL, case_file_problem, read_results_jsonl
from reports.tables.wall_time import AFTER_LANE, SET_ASIDE, SHARED, timed_runs
from tests.qlora_plugin.test_session import _alone_row, make_options

H100 = DetectedGpu("NVIDIA H100 80GB HBM3", 81559 / 1024, (9, 0), "570.133.20", 1)
TINY = Case("tiny", seq_len=32, warmup_steps=0, measured_steps=2)


class LaneOoms(BenchSession):
    """A session whose lane runs of the cases seeded in `oom_in_lane` run out of memory (a fault
    injected into that run only), as a lane's cap on a real card makes a case that fits the card."""

    oom_in_lane: frozenset[int] = frozenset()

    def _lane_job(self, run: CaseRun, lane: Lane) -> Job:
        job = super()._lane_job(run, lane)
        if run.planned.case.seed not in self.oom_in_lane:
            return job
        return dataclasses.replace(job, options=dataclasses.replace(job.options, inject_fault="oom@training"))


def open_on_h100(tmp_path: Path, lines: list[str]) -> LaneOoms:
    options = make_options(
        tmp_path, gpu="h100", profile=get_profile("h100"), gpu_present=H100, side_by_side=2
    )
    session = LaneOoms.open(options, write_line=lines.append)
    # A row alone whose own NVML line agreed with the device: the evidence a GPU session shares on.
    session.results[("evidence", 0)] = _alone_row(own_peak_gib=8.0)
    return session


@pytest.mark.slow
def test_a_lane_oom_on_a_real_card_is_run_again_alone_and_only_that_row_is_the_cases(tmp_path: Path):
    lines: list[str] = []
    session = open_on_h100(tmp_path, lines)
    session.oom_in_lane = frozenset({1})
    runs = [CaseRun(PlannedCase(TINY.replace(seed=s), ["sweep"])) for s in range(3)]
    session.planned = list(runs)
    try:
        session.run(runs[0])
    finally:
        session.close()
    rows = {r.case["seed"]: r for r in read_results_jsonl(session.run_dir / RESULTS_JSONL)}
    assert sorted(rows) == [0, 1, 2]  # one row per case: the lane's OOM was never stored
    share = lane_share_gib(TINY)
    for seed in (0, 2):  # shared the card, each under its own share; the profile has no cap
        row = rows[seed]
        assert (
            row.status == "ok"
            and row.hardware.side_by_side == 2
            and row.hardware.lane_share_gib == pytest.approx(share)
        )
        assert row.hardware.memory_cap_gib is None and row.hardware.lane_rerun_reason == ""
    again = rows[1]
    assert (
        again.status == "ok" and again.hardware.side_by_side is None and again.hardware.lane_share_gib is None
    )
    assert again.hardware.lane_rerun_reason.startswith(
        f"oom sharing the card under a lane share of {share:.2f} GiB"
    )
    assert (
        again.hardware.lane_rerun_share_gib == pytest.approx(share) and again.hardware.memory_cap_gib is None
    )
    assert case_file_problem(session.run_dir, again) is None  # --resume takes the rerun's row
    stored = json.loads((session.run_dir / CASES_DIR / result_file_name(again.case_hash)).read_text())
    assert stored["lane_rerun_reason"] == again.hardware.lane_rerun_reason
    lane = Result.from_dict(
        json.loads((session.run_dir / CASES_DIR / f"{again.case_hash}-lane.json").read_text())
    )
    assert lane.status == "oom" and lane.hardware.side_by_side == 2 and "injected fault" in lane.reason
    assert sum("it runs again alone" in line for line in lines) == 1
    hows = sorted(run.how for run in timed_runs(session.run_dir))
    assert hows == sorted([SHARED, SHARED, AFTER_LANE, SET_ASIDE])


def test_a_case_too_big_to_share_the_card_runs_alone_and_says_why(tmp_path: Path):
    lines: list[str] = []
    session = open_on_h100(tmp_path, lines)
    big = Case(
        "llama-3.1-8b", batch_size=4, seq_len=2048, gradient_checkpointing=False, optimizer="adamw_8bit"
    )
    small = CaseRun(PlannedCase(TINY, ["sweep"]))
    try:
        assert session._shares(small)
        assert not session._shares(CaseRun(PlannedCase(big, ["ladder:0"])))
    finally:
        session.close()
    (said,) = [line for line in lines if "runs alone" in line]
    assert big.id in said and "of the card the lanes share" in said
