"""reports.claims.speed: one process per row, judged against the noise floor of its point class,
and the floor named in each speed verdict."""

from __future__ import annotations

import pytest

from reports.claims import Verdict
from reports.claims.double_quant import check_dq_compute_overhead
from reports.claims.issues import check_qlora_slower
from reports.claims.noise_floors import stored_floors
from reports.claims.speed import speed_ratio

THREE = "llama-3.2-3b"
DEVICE_BOUND = {"gpu_busy": 0.97, "host_bound": False}
HOST_BOUND = {"gpu_busy": 0.25, "host_bound": True}


@pytest.fixture
def h200_floor() -> tuple[float, str]:
    """The committed device-bound floor of the H200 and its evidence in words."""
    found = stored_floors().device_bound("NVIDIA H200")
    assert found is not None
    return found


def _dq_pair(build, on: float, off: float, spread: float = 0.004, **bound):
    """Double quant on/off at one point, one process each (tokens/s `on`, `off`)."""
    return [
        build.result(THREE, **build.gpu(), **build.training(on, spread=spread), **bound),
        build.result(THREE, double_quant=False, **build.gpu(), **build.training(off, spread=spread), **bound),
    ]


def _qlora_pair(build, nf4: float, ref: float, **bound):
    """QLoRA (nf4 + double quant) and 16-bit LoRA at one point, one process each."""
    return [
        build.result(THREE, quant_type=quant, compute_dtype="bf16", **build.gpu(), **fields, **bound)
        for quant, fields in (
            ("nf4", build.training(nf4, spread=0.004)),
            ("none", build.training(ref, spread=0.004)),
        )
    ]


def test_a_device_bound_pair_with_a_small_difference_is_decided_from_one_process(build, h200_floor):
    value, evidence = h200_floor
    assert value < 0.05  # what the verdict below relies on: the committed evidence
    (decided,) = check_dq_compute_overhead(build.run(_dq_pair(build, 995.0, 1000.0, **DEVICE_BOUND)))
    assert decided.verdict is Verdict.HOLDS and "+0.5% slower" in decided.measured
    assert f"one process each: device-bound floor ±{100 * value:.1f}% from {evidence}" in decided.measured
    assert evidence.endswith("on NVIDIA H200")
    # The same rows without a device-time measurement keep the conservative floor: undecided.
    (unmeasured,) = check_dq_compute_overhead(build.run(_dq_pair(build, 995.0, 1000.0)))
    assert unmeasured.verdict is Verdict.INCONCLUSIVE
    assert "no device-time measurement: conservative floor ±15.0%" in unmeasured.measured


def test_a_host_bound_pair_is_still_left_out(build):
    (left_out,) = check_dq_compute_overhead(build.run(_dq_pair(build, 995.0, 1000.0, **HOST_BOUND)))
    assert left_out.verdict is Verdict.INCONCLUSIVE and "host-bound, not judged on speed" in left_out.why
    mixed = _dq_pair(build, 995.0, 1000.0, **DEVICE_BOUND)
    mixed[1].training.host_bound = True
    (left_out,) = check_dq_compute_overhead(build.run(mixed))
    assert left_out.verdict is Verdict.INCONCLUSIVE and "host-bound" in left_out.why


def test_a_difference_beyond_the_floor_outside_the_lesson_is_refuted(build):
    # double quant 13% slower: "minor" (at most 10%) refuted from one process each
    (heavy,) = check_dq_compute_overhead(build.run(_dq_pair(build, 870.0, 1000.0, **DEVICE_BOUND)))
    assert heavy.verdict is Verdict.REFUTED and "device-bound floor" in heavy.measured
    # QLoRA 25% slower than 16-bit LoRA: outside 10-20% by more than the floor
    point, overall = check_qlora_slower(build.run(_qlora_pair(build, 750.0, 1000.0, **DEVICE_BOUND)))
    assert point.verdict is Verdict.REFUTED and overall.verdict is Verdict.REFUTED
    # the same 25% at the conservative floor straddles 20%: the class of the point decided it
    point, _ = check_qlora_slower(build.run(_qlora_pair(build, 750.0, 1000.0)))
    assert point.verdict is Verdict.INCONCLUSIVE


def test_qlora_slower_is_decided_where_the_interval_clears_the_bounds(build, h200_floor):
    value, _ = h200_floor
    point, overall = check_qlora_slower(build.run(_qlora_pair(build, 830.0, 1000.0, **DEVICE_BOUND)))
    assert point.verdict is Verdict.HOLDS and overall.verdict is Verdict.HOLDS
    # 19.5% slower: the interval (ratio 0.805 +- the floor) reaches past 20%: it straddles the bound
    assert 0.805 * (1 - value) < 0.8
    point, _ = check_qlora_slower(build.run(_qlora_pair(build, 805.0, 1000.0, **DEVICE_BOUND)))
    assert point.verdict is Verdict.INCONCLUSIVE and "straddles" in point.why


def test_a_wide_step_spread_raises_the_noise_above_the_floor_and_says_so(build, h200_floor):
    value, _ = h200_floor
    on, off = _dq_pair(build, 995.0, 1000.0, spread=0.2, **DEVICE_BOUND)
    row = build.run([on, off]).results
    ratio = speed_ratio(row.iloc[0], row.iloc[1])
    assert ratio.high / ratio.ratio == pytest.approx(1.1)
    assert ratio.basis.startswith("one process each: noise ±10.0%, half the rows' step-time spread, above")
    assert value < 0.1
