"""A test-only slowdown knob: `Case.extra=(("slowdown", "PCT"),)` adds PCT% of the step's time as
device work to every step after warm-up, inside the timed region, in every engine.

It exists to show that the speed measurements and the gate see a known regression: the work is
a fixed matmul on the device, so it shows in wall time *and* in kernel time. Calibrated once,
after the warm-up steps: the step time without the slowdown (the median of the warm-up steps
after the first, which pays one-off costs such as kernel selection) and the time of one matmul;
each later step then runs round(PCT% x step / matmul) of them. `ms_per_step` is what was added,
as calibrated. Like the fault knob, it is part of the case's id, so it cannot hide in a matrix;
it is parsed, without torch, where the fault knob is (`faults.slowdown_of`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch

from qlora_core.engines.common import synchronize

MATMUL_SIZE: dict[str, int] = {"cuda": 1024, "cpu": 128}
"""Square fp32 matmul per device: ~0.04 ms on an H200, ~0.2 ms on a small CPU, fine enough grains
to add a few percent of a short step."""
_TIMING_REPS = 20
_WARM_REPS = 3


def calibration_base_ms(warmup_ms: Sequence[float]) -> float:
    """The step time the slowdown is a percentage of: the median warm-up step, the first one left
    out when there are others (it pays one-off costs)."""
    if not warmup_ms:
        raise ValueError("the slowdown needs at least one warm-up step time")
    return statistics.median(warmup_ms[1:] or warmup_ms)


def matmuls_for(pct: float, base_ms: float, matmul_ms: float) -> int:
    """How many matmuls of `matmul_ms` add `pct`% of `base_ms` (at least one)."""
    if not (base_ms > 0 and matmul_ms > 0):
        raise ValueError(f"base_ms={base_ms!r} and matmul_ms={matmul_ms!r} must be positive")
    return max(1, round(pct / 100.0 * base_ms / matmul_ms))


class Slowdown:
    """The knob's device work: `calibrate()` once, then `pad()` inside every timed step."""

    def __init__(self, pct: float, device: str) -> None:
        self.pct = pct
        self.device = device
        size = MATMUL_SIZE[device]
        generator = torch.Generator(device="cpu").manual_seed(0)
        self._a = torch.randn(size, size, generator=generator).to(device)
        self._out = torch.empty_like(self._a)
        self.matmuls = 0
        self.matmul_ms: float | None = None
        self.ms_per_step: float | None = None

    def _run(self, count: int) -> None:
        for _ in range(count):
            torch.mm(self._a, self._a, out=self._out)

    def time_matmul_ms(self) -> float:
        self._run(_WARM_REPS)
        synchronize(self.device)
        start = time.perf_counter()
        self._run(_TIMING_REPS)
        synchronize(self.device)
        return (time.perf_counter() - start) * 1000.0 / _TIMING_REPS

    def calibrate(self, warmup_ms: Sequence[float]) -> None:
        self.matmul_ms = self.time_matmul_ms()
        self.matmuls = matmuls_for(self.pct, calibration_base_ms(warmup_ms), self.matmul_ms)
        self.ms_per_step = self.matmuls * self.matmul_ms

    def pad(self) -> None:
        """Queue the step's added work (no synchronization: the step's own one waits for it)."""
        self._run(self.matmuls)
