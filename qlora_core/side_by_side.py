"""Cases that may share the device: numerics-only cases run several at once.

A case is run alone, in a fresh child, so that its speed and the device's used memory are its own.
Some cases need neither: the families in `matrix.SHAREABLE_FAMILIES` read losses, gradient norms,
the first non-finite step and perplexity, which do not depend on what else runs on the device,
and the allocator's own peaks, which are per process. On an emulated profile the host GPU holds
many emulated cards' memory (an H200 holds nine T4 caps), so those cases can run side by side,
each capped like its card. The t4 default tier has 13 of them (SmolLM2 on real text, 30 steps,
host-bound: ~21 s each alone on the H200), run alone ~4.5 of its 10 minutes.

What a side-by-side row does not have (None, never a number another process shared):
- its speed: step times are kept as measured but not summarized (no tokens/s), and there is no
  profiler window (kernel time, GPU busy);
- NVML's device-wide used memory (nvml_base/nvml_peak): the other cases count in it. Its cap's
  CUDA context is read from NVML's per-process list instead (`Result.context_gib`), which is why
  a GPU session shares only after a row of its own showed that list names its processes
  (`sharing_supported`).
Each row says how many cases shared the device at most (`Result.side_by_side`).

The parent side only; children are started by `runner.run_case`, one thread each.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from qlora_core.gpus import DetectedGpu, GpuProfile, is_emulated
from qlora_core.result import Result
from qlora_core.runner import RunOptions, run_case
from qlora_core.spec import Case

MAX_LANES = 8
"""The most cases side by side: the H200's host has 16 cores, and each host-bound case keeps one
busy dispatching kernels (a second for its data and the NVML thread)."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One run to make side by side: the case, its options and where its Result file goes."""

    case: Case
    options: RunOptions
    result_path: Path


def auto_lanes(profile: GpuProfile, gpu: DetectedGpu | None) -> int:
    """Lanes `--side-by-side auto` gives: on an emulated GPU profile, as many of the profile's caps
    as the host GPU holds (at most `MAX_LANES`); 1 (alone) on a real card of the profile, where
    the cases would not fit side by side as they do on the user's own card, and on the CPU."""
    if gpu is None or not profile.is_gpu or not is_emulated(profile, gpu):
        return 1
    return max(1, min(MAX_LANES, int(gpu.total_gib // profile.total_gib)))


def sharing_supported(profile: GpuProfile, rows: Iterable[Result]) -> bool:
    """Whether cases may share the device in this session: on a GPU profile, once one of its rows
    read its own context from NVML's per-process list (`context_gib`); on the CPU, always (no
    device memory to attribute)."""
    return not profile.is_gpu or any(r.device == "cuda" and r.context_gib is not None for r in rows)


def run_side_by_side(jobs: Sequence[Job], lanes: int, on_done: Callable[[Job, Result], None]) -> None:
    """Run `jobs` up to `lanes` at a time, each in its own fresh child with `shared_device=lanes`
    (a child's Result says how many cases may have run beside it), in their order; `on_done` is
    called in this thread as each ends. An interrupt (Ctrl-C) or an error in `on_done` kills every
    running child before it propagates: nothing outlives the call, and no half-run case is
    reported."""
    if lanes < 1:
        raise ValueError(f"lanes={lanes} must be >= 1")
    cancel = threading.Event()
    pending = list(jobs)
    running: dict[Future[Result], Job] = {}
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="side-by-side") as pool:
        try:
            while pending or running:
                while pending and len(running) < lanes:
                    job = pending.pop(0)
                    options = dataclasses.replace(job.options, shared_device=lanes)
                    running[pool.submit(run_case, job.case, options, job.result_path, None, cancel)] = job
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    on_done(running.pop(future), future.result())
        except BaseException:
            cancel.set()  # each thread kills its child within a poll (runner._POLL_S)
            raise
