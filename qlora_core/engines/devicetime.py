"""Device time per optimizer step, from a short torch.profiler window after the measured steps:
`kernel_ms_per_step`, `kernels_per_step`, `comm_ms_per_step` and `gpu_busy`.

`reduce_device_spans` is the pure reduction (spans -> figures); `ProfileWindow` runs the profiler.
See docs/engines.md#device-time-per-step.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

PROFILED_STEPS = 2
"""Optimizer steps profiled after the measured ones: a step's kernels repeat exactly (same
shapes, same launches), so the per-step mean of two equals that of three; each profiled step of
a host-bound row costs more than its wall step (CUPTI slows the launches). Two, not one: a single
step would carry alone whatever the profiler's start adds to its first kernels."""

HOST_BOUND_BELOW = 0.8
"""A row whose GPU is busy less than this fraction of its wall step is `host_bound`: at least a
fifth of the step the device waits on the host, so its wall time (and its jitter, 10-40% on such
rows) is the host's, and kernel time is the figure to compare. Device-bound rows measured on an
H200 (8B b4 s2048) are busy well above this; the host-bound 3B b1 s512 row, ~28%."""

_NOT_KERNELS = ("Memcpy", "Memset")  # device activity the profiler names like kernels
COMM_KERNELS = ("nccl",)
"""Name prefixes of communication kernels (NCCL's: ncclKernel_*, ncclDevKernel_*)."""


@dataclass(frozen=True)
class DeviceSpan:
    """One interval of device activity (a kernel, copy or memset), in microseconds."""

    name: str
    start_us: float
    end_us: float


@dataclass(frozen=True)
class DeviceTime:
    """Per-step device figures of a profiled window (see the module docstring)."""

    kernel_ms_per_step: float
    kernels_per_step: float
    gpu_busy: float
    profiled_steps: int
    comm_ms_per_step: float = 0.0

    @property
    def host_bound(self) -> bool:
        return self.gpu_busy < HOST_BOUND_BELOW


def busy_union_us(spans: Iterable[DeviceSpan]) -> float:
    """Total length of the union of the spans' intervals (overlaps counted once)."""
    total = 0.0
    current_start = current_end = None
    for span in sorted(spans, key=lambda s: s.start_us):
        if current_end is None or span.start_us > current_end:
            if current_end is not None:
                total += current_end - current_start  # type: ignore[operator]
            current_start, current_end = span.start_us, span.end_us
        else:
            current_end = max(current_end, span.end_us)
    if current_end is not None:
        total += current_end - current_start  # type: ignore[operator]
    return total


def reduce_device_spans(spans: Sequence[DeviceSpan], steps: int, wall_ms_per_step: float) -> DeviceTime:
    """The per-step figures of `steps` profiled steps whose device activity is `spans`."""
    if steps < 1:
        raise ValueError(f"steps={steps!r} must be at least 1")
    if not wall_ms_per_step > 0:
        raise ValueError(f"wall_ms_per_step={wall_ms_per_step!r} must be positive")
    bad = [s for s in spans if s.end_us < s.start_us]
    if bad:
        raise ValueError(f"{len(bad)} span(s) end before they start, e.g. {bad[0]}")
    kernels = [s for s in spans if not s.name.startswith(_NOT_KERNELS)]
    comm = [s for s in kernels if s.name.startswith(COMM_KERNELS)]
    compute = [s for s in kernels if not s.name.startswith(COMM_KERNELS)]
    busy_ms = busy_union_us(spans) / 1000.0 / steps
    return DeviceTime(
        kernel_ms_per_step=_sum_ms(compute) / steps,
        kernels_per_step=len(kernels) / steps,
        gpu_busy=min(1.0, busy_ms / wall_ms_per_step),
        profiled_steps=steps,
        comm_ms_per_step=_sum_ms(comm) / steps,
    )


def _sum_ms(spans: Iterable[DeviceSpan]) -> float:
    return sum(s.end_us - s.start_us for s in spans) / 1000.0


def kineto_spans(profiler: Any, device_type: Any) -> list[DeviceSpan]:
    """The spans on `device_type` of a stopped `torch.profiler.profile`, read from the raw
    Kineto records. `profile.events()` would first build a FunctionEvent tree of every record
    (~20x slower: seconds for the thousands of kernels of a QLoRA step); the raw records carry
    the same start and duration, in ns. Falls back to `events()` where a torch has no raw ones."""
    results = getattr(getattr(profiler, "profiler", None), "kineto_results", None)
    if results is None:
        return device_spans(profiler.events(), device_type)
    return [
        DeviceSpan(e.name(), e.start_ns() / 1000.0, (e.start_ns() + e.duration_ns()) / 1000.0)
        for e in results.events()
        if e.device_type() == device_type
    ]


def device_spans(events: Iterable[Any], device_type: Any) -> list[DeviceSpan]:
    """The spans of the profiler's events (`profile.events()`) that ran on `device_type`
    (`torch.autograd.DeviceType.CUDA` for kernels; `CPU` in the CPU tests)."""
    return [
        DeviceSpan(e.name, float(e.time_range.start), float(e.time_range.end))
        for e in events
        if e.device_type == device_type
    ]


class ProfileWindow:
    """torch.profiler over a few optimizer steps: `start()` before the first, `stop()` after the
    last (after a device synchronization). `device` is where the kernels run: "cuda" records CUDA
    activity only (no CPU op records: less host overhead, a faster parse); "cpu" records CPU ops,
    for the CPU tests of the engines' window."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._profiler: Any = None
        self.spans: list[DeviceSpan] = []
        self.seconds = 0.0
        """Wall time the window cost: its steps, the profiler's start, stop and parse."""
        self._started = 0.0

    @property
    def running(self) -> bool:
        return self._profiler is not None

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activity = ProfilerActivity.CUDA if self.device == "cuda" else ProfilerActivity.CPU
        self._started = time.perf_counter()
        self._profiler = profile(activities=[activity])
        self._profiler.__enter__()

    def stop(self) -> None:
        from torch.autograd import DeviceType

        if self._profiler is None:
            raise RuntimeError("ProfileWindow.stop() before start()")
        self._profiler.__exit__(None, None, None)
        kind = DeviceType.CUDA if self.device == "cuda" else DeviceType.CPU
        self.spans = kineto_spans(self._profiler, kind)
        self._profiler = None
        self.seconds = time.perf_counter() - self._started
