"""The step plan: the stop rule of adaptive measuring, and the clock that walks warm-up, measured
and profiled steps (driven here without a model; the engines drive it in test_engines)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from qlora_core.cases.case import Case
from qlora_core.engines import pacing
from qlora_core.engines.common import TrainStats
from qlora_core.engines.devicetime import PROFILED_STEPS
from qlora_core.engines.pacing import (
    MEASURE_BUDGET_S,
    MEASURED_STEPS_CAP,
    MEMORY_ONLY_STEPS,
    MIN_STEPS_FOR_SPREAD,
    MIN_STEPS_FOR_VERDICT,
    OUT_OF_REACH_FACTOR,
    STOP_REASONS,
    TARGET_REL_IQR,
    StepClock,
    StepPlan,
    percentile,
    plan_steps,
    rel_iqr,
    stop_reason,
)

CASE = Case("tiny", warmup_steps=2, measured_steps=10)
ADAPTIVE = StepPlan(warmup_steps=2, min_measured=10, max_measured=40, adaptive=True, profiled_steps=0)


def test_plans_are_fixed_and_unprofiled_on_the_cpu_adaptive_and_profiled_on_cuda():
    cpu = plan_steps(CASE, "cpu")
    assert (cpu.adaptive, cpu.min_measured, cpu.max_measured, cpu.profiled_steps) == (False, 10, 10, 0)
    assert cpu.max_total_steps == 12
    cuda = plan_steps(CASE, "cuda")
    assert (cuda.adaptive, cuda.max_measured, cuda.profiled_steps) == (
        True,
        MEASURED_STEPS_CAP,
        PROFILED_STEPS,
    )
    assert cuda.max_total_steps == 2 + MEASURED_STEPS_CAP + PROFILED_STEPS
    assert plan_steps(CASE.replace(measured_steps=500), "cuda").max_measured == 500  # never below
    assert plan_steps(CASE, "cuda", adaptive=False, profile=False).max_total_steps == 12


def test_a_case_on_text_trains_its_steps_exactly_on_every_device_whatever_the_options():
    text = CASE.replace(data="text")
    assert text.fixed_steps and not CASE.fixed_steps
    for device in ("cpu", "cuda"):
        for adaptive in (None, True, False):
            for profile in (None, True, False):
                plan = plan_steps(text, device, adaptive=adaptive, profile=profile)
                assert not plan.adaptive and plan.min_measured == plan.max_measured
                assert plan.max_total_steps == 12  # warm-up + measured: nothing the pace adds
        assert stop_reason([5.0, 50.0] * 5, plan_steps(text, device)) == "fixed"
    # A profiler window (CUDA, alone) takes the last measured steps instead of adding its own.
    alone = plan_steps(text, "cuda")
    assert (alone.min_measured, alone.profiled_steps) == (10 - PROFILED_STEPS, PROFILED_STEPS)
    shared = plan_steps(text, "cuda", profile=False)  # side by side: no window, the same steps
    assert (shared.min_measured, shared.profiled_steps) == (10, 0)
    few = plan_steps(text.replace(measured_steps=PROFILED_STEPS), "cuda")
    assert (few.min_measured, few.profiled_steps) == (PROFILED_STEPS, 0)  # no room for a window
    # Its synthetic twin is paced by the device where asked (on CUDA by default, test above).
    assert plan_steps(CASE, "cuda", adaptive=True, profile=True).max_total_steps > 12


def test_percentile_and_relative_iqr():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.25) == 2.0
    assert percentile([1.0, 2.0], 0.5) == 1.5
    assert rel_iqr([5.0, 1.0, 3.0, 4.0, 2.0]) == pytest.approx(2.0 / 3.0)
    assert rel_iqr([]) is None and rel_iqr([0.0, 0.0]) is None
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_fixed_plans_stop_at_the_minimum():
    fixed = dataclasses.replace(ADAPTIVE, adaptive=False, max_measured=10)
    assert stop_reason([100.0] * 9, fixed) is None
    assert stop_reason([100.0] * 10, fixed) == "fixed"


def test_steady_steps_stop_at_the_target_jittery_ones_at_the_budget_or_the_cap():
    steady = [100.0 + 0.1 * (i % 3) for i in range(10)]
    assert stop_reason(steady[:9], ADAPTIVE) is None  # the minimum first
    assert stop_reason(steady, ADAPTIVE) == "target"
    # 4% jitter: above the target, below the out-of-reach threshold (6%).
    jitter = [100.0 if i % 2 else 104.0 for i in range(40)]
    assert 0.02 < rel_iqr(jitter) < 0.06  # type: ignore[operator]
    assert stop_reason(jitter[:10], ADAPTIVE) is None
    assert stop_reason(jitter, ADAPTIVE) == "cap"
    # Slow jittery steps: the budget ends them first.
    slow = [MEASURE_BUDGET_S * 1000.0 / 10 * x / 100.0 for x in jitter[:10]]
    assert stop_reason(slow, ADAPTIVE) == "budget"
    assert {"target", "spread", "budget", "cap", "fixed"} == set(STOP_REASONS)


def test_a_spread_far_above_the_target_stops_early_a_steady_row_still_reaches_the_target():
    few = dataclasses.replace(ADAPTIVE, min_measured=1)
    # Host-bound: 100/130 ms alternating, a relative IQR of ~26% that more steps never lower.
    host_bound = [100.0 if i % 2 else 130.0 for i in range(MIN_STEPS_FOR_VERDICT)]
    assert stop_reason(host_bound[:-1], few) is None  # not before the verdict's minimum
    assert stop_reason(host_bound, few) == "spread"
    assert stop_reason([*host_bound, 100.0, 130.0], ADAPTIVE) == "spread"  # the case's minimum first
    # Just under the threshold: measures on (then the budget or the cap ends it).
    edge = TARGET_REL_IQR * OUT_OF_REACH_FACTOR * 0.9
    below = [100.0 * (1 + edge * (i % 2)) for i in range(MIN_STEPS_FOR_VERDICT)]
    assert stop_reason(below, few) is None
    # Device-bound (1.4% spread, as the H200's 3B b4 s2048 rows) with one slow step among 8: target.
    device_bound = [1000.0, 1014.0, 1007.0, 1010.0, 1003.0, 1300.0, 1012.0, 1005.0]
    assert stop_reason(device_bound, few) == "target"


def test_the_target_needs_enough_steps_for_a_spread():
    few = dataclasses.replace(ADAPTIVE, min_measured=1)
    assert stop_reason([100.0] * (MIN_STEPS_FOR_SPREAD - 1), few) is None
    assert stop_reason([100.0] * MIN_STEPS_FOR_SPREAD, few) == "target"


def _walk(clock: StepClock, step_ms: list[float]) -> list[float | None]:
    """Drive the clock as an engine does, with given step times and a little CPU work."""
    out = []
    a = torch.randn(32, 32)
    for ms in step_ms:
        if clock.done:
            break
        clock.begin_step()
        torch.mm(a, a)
        clock.pad_step()
        out.append(clock.end_step(ms))
    clock.close()
    return out


def test_the_clock_walks_warmup_measured_and_profiled_steps():
    plan = StepPlan(warmup_steps=2, min_measured=3, max_measured=3, adaptive=False, profiled_steps=2,
                    profile_device="cpu")  # fmt: skip
    stats = TrainStats(engine="loop", autocast="none", grad_scaler=False)
    measured = _walk(StepClock(plan, CASE, "cpu", stats), [50.0, 40.0, 10.0, 11.0, 12.0, 1.0, 1.0, 99.0])
    assert measured == [None, None, 10.0, 11.0, 12.0, None, None]  # stops after the window
    assert stats.stop_reason == "fixed" and stats.profiled_steps == 2
    assert stats.kernels_per_step is not None and stats.kernels_per_step >= 1  # aten::mm per step
    assert stats.kernel_ms_per_step is not None and stats.kernel_ms_per_step > 0
    assert stats.gpu_busy is not None and 0 < stats.gpu_busy <= 1
    assert all(s is not None and s >= 0 for s in (stats.warmup_s, stats.train_s, stats.profile_s))
    assert stats.slowdown_ms_per_step is None


def test_an_adaptive_clock_ends_with_its_reason_and_without_a_window_fills_no_device_time():
    plan = dataclasses.replace(ADAPTIVE, min_measured=5, max_measured=8)
    stats = TrainStats(engine="loop", autocast="none", grad_scaler=False)
    measured = _walk(StepClock(plan, CASE, "cpu", stats), [9.0, 9.0] + [100.0, 104.0] * 10)
    assert len([m for m in measured if m is not None]) == 8 and stats.stop_reason == "cap"
    assert (stats.kernel_ms_per_step, stats.gpu_busy, stats.host_bound, stats.profiled_steps) == (
        None, None, None, 0,
    )  # fmt: skip


def test_a_rank_keeps_its_first_reason_and_measures_on_until_every_rank_has_one(monkeypatch):
    # Steady steps reach the target at the 5th measured step; the other ranks agree two steps later.
    answers = iter([False, False, True])  # asked only once this rank has a reason
    asked: list[bool] = []

    def other_ranks(flag: bool) -> bool:
        asked.append(flag)
        return flag and next(answers)

    monkeypatch.setattr(pacing, "every_rank_agrees", other_ranks)
    plan = dataclasses.replace(ADAPTIVE, min_measured=2, max_measured=40)
    stats = TrainStats(engine="loop", autocast="none", grad_scaler=False)
    measured = _walk(
        StepClock(plan, CASE, "cpu", stats), [9.0, 9.0] + [100.0] * 5 + [100.0, 300.0, 300.0, 300.0]
    )
    # asked once per measured step; the 8th step's 300 ms would have undone "target" on a fresh look
    assert asked == [False] * 4 + [True] * 3
    assert [m for m in measured if m is not None] == [100.0] * 5 + [100.0, 300.0]
    assert stats.stop_reason == "target"


def test_outside_a_process_group_a_rank_agrees_with_itself():
    assert pacing.every_rank_agrees(True) and not pacing.every_rank_agrees(False)


def test_a_memory_only_plan_runs_its_few_fixed_steps_whatever_the_case_asks():
    case = Case("tiny", warmup_steps=2, measured_steps=30)
    plan = plan_steps(case, "cuda", memory_only=True)
    assert (plan.warmup_steps, plan.min_measured, plan.max_measured) == (
        0,
        MEMORY_ONLY_STEPS,
        MEMORY_ONLY_STEPS,
    )
    assert not plan.adaptive and plan.profiled_steps == 0 and plan.max_total_steps == MEMORY_ONLY_STEPS
    assert plan_steps(case, "cuda").max_total_steps > MEMORY_ONLY_STEPS  # the case's own plan
