"""The test-only slowdown knob: validation, calibration arithmetic on its two bases (kernel time
where the run profiles it, wall time on the CPU), the clock's profiled warm-up step, the added
device work."""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from qlora_core.cases.case import Case, CaseError
from qlora_core.engines.common import TrainStats
from qlora_core.engines.pacing import StepClock, StepPlan
from qlora_core.engines.slowdown import KERNEL_BASIS, WALL_BASIS, Slowdown, calibration_base_ms, matmuls_for
from qlora_core.process.faults import parse_slowdown, slowdown_of


def test_a_percentage_in_range_is_accepted():
    assert parse_slowdown("") is None
    assert parse_slowdown("10") == 10.0 and parse_slowdown("2.5") == 2.5 and parse_slowdown("100") == 100.0
    assert slowdown_of(Case("tiny")) is None
    assert slowdown_of(Case("tiny", extra=(("slowdown", "10"),))) == 10.0


@pytest.mark.parametrize("spec", ["0", "-5", "101", "ten", "nan", "inf"])
def test_a_bad_percentage_is_a_case_error_naming_the_allowed_range(spec):
    with pytest.raises(CaseError, match=r"must be a percentage in \(0, 100\]"):
        parse_slowdown(spec)


def test_the_knob_needs_a_warmup_step_to_calibrate_on():
    with pytest.raises(CaseError, match="warmup_steps must be >= 1"):
        slowdown_of(Case("tiny", warmup_steps=0, extra=(("slowdown", "10"),)))


def test_calibration_arithmetic():
    assert calibration_base_ms([500.0, 100.0, 120.0]) == 110.0  # the first step left out
    assert calibration_base_ms([80.0]) == 80.0
    with pytest.raises(ValueError, match="at least one warm-up"):
        calibration_base_ms([])
    assert matmuls_for(10.0, base_ms=100.0, matmul_ms=0.5) == 20
    assert matmuls_for(1.0, base_ms=10.0, matmul_ms=5.0) == 1  # at least one
    with pytest.raises(ValueError, match="must be positive"):
        matmuls_for(10.0, base_ms=0.0, matmul_ms=1.0)


def test_the_added_work_takes_the_calibrated_time_on_the_cpu():
    slowdown = Slowdown(50.0, "cpu")
    slowdown.calibrate([999.0, 40.0])
    assert slowdown.matmul_ms is not None and slowdown.ms_per_step is not None
    assert slowdown.matmuls == max(1, round(0.5 * 40.0 / slowdown.matmul_ms))
    # Within half a matmul of the 20 ms asked for, or one matmul where a loaded CPU made one longer.
    assert abs(slowdown.ms_per_step - max(20.0, slowdown.matmul_ms)) <= slowdown.matmul_ms / 2 + 1e-9
    took = []
    for _ in range(5):
        start = time.perf_counter()
        slowdown.pad()
        took.append((time.perf_counter() - start) * 1000.0)
    # The CPU is shared: the padding takes about what was calibrated, within a factor.
    assert slowdown.ms_per_step / 3 < statistics.median(took) < slowdown.ms_per_step * 3


def test_on_kernel_time_a_host_bound_step_gets_pct_of_its_kernel_time_not_of_its_wall_time():
    # A host-bound step as measured on an H100 at 3B b4 s512: the GPU busy ~30% of a 100 ms step.
    wall_ms, kernel_ms, matmul_ms = 100.0, 28.0, 0.04
    on_kernel = matmuls_for(5.0, base_ms=kernel_ms, matmul_ms=matmul_ms)
    on_wall = matmuls_for(5.0, base_ms=wall_ms, matmul_ms=matmul_ms)
    assert on_kernel * matmul_ms == pytest.approx(0.05 * kernel_ms)  # +5.0% of kernel time
    # The old basis: +17.9% of kernel time for "5", the 10-19% the knob showed on such steps.
    assert on_wall * matmul_ms / kernel_ms == pytest.approx(0.1786, abs=1e-3)


def test_the_kernel_time_basis_sizes_the_work_from_the_profiled_step_not_the_wall_steps():
    # The CPU profiler stands in for CUPTI: the same sums, over CPU ops.
    slowdown = Slowdown(50.0, "cpu", profile_device="cpu")
    slowdown.calibrate([999.0, 400.0], step_kernel_ms=40.0)
    assert slowdown.basis == KERNEL_BASIS and slowdown.base_ms == 40.0  # not the 400 ms wall step
    assert slowdown.matmul_ms is not None and slowdown.matmul_ms > 0
    assert slowdown.matmuls == max(1, round(0.5 * 40.0 / slowdown.matmul_ms))


@pytest.mark.parametrize("step_kernel_ms", [None, 0.0])
def test_without_a_measured_kernel_time_the_knob_falls_back_to_wall_time_and_says_so(step_kernel_ms):
    slowdown = Slowdown(50.0, "cpu", profile_device="cpu")
    slowdown.calibrate([999.0, 40.0], step_kernel_ms=step_kernel_ms)
    assert slowdown.basis == WALL_BASIS and slowdown.base_ms == 40.0


def test_on_the_cpu_the_percentage_is_of_the_wall_step():
    # The CPU's meaning: its "device" is the host, and no kernel time is measured there.
    slowdown = Slowdown(10.0, "cpu")
    slowdown.calibrate([500.0, 100.0, 120.0], step_kernel_ms=30.0)  # a kernel time is ignored
    assert slowdown.basis == WALL_BASIS and slowdown.base_ms == 110.0


def _steps(clock: StepClock, work: list) -> None:
    for run in work:
        clock.begin_step()
        run()
        clock.pad_step()
        clock.end_step(5.0)


def test_the_clock_profiles_only_the_last_warmup_step_for_the_kernel_time_basis():
    a = torch.ones(64, 64)
    plan = StepPlan(warmup_steps=2, min_measured=1, max_measured=1, adaptive=False, profiled_steps=2,
                    profile_device="cpu")  # fmt: skip
    case = Case("tiny", warmup_steps=2, measured_steps=1, extra=(("slowdown", "10"),))
    stats = TrainStats(engine="loop", autocast="none", grad_scaler=False)
    clock = StepClock(plan, case, "cpu", stats)
    # Warm-up 1 multiplies, warm-up 2 adds: only the add is what the knob's percentage is of.
    _steps(clock, [lambda: torch.mm(a, a), lambda: torch.add(a, a)])
    assert clock.slowdown is not None and clock.slowdown.basis == KERNEL_BASIS
    names = {span.name for span in clock._calibration.spans}  # type: ignore[union-attr]
    assert "aten::add" in names and "aten::mm" not in names
    assert clock.slowdown.base_ms is not None and clock.slowdown.base_ms > 0
    assert stats.slowdown_ms_per_step == clock.slowdown.matmuls * clock.slowdown.matmul_ms
    _steps(clock, [lambda: None] * 3)
    clock.close()
    assert clock.done and stats.kernel_ms_per_step is not None


def test_a_plan_that_profiles_nothing_keeps_the_wall_time_basis():
    plan = StepPlan(warmup_steps=2, min_measured=1, max_measured=1, adaptive=False, profiled_steps=0)
    case = Case("tiny", warmup_steps=2, measured_steps=1, extra=(("slowdown", "10"),))
    clock = StepClock(plan, case, "cpu", TrainStats(engine="loop", autocast="none", grad_scaler=False))
    _steps(clock, [lambda: None, lambda: None])
    assert clock.slowdown is not None and clock.slowdown.basis == WALL_BASIS
    assert clock.slowdown.base_ms == 5.0
