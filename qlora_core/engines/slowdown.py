"""A test-only slowdown knob: `Case.extra=(("slowdown", "PCT"),)` adds PCT% of the step's device
time as device work to every step after warm-up, inside the timed region, in every engine, so
that the speed measurements and the gate can be shown a known regression.
See docs/gate.md#how-the-slowdown-knob-is-calibrated.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch

from qlora_core.engines.common import synchronize
from qlora_core.engines.devicetime import ProfileWindow, reduce_device_spans

MATMUL_SIZE: dict[str, int] = {"cuda": 1024, "cpu": 128}
"""Square fp32 matmul per device: ~0.04 ms on an H200, ~0.2 ms on a small CPU, fine enough grains
to add a few percent of a short step."""
KERNEL_BASIS, WALL_BASIS = "kernel time", "wall time"
_TIMING_REPS = 20
_WARM_REPS = 3


def calibration_base_ms(warmup_ms: Sequence[float]) -> float:
    """The wall step time the slowdown is a percentage of on the wall-time basis: the median
    warm-up step, the first one left out when there are others (it pays one-off costs)."""
    if not warmup_ms:
        raise ValueError("the slowdown needs at least one warm-up step time")
    return statistics.median(warmup_ms[1:] or warmup_ms)


def matmuls_for(pct: float, base_ms: float, matmul_ms: float) -> int:
    """How many matmuls of `matmul_ms` add `pct`% of `base_ms` (at least one)."""
    if not (base_ms > 0 and matmul_ms > 0):
        raise ValueError(f"base_ms={base_ms!r} and matmul_ms={matmul_ms!r} must be positive")
    return max(1, round(pct / 100.0 * base_ms / matmul_ms))


class Slowdown:
    """The knob's device work: `calibrate()` once, then `pad()` inside every timed step.

    `profile_device` (where the run's profiler reads kernel time, "cuda"; "cpu" only in CPU tests
    of the kernel-time path) selects the kernel-time basis; None, the wall-time basis."""

    def __init__(self, pct: float, device: str, profile_device: str | None = None) -> None:
        self.pct = pct
        self.device = device
        self.profile_device = profile_device
        self.basis = KERNEL_BASIS if profile_device is not None else WALL_BASIS
        size = MATMUL_SIZE[device]
        generator = torch.Generator(device="cpu").manual_seed(0)
        self._a = torch.randn(size, size, generator=generator).to(device)
        self._out = torch.empty_like(self._a)
        self.matmuls = 0
        self.base_ms: float | None = None
        """The step time PCT% is of: the profiled warm-up step's kernel time, or the wall base."""
        self.matmul_ms: float | None = None
        self.ms_per_step: float | None = None

    def _run(self, count: int) -> None:
        for _ in range(count):
            torch.mm(self._a, self._a, out=self._out)

    def time_matmul_ms(self) -> float:
        """One matmul's synchronized wall time (the wall-time basis's grain)."""
        self._run(_WARM_REPS)
        synchronize(self.device)
        start = time.perf_counter()
        self._run(_TIMING_REPS)
        synchronize(self.device)
        return (time.perf_counter() - start) * 1000.0 / _TIMING_REPS

    def kernel_matmul_ms(self) -> float:
        """One matmul's kernel time, from the profiler the run reads kernel time with."""
        assert self.profile_device is not None
        self._run(_WARM_REPS)
        synchronize(self.device)
        window = ProfileWindow(self.profile_device)
        window.start()
        start = time.perf_counter()
        self._run(_TIMING_REPS)
        synchronize(self.device)
        wall_ms = (time.perf_counter() - start) * 1000.0
        window.stop()
        return reduce_device_spans(window.spans, _TIMING_REPS, wall_ms / _TIMING_REPS).kernel_ms_per_step

    def calibrate(self, warmup_ms: Sequence[float], step_kernel_ms: float | None = None) -> None:
        """Size the added work: on the kernel-time basis from `step_kernel_ms` (the profiled
        warm-up step's kernel time), else from the warm-up steps' wall times. A kernel-time
        basis whose profile saw no kernel falls back to wall time (`basis` says so)."""
        matmul_kernel_ms = 0.0
        if self.basis == KERNEL_BASIS and step_kernel_ms is not None and step_kernel_ms > 0:
            matmul_kernel_ms = self.kernel_matmul_ms()
        if matmul_kernel_ms > 0 and step_kernel_ms is not None:
            base_ms, matmul_ms = step_kernel_ms, matmul_kernel_ms
        else:
            self.basis = WALL_BASIS
            base_ms, matmul_ms = calibration_base_ms(warmup_ms), self.time_matmul_ms()
        self.base_ms, self.matmul_ms = base_ms, matmul_ms
        self.matmuls = matmuls_for(self.pct, base_ms, matmul_ms)
        self.ms_per_step = self.matmuls * matmul_ms

    def pad(self) -> None:
        """Queue the step's added work (no synchronization: the step's own one waits for it)."""
        self._run(self.matmuls)
