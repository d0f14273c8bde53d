"""Device time from profiler events: the pure reduction on hand-built spans and on real
torch.profiler output from CPU ops, and the profiler window itself (CPU activity)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from qlora_core.engines.devicetime import (
    HOST_BOUND_BELOW,
    DeviceSpan,
    ProfileWindow,
    busy_union_us,
    device_spans,
    kineto_spans,
    reduce_device_spans,
)


def test_the_union_counts_overlaps_once():
    spans = [DeviceSpan("a", 0, 10), DeviceSpan("b", 5, 15), DeviceSpan("c", 20, 30), DeviceSpan("d", 22, 25)]
    assert busy_union_us(spans) == 25  # [0, 15] and [20, 30]
    assert busy_union_us([]) == 0
    assert busy_union_us([DeviceSpan("a", 0, 10), DeviceSpan("b", 10, 12)]) == 12  # touching


def test_two_steps_of_hand_built_spans_reduce_per_step():
    # Two steps; a kernel on a second stream overlaps the first; a copy is busy time, no kernel.
    spans = [
        DeviceSpan("gemm", 0, 4000),
        DeviceSpan("elementwise", 2000, 5000),
        DeviceSpan("Memcpy HtoD (Pageable -> Device)", 6000, 7000),
        DeviceSpan("gemm", 10000, 14000),
        DeviceSpan("elementwise", 14000, 17000),
    ]
    figures = reduce_device_spans(spans, steps=2, wall_ms_per_step=10.0)
    assert figures.kernel_ms_per_step == pytest.approx((4 + 3 + 4 + 3) / 2)  # the sum, overlap twice
    assert figures.kernels_per_step == 2
    assert figures.gpu_busy == pytest.approx((5 + 1 + 7) / 2 / 10.0)  # the union, the copy in it
    assert figures.profiled_steps == 2
    assert figures.host_bound is (figures.gpu_busy < HOST_BOUND_BELOW)


def test_nccl_kernels_are_communication_apart_from_kernel_time_and_busy_like_any_kernel():
    # One step of a rank: compute, then an all-gather whose kernel waits for the peer.
    spans = [
        DeviceSpan("ampere_bf16_gemm", 0, 3000),
        DeviceSpan("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", 3000, 9000),
        DeviceSpan("ncclKernel_AllReduce_RING_LL_Sum_float", 9000, 10000),
    ]
    figures = reduce_device_spans(spans, steps=1, wall_ms_per_step=10.0)
    assert figures.kernel_ms_per_step == pytest.approx(3.0)
    assert figures.comm_ms_per_step == pytest.approx(7.0)
    assert figures.kernels_per_step == 3  # launches: every kernel
    assert figures.gpu_busy == pytest.approx(1.0)  # in a collective, the GPU does not wait on its host
    assert reduce_device_spans(spans[:1], 1, 10.0).comm_ms_per_step == 0.0


def test_busy_is_clamped_to_one_and_host_bound_follows_the_threshold():
    spans = [DeviceSpan("k", 0, 12000)]
    assert reduce_device_spans(spans, 1, wall_ms_per_step=10.0).gpu_busy == 1.0
    below = reduce_device_spans(spans, 1, wall_ms_per_step=12.0 / (HOST_BOUND_BELOW - 0.01))
    above = reduce_device_spans(spans, 1, wall_ms_per_step=12.0 / (HOST_BOUND_BELOW + 0.01))
    assert below.host_bound and not above.host_bound


@pytest.mark.parametrize(
    "spans, steps, wall, problem",
    [
        ([], 0, 10.0, "steps=0"),
        ([], 1, 0.0, "wall_ms_per_step=0.0"),
        ([DeviceSpan("k", 5, 4)], 1, 10.0, "end before they start"),
    ],
)
def test_bad_inputs_are_refused(spans, steps, wall, problem):
    with pytest.raises(ValueError, match=problem):
        reduce_device_spans(spans, steps, wall)


def test_real_profiler_output_of_cpu_ops_reduces_to_what_ran():
    a = torch.randn(96, 96)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):  # three "steps", one mm and one relu each
            torch.mm(a, a).relu_()
    spans = device_spans(prof.events(), DeviceType.CPU)
    assert device_spans(prof.events(), DeviceType.CUDA) == []  # no device activity on the CPU
    mms = [s for s in spans if s.name == "aten::mm"]
    assert len(mms) == 3 and all(s.end_us > s.start_us for s in mms)
    figures = reduce_device_spans(mms, steps=3, wall_ms_per_step=1000.0)
    assert figures.kernels_per_step == 1
    assert figures.kernel_ms_per_step == pytest.approx(sum(s.end_us - s.start_us for s in mms) / 3000)
    # CPU ops nest (aten::relu_ inside nothing, aten::mm calls into others): the union of all
    # spans is at most their sum, and busy is a fraction.
    everything = reduce_device_spans(spans, steps=3, wall_ms_per_step=1000.0)
    assert busy_union_us(spans) <= sum(s.end_us - s.start_us for s in spans)
    assert 0 < everything.gpu_busy <= 1


def test_the_raw_kineto_records_give_the_figures_of_the_parsed_events():
    a = torch.randn(96, 96)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            torch.mm(a, a).relu_()
    raw = kineto_spans(prof, DeviceType.CPU)
    parsed = device_spans(prof.events(), DeviceType.CPU)
    assert kineto_spans(prof, DeviceType.CUDA) == []
    assert sorted(s.name for s in raw) == sorted(s.name for s in parsed)
    # Same durations (the parsed events round to the microsecond); the raw clock is absolute.
    raw_mm = reduce_device_spans([s for s in raw if s.name == "aten::mm"], 2, 1000.0)
    parsed_mm = reduce_device_spans([s for s in parsed if s.name == "aten::mm"], 2, 1000.0)
    assert raw_mm.kernel_ms_per_step == pytest.approx(parsed_mm.kernel_ms_per_step, abs=0.005)
    assert raw_mm.kernels_per_step == parsed_mm.kernels_per_step == 1


class _NoRawRecords:
    """A profiler of a torch without raw Kineto records: only `events()`."""

    def __init__(self, prof: profile) -> None:
        self.events = prof.events


def test_without_raw_records_the_parsed_events_are_read():
    a = torch.randn(32, 32)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.mm(a, a)
    spans = kineto_spans(_NoRawRecords(prof), DeviceType.CPU)
    assert spans == device_spans(prof.events(), DeviceType.CPU)


def test_the_window_records_the_ops_between_start_and_stop():
    window = ProfileWindow("cpu")
    with pytest.raises(RuntimeError, match="before start"):
        window.stop()
    a = torch.randn(64, 64)
    torch.mm(a, a)  # before the window: not recorded
    window.start()
    assert window.running
    for _ in range(2):
        torch.mm(a, a)
    window.stop()
    assert not window.running and window.seconds > 0
    assert [s.name for s in window.spans].count("aten::mm") == 2
