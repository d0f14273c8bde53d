"""qlora_core.process.side_by_side: numerics-only cases several at once, their numbers the same as alone,
nothing shared reported as their own, nothing left running after an interrupt."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from processes import live_processes

from qlora_core.cases.case import Case, CaseError
from qlora_core.cases.gpus import DetectedGpu, get_profile
from qlora_core.cases.matrix import SHAREABLE_FAMILIES, PlannedCase, build_matrix, family_name
from qlora_core.measurement.memory import NVML_PROCESS
from qlora_core.measurement.result import Result
from qlora_core.process.request import RunOptions
from qlora_core.process.runner import run_case
from qlora_core.process.side_by_side import (
    MAX_LANES,
    OWN_LINE_AGREEMENT_GIB,
    Job,
    auto_lanes,
    next_fitting,
    own_line_agrees,
    run_side_by_side,
    sharing_supported,
)
from qlora_core.process.spare import SPARE_DEPTH, SparePool

H200 = DetectedGpu("NVIDIA H200", 139.8, (9, 0), "580.159.04", 1)
T4 = DetectedGpu("Tesla T4", 15.0, (7, 5), "535", 1)
CASES = [Case("tiny", seq_len=32, warmup_steps=0, measured_steps=3, seed=seed) for seed in (0, 1, 2)]


@pytest.mark.parametrize(
    ("profile", "gpu", "lanes"),
    [
        ("t4", H200, MAX_LANES),
        ("a100-80gb", H200, 1),
        ("t4", T4, 3),  # the real card: one lane per two host cores, each capped at its share
        ("h200", H200, 3),
        ("cpu", None, 1),
        ("t4", None, 1),
    ],
)
def test_auto_lanes_fill_an_emulated_host_or_the_cores_of_a_real_card(profile, gpu, lanes):
    assert auto_lanes(get_profile(profile), gpu, host_cores=7) == lanes


def _job(share_gib: float | None) -> Job:
    return Job(CASES[0], RunOptions(), Path("r.json"), share_gib)


def test_the_first_pending_job_whose_share_fits_the_free_memory_goes_next():
    pending = [_job(40.0), _job(30.0), _job(5.0)]
    assert next_fitting(pending, None) == 0  # no budget: in order
    assert next_fitting(pending, 40.0) == 0
    assert next_fitting(pending, 35.0) == 1  # the 40 GiB one waits, the 30 GiB one passes it
    assert next_fitting(pending, 10.0) == 2
    assert next_fitting(pending, 4.0) is None
    assert next_fitting([_job(None), _job(5.0)], 1.0) == 0  # a job without a share is not counted


def _alone(own: float | None, peak: float = 8.6, base: float = 0.6, **fields) -> Result:
    """A GPU row that ran alone: device-wide peak 8.6 GiB over a 0.6 GiB base, its own line `own`."""
    fields = {"device": "cuda", "context_gib": 0.5, **fields}
    nvml = {"nvml_peak_gib": peak, "nvml_base_gib": base, "nvml_own_peak_gib": own}
    return Result.from_dict(dict(case_id="a", case_hash="h", profile="t4", case={}, **nvml, **fields))


def test_sharing_needs_a_row_alone_whose_own_nvml_line_agreed_with_the_device():
    t4, cpu = get_profile("t4"), get_profile("cpu")
    assert sharing_supported(cpu, [])
    assert not sharing_supported(t4, [])
    assert own_line_agrees(_alone(8.0))
    assert own_line_agrees(_alone(8.0 + OWN_LINE_AGREEMENT_GIB))
    assert not own_line_agrees(_alone(8.0 + 2 * OWN_LINE_AGREEMENT_GIB))  # the own line saw more
    assert not own_line_agrees(_alone(7.8))  # ...or less: something else held device memory
    assert not own_line_agrees(_alone(None))  # NVML did not name the process
    assert not own_line_agrees(_alone(8.0, context_gib=None))
    assert not own_line_agrees(_alone(8.0, side_by_side=3))  # not alone: no device-wide evidence
    assert not own_line_agrees(_alone(8.0, device="cpu"))
    assert sharing_supported(t4, [_alone(7.0), _alone(8.0)])
    assert not sharing_supported(t4, [_alone(7.0)])


SPEED_FAMILIES = {"factorial", "speed", "fp32", "engine"}


def test_only_cases_of_families_that_read_no_speed_are_shareable():
    assert PlannedCase(Case("tiny"), ["quality", "stability"]).shareable
    assert PlannedCase(Case("tiny"), ["sweep", "gc", "ladder:3"]).shareable
    assert not PlannedCase(Case("tiny"), ["quality", "speed"]).shareable
    assert not PlannedCase(Case("tiny"), ["sweep", "factorial"]).shareable
    assert not PlannedCase(Case("tiny"), []).shareable
    assert not SHAREABLE_FAMILIES & SPEED_FAMILIES
    planned = build_matrix(get_profile("t4"))
    for p in planned:
        families = {family_name(f) for f in p.families}
        assert p.shareable == (not families & SPEED_FAMILIES), (p.case.id, p.families)
    # the t4 tier's memory families share too now, not only the text cases
    shareable = [p for p in planned if p.shareable]
    assert {p.case.data for p in shareable} == {"text", "synthetic"}
    assert any(p.case.load_only for p in shareable)
    assert any(f.startswith("ladder") for p in shareable for f in p.families)


def test_a_bad_shared_device_is_refused_before_any_child(tmp_path):
    with pytest.raises(CaseError, match="shared_device=0 must be an integer >= 1"):
        run_case(CASES[0], RunOptions(shared_device=0), tmp_path / "r.json")


@pytest.mark.slow
def test_side_by_side_rows_have_the_numbers_of_alone_and_no_speed(tmp_path: Path):
    alone = run_case(CASES[0], RunOptions(), tmp_path / "alone.json")
    done: list[tuple[Job, Result]] = []
    jobs = [Job(case, RunOptions(), tmp_path / f"{case.seed}.json") for case in CASES]
    waited: list[list[Path]] = []  # what the heartbeat is given while the lanes run
    run_side_by_side(jobs, 2, lambda job, result: done.append((job, result)), on_wait=waited.append)
    assert sorted(job.case.seed for job, _ in done) == [0, 1, 2]
    assert waited and max(len(w) for w in waited) == 2  # never more running than lanes
    assert {path for w in waited for path in w} <= {job.result_path for job in jobs}
    rows = {job.case.seed: result for job, result in done}
    assert all(r.status == "ok" and r.hardware.side_by_side == 2 for r in rows.values()), rows
    shared = rows[0]
    # What does not depend on the device's other users is the same as alone...
    assert shared.training.losses == pytest.approx(alone.training.losses, rel=1e-6)
    assert shared.training.grad_norms == pytest.approx(alone.training.grad_norms, rel=1e-6)
    assert alone.hardware.side_by_side is None and alone.training.tokens_per_s is not None
    # ...what does is not reported: step times kept, not summarized into a speed.
    assert (
        len(shared.training.step_ms) == 3
        and shared.training.tokens_per_s is None
        and shared.training.step_ms_median is None
    )
    assert (
        shared.training.kernel_ms_per_step is None and shared.memory.nvml_peak_gib is None
    )  # the CPU: no NVML
    # each takes its share of the host's cores for its CPU-side work
    assert shared.hardware.torch_threads == max(1, len(os.sched_getaffinity(0)) // 2)


@pytest.mark.slow
def test_jobs_whose_shares_do_not_fit_together_run_one_after_another(tmp_path: Path):
    """Three lanes, but each job's share is more than half the budget: one runs at a time (none is
    left running when one ends), and a share above the whole budget still runs, alone."""
    jobs = [Job(case, RunOptions(), tmp_path / f"{case.seed}.json", 6.0) for case in CASES[:2]]
    jobs.append(Job(CASES[2], RunOptions(), tmp_path / "2.json", 50.0))
    running_when_done: list[int] = []
    done: list[Result] = []

    def on_done(job: Job, result: Result) -> None:
        running_when_done.append(len(_children_of(os.getpid())))
        done.append(result)

    run_side_by_side(jobs, 3, on_done, budget_gib=10.0)
    assert len(done) == 3 and all(r.status == "ok" for r in done), [r.reason for r in done]
    assert running_when_done == [0, 0, 0]


@pytest.mark.slow
def test_lanes_hand_their_cases_to_warm_spares_whose_imports_are_done(tmp_path: Path):
    """Two spares ready before the group, a third started with it: two lanes start warm, the
    third cold (it does not wait on a spare still importing beside the running cases)."""
    jobs = [Job(case, RunOptions(), tmp_path / f"{case.seed}.json") for case in CASES]
    done: list[Result] = []
    with SparePool() as pool:
        pool.ensure()
        deadline = time.monotonic() + 120
        while not all(s.ready for s in pool._waiting) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(pool._waiting) == SPARE_DEPTH == 2 and all(s.ready for s in pool._waiting)
        run_side_by_side(jobs, 3, lambda job, result: done.append(result), pool)
        assert pool.depth == SPARE_DEPTH  # one per lane only while the lanes ran
    assert len(done) == 3 and all(r.status == "ok" for r in done), [r.reason for r in done]
    assert sorted(bool(r.timing.warm_spare) for r in done) == [False, True, True]
    assert _children_of(os.getpid()) == []


def _children_of(pid: int) -> list[int]:
    """The runner's case children (`python -m qlora_core.process.child`) started by `pid`."""
    return [
        child
        for child, parent, argv in live_processes()
        if parent == pid and b"qlora_core.process.child" in argv
    ]


@pytest.mark.slow
def test_an_interrupt_kills_every_running_child_and_reports_no_half_run_case(tmp_path: Path):
    hanging = RunOptions(inject_fault="hang@training")  # they sleep until killed
    jobs = [Job(CASES[0], RunOptions(), tmp_path / "0.json")]
    jobs += [Job(case, hanging, tmp_path / f"{case.seed}.json") for case in CASES[1:]]
    reported: list[Result] = []

    def on_done(job: Job, result: Result) -> None:
        reported.append(result)
        assert _children_of(os.getpid()), "the slow cases should still run beside this one"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_side_by_side(jobs, 3, on_done)
    assert [r.case_id for r in reported] == [CASES[0].id]
    deadline = time.monotonic() + 10
    while _children_of(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _children_of(os.getpid()) == []


@pytest.mark.gpu
@pytest.mark.slow
def test_on_the_gpu_shared_rows_read_the_memory_they_read_alone(gpu_required, tmp_path: Path):
    """Emulated T4s side by side on the host GPU: each child reads its CUDA context from NVML's
    per-process list and caps its allocator with it; its device memory is its own line of that
    list, and it is what the same case reads alone from the device-wide "used"."""
    cases = [case.replace(seq_len=128) for case in CASES]
    alone = run_case(cases[0], RunOptions(profile="t4"), tmp_path / "alone.json")
    assert alone.status == "ok" and alone.memory.nvml_scope == "device", alone.reason
    assert own_line_agrees(alone), (
        alone.memory.nvml_own_peak_gib,
        alone.memory.nvml_peak_gib,
        alone.memory.nvml_base_gib,
    )
    done: dict[int, Result] = {}
    jobs = [Job(case, RunOptions(profile="t4"), tmp_path / f"{case.seed}.json") for case in cases]
    run_side_by_side(jobs, 3, lambda job, result: done.__setitem__(job.case.seed, result))
    assert len(done) == 3
    for r in done.values():
        assert r.status == "ok" and r.hardware.side_by_side == 3, r.reason
        assert r.hardware.context_gib is not None and 0.1 < r.hardware.context_gib < 2.0
        assert r.hardware.emulated and r.hardware.memory_cap_gib == pytest.approx(
            get_profile("t4").total_gib - r.hardware.context_gib
        )
        assert (
            r.memory.nvml_scope == NVML_PROCESS
            and r.memory.nvml_base_gib == 0.0
            and r.training.tokens_per_s is None
        )
        assert r.memory.nvml_peak_gib is not None and r.memory.nvml_peak_gib >= r.memory.peak_reserved_gib
        assert r.memory.peak_alloc_gib is not None and r.training.losses
    shared = done[cases[0].seed]
    assert shared.memory.peak_alloc_gib == alone.memory.peak_alloc_gib
    assert shared.memory.peak_reserved_gib == alone.memory.peak_reserved_gib
    device_used = alone.memory.nvml_peak_gib - alone.memory.nvml_base_gib
    assert abs(shared.memory.nvml_peak_gib - device_used) <= OWN_LINE_AGREEMENT_GIB, (shared, device_used)
