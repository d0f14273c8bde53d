"""How many steps a case runs and what each one is for: warm-up, measured, profiled.

`plan_steps` / `fixed_plan` make the plan, `StepClock` walks it step by step (the loop and the
trainer engines drive it alike), `every_rank_agrees` stops a multi-GPU case's ranks together.
See docs/engines.md#the-step-plan.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from qlora_core.cases.case import Case
from qlora_core.engines.common import TrainStats
from qlora_core.engines.devicetime import PROFILED_STEPS, ProfileWindow, reduce_device_spans
from qlora_core.engines.slowdown import Slowdown
from qlora_core.process.faults import slowdown_of

TARGET_REL_IQR = 0.02
"""Stop once (p75 - p25) / median of the measured steps is below this: 2% resolves the 5-10%
differences the claims and the gate look at, and device-bound rows (0.2% spread on an H200)
reach it at the minimum number of steps."""
MEASURE_BUDGET_S = 10.0
"""Stop measuring a case after this many seconds of measured steps: the t4 tier's 37 cases must
fit in 10 minutes, and a host-bound row (10-40% jitter) would otherwise never reach the target."""
MEASURED_STEPS_CAP = 100
"""Never measure more steps than this (or `measured_steps`, if larger): short steps reach it
before the budget; the data must cover it (`StepPlan.max_total_steps`)."""
MIN_STEPS_FOR_SPREAD = 5
"""An IQR of fewer steps is no spread: the target is checked only from this many steps on."""
OUT_OF_REACH_FACTOR = 3.0
"""Stop ("spread") once the relative IQR is this many times the target, from
`MIN_STEPS_FOR_VERDICT` steps on. The relative IQR is a property of the step-time distribution,
not an error that shrinks with more steps: a host-bound row at 8-40% (the t4 tier on the H200,
gpu_busy 0.12-0.34) stays there however long it runs, and used to spend the whole budget (10 s
per row, ~6 of the t4 tier's 25 minutes). 3x the target (6%) is far above what device-bound rows
show (0.06-1.4% on the H200), so they still stop on "target" as precisely as before."""
MIN_STEPS_FOR_VERDICT = 8
"""Steps before a spread may be declared out of reach: the IQR of 8 steps sits on 4 of them
between p25 and p75, so one slow step cannot push a steady row above the threshold."""
STOP_REASONS: tuple[str, ...] = ("target", "spread", "budget", "cap", "fixed")
MEMORY_ONLY_STEPS = 3
"""Optimizer steps of a run that wants memory only (an OOM's uncapped rerun, `oom_need`): the
second step holds the weights, the optimizer's states (made by the first update), the gradients
and a step's activations at once, which is every later step's peak too; the third repeats it,
so that the allocator's reserved memory has seen the steady pattern twice. No warm-up, no
pacing, no profiler window: ~4-6 s less per rerun on the H200 than the case's own steps."""


@dataclass(frozen=True)
class StepPlan:
    """The steps of one case: warm-up, measured (a minimum and a cap), profiled."""

    warmup_steps: int
    min_measured: int
    max_measured: int
    adaptive: bool
    profiled_steps: int
    profile_device: str = "cuda"
    """Where the profiled kernels run: "cuda"; "cpu" only in the CPU tests of the window."""
    target_rel_iqr: float = TARGET_REL_IQR
    budget_s: float = MEASURE_BUDGET_S

    @property
    def max_total_steps(self) -> int:
        """The most optimizer steps the plan can run: what the batches must cover."""
        return self.warmup_steps + self.max_measured + self.profiled_steps


def plan_steps(
    case: Case,
    device: str,
    adaptive: bool | None = None,
    profile: bool | None = None,
    memory_only: bool = False,
) -> StepPlan:
    """The plan of `case` on `device`; `adaptive`/`profile` None: on CUDA only. `memory_only`:
    `MEMORY_ONLY_STEPS` fixed steps, no warm-up, no profiler window. A case of `fixed_steps`:
    `fixed_plan`, never adaptive, whatever `adaptive` says (a run's options apply to all its
    cases; this case's steps are part of what it measures)."""
    if memory_only:
        return StepPlan(
            warmup_steps=0,
            min_measured=MEMORY_ONLY_STEPS,
            max_measured=MEMORY_ONLY_STEPS,
            adaptive=False,
            profiled_steps=0,
            profile_device=device,
        )
    adaptive = device == "cuda" if adaptive is None else adaptive
    profile = device == "cuda" if profile is None else profile
    if case.fixed_steps:
        return fixed_plan(case, device, profile)
    cap = max(case.measured_steps, MEASURED_STEPS_CAP) if adaptive else case.measured_steps
    return StepPlan(
        warmup_steps=case.warmup_steps,
        min_measured=case.measured_steps,
        max_measured=cap,
        adaptive=adaptive,
        profiled_steps=PROFILED_STEPS if profile else 0,
        profile_device=device,
    )


def fixed_plan(case: Case, device: str, profile: bool) -> StepPlan:
    """Exactly `case.warmup_steps + case.measured_steps` optimizer steps, not adaptive. With a
    profiler window (`profile`), the last `PROFILED_STEPS` measured steps are profiled rather than
    timed, where the case measures more steps than that; otherwise there is no window."""
    profiled = PROFILED_STEPS if profile and case.measured_steps > PROFILED_STEPS else 0
    timed = case.measured_steps - profiled
    return StepPlan(
        warmup_steps=case.warmup_steps,
        min_measured=timed,
        max_measured=timed,
        adaptive=False,
        profiled_steps=profiled,
        profile_device=device,
    )


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, interpolated linearly between neighbours."""
    if not ordered:
        raise ValueError("percentile of no values")
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def rel_iqr(values: Sequence[float]) -> float | None:
    """(p75 - p25) / median; None for no values or a median that is not positive."""
    if not values:
        return None
    ordered = sorted(values)
    median = statistics.median(ordered)
    if median <= 0:
        return None
    return (percentile(ordered, 0.75) - percentile(ordered, 0.25)) / median


def stop_reason(step_ms: Sequence[float], plan: StepPlan) -> str | None:
    """Why measuring stops after these measured steps, or None to measure on."""
    n = len(step_ms)
    if n < plan.min_measured:
        return None
    if not plan.adaptive:
        return "fixed"
    spread = rel_iqr(step_ms)
    if n >= MIN_STEPS_FOR_SPREAD and spread is not None and spread < plan.target_rel_iqr:
        return "target"
    out_of_reach = OUT_OF_REACH_FACTOR * plan.target_rel_iqr
    if n >= MIN_STEPS_FOR_VERDICT and spread is not None and spread >= out_of_reach:
        return "spread"
    if sum(step_ms) / 1000.0 >= plan.budget_s:
        return "budget"
    if n >= plan.max_measured:
        return "cap"
    return None


class StepClock:
    """Walks a plan: which phase each step is in, the slowdown knob, the profiler window.

    An engine calls, per optimizer step: `begin_step()` before its first synchronization,
    `pad_step()` just before its last one (the slowdown's work is then inside the timed region),
    `end_step(elapsed_ms)` after it (returns the time if the step is a measured one), and stops
    training when `done`. `close()` at the end, whatever happened. The statistics it completes:
    `stop_reason`, the device-time fields, `slowdown_ms_per_step`, `warmup_s`, `train_s`,
    `profile_s`. With the slowdown knob on a plan that profiles device time, the last warm-up step
    runs under the profiler too: its kernel time is what the knob's percentage is of
    (`engines.slowdown`).
    """

    def __init__(self, plan: StepPlan, case: Case, device: str, stats: TrainStats) -> None:
        self.plan = plan
        self.stats = stats
        pct = slowdown_of(case)
        # Where the run measures kernel time, the knob's percentage is of kernel time.
        kernel_basis = plan.profile_device if plan.profiled_steps else None
        self.slowdown = Slowdown(pct, device, kernel_basis) if pct is not None else None
        self.window = ProfileWindow(plan.profile_device) if plan.profiled_steps else None
        self._calibration = (
            ProfileWindow(plan.profile_device)
            if self.slowdown is not None and kernel_basis is not None and plan.warmup_steps
            else None
        )
        self._calibration_kernel_ms: float | None = None
        self.phase = "warmup" if plan.warmup_steps else "measured"
        self.done = False
        self._warmup_ms: list[float] = []
        self._measured_ms: list[float] = []
        self._profiled = 0
        self._phase_start: float | None = None
        self._reason: str | None = None  # the first reason this rank had to stop measuring

    def begin_step(self) -> None:
        if self._phase_start is None:
            self._phase_start = time.perf_counter()
        last_warmup = self.phase == "warmup" and len(self._warmup_ms) == self.plan.warmup_steps - 1
        if last_warmup and self._calibration is not None:
            self._calibration.start()
        if self.phase == "profiled" and self._profiled == 0 and self.window is not None:
            self.window.start()

    def pad_step(self) -> None:
        if self.slowdown is not None and self.phase != "warmup":
            self.slowdown.pad()

    def end_step(self, elapsed_ms: float) -> float | None:
        """Account one finished step; its time if it was a measured step, else None."""
        if self.phase == "warmup":
            self._warmup_ms.append(elapsed_ms)
            if self._calibration is not None and self._calibration.running:
                self._calibration.stop()
                spans = self._calibration.spans
                self._calibration_kernel_ms = reduce_device_spans(spans, 1, elapsed_ms).kernel_ms_per_step
            if len(self._warmup_ms) == self.plan.warmup_steps:
                self._calibrate()
                self.stats.warmup_s = self._lap()
                self.phase = "measured"
            return None
        if self.phase == "measured":
            self._measured_ms.append(elapsed_ms)
            self._reason = self._reason or stop_reason(self._measured_ms, self.plan)
            if every_rank_agrees(self._reason is not None):
                self.stats.stop_reason = self._reason
                self.stats.train_s = self._lap()
                self.phase = "profiled" if self.window is not None else "done"
                self.done = self.window is None
            return elapsed_ms
        self._profiled += 1
        if self._profiled == self.plan.profiled_steps and self.window is not None:
            self.window.stop()
            self._record_device_time()
            self.done = True
        return None

    def close(self) -> None:
        """Stop a profiler a diverged step left running (its figures are not recorded)."""
        for window in (self.window, self._calibration):
            if window is not None and window.running:
                window.stop()

    def _calibrate(self) -> None:
        if self.slowdown is not None:
            self.slowdown.calibrate(self._warmup_ms, self._calibration_kernel_ms)
            self.stats.slowdown_ms_per_step = self.slowdown.ms_per_step

    def _lap(self) -> float:
        now = time.perf_counter()
        start = self._phase_start if self._phase_start is not None else now
        self._phase_start = now
        return now - start

    def _record_device_time(self) -> None:
        assert self.window is not None
        wall = statistics.median(self._measured_ms)
        figures = reduce_device_spans(self.window.spans, self.plan.profiled_steps, wall)
        self.stats.kernel_ms_per_step = figures.kernel_ms_per_step
        self.stats.kernels_per_step = figures.kernels_per_step
        self.stats.comm_ms_per_step = figures.comm_ms_per_step
        self.stats.gpu_busy = figures.gpu_busy
        self.stats.host_bound = figures.host_bound
        self.stats.profiled_steps = figures.profiled_steps
        self.stats.profile_s = self.window.seconds


def every_rank_agrees(flag: bool) -> bool:
    """Whether `flag` holds on every rank of the process group (one all-reduce of a flag, MIN,
    on the rank's GPU under NCCL, on the CPU under gloo); `flag` itself outside a multi-process
    group. Every rank must call it at the same step. Called after a step's time is taken, so the
    collective is never inside a measured step."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    agreed = torch.tensor([1 if flag else 0], dtype=torch.int32, device=on)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())
