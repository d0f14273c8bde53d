"""The test-only slowdown knob: validation, calibration arithmetic, the added device work."""

from __future__ import annotations

import statistics
import time

import pytest

from qlora_core.engines.slowdown import Slowdown, calibration_base_ms, matmuls_for
from qlora_core.faults import parse_slowdown, slowdown_of
from qlora_core.spec import Case, CaseError


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
    assert abs(slowdown.ms_per_step - 20.0) <= slowdown.matmul_ms / 2 + 1e-9
    took = []
    for _ in range(5):
        start = time.perf_counter()
        slowdown.pad()
        took.append((time.perf_counter() - start) * 1000.0)
    # The CPU is shared: the padding takes about what was calibrated, within a factor.
    assert slowdown.ms_per_step / 3 < statistics.median(took) < slowdown.ms_per_step * 3
