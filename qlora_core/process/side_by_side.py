"""Cases that may share the device: cases that read no speed run several at once, each in its own
child (`run_side_by_side`), capped like its card or at its share of a real card; their rows have
no speed. The parent side only. See docs/side-by-side.md#side-by-side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from qlora_core.cases.case import Case
from qlora_core.cases.gpus import DetectedGpu, GpuProfile, is_emulated
from qlora_core.measurement.result import Result
from qlora_core.process.request import RunOptions
from qlora_core.process.runner import OnWait, run_case
from qlora_core.process.spare import SparePool

MAX_LANES = 8
"""The most cases side by side: the H200's host has 16 cores, and each host-bound case keeps one
busy dispatching kernels (a second for its data and the NVML thread)."""


_SPARE_POLL_S = 1.0
"""How often the group's own thread tops up the spares while its lanes run."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One run to make side by side: the case, its options and where its Result file goes."""

    case: Case
    options: RunOptions
    result_path: Path
    share_gib: float | None = None
    """Its share of the device's memory while it runs (`lanes.plan_lane`), counted against the
    group's budget; None: not counted (the CPU)."""


def auto_lanes(profile: GpuProfile, gpu: DetectedGpu | None, host_cores: int | None = None) -> int:
    """Lanes `--side-by-side auto` gives: on an emulated GPU profile, as many of the profile's caps
    as the host GPU holds (at most `MAX_LANES`); on a real card of the profile, one per two of the
    host's cores (`host_cores`, default this process's; at most `MAX_LANES`), each case then
    capped at its own share of the card (`qlora_core.process.lanes`); 1 (alone) on the CPU."""
    if gpu is None or not profile.is_gpu:
        return 1
    if is_emulated(profile, gpu):
        return max(1, min(MAX_LANES, int(gpu.total_gib // profile.total_gib)))
    cores = host_cores if host_cores is not None else len(os.sched_getaffinity(0))
    return max(1, min(MAX_LANES, cores // 2))


OWN_LINE_AGREEMENT_GIB = 0.0625
"""How far a lone case's own NVML line (`nvml_own_peak_gib`) may be from its device-wide reading
(`nvml_peak_gib - nvml_base_gib`) for the own line to stand for it: 64 MiB, 0.4-1% of the t4
tier's 3B-8B cases (6-15 GiB on the device), 2% of its SmolLM2 cases (3 GiB). On the H200 the
two differed by 5.6 MiB alone, and side by side the own line read 17.6 MiB under a lone run."""


def ran_alone_on_gpu(row: Result) -> bool:
    """Whether `row` ran on CUDA with no case beside it and read NVML's device-wide memory: a row
    that could show whether its own NVML line agrees with that reading."""
    return (
        row.hardware.device == "cuda"
        and row.hardware.side_by_side is None
        and row.memory.nvml_peak_gib is not None
    )


def own_line_agrees(row: Result) -> bool:
    """Whether `row` ran alone on CUDA and its own NVML line agreed with the device-wide reading:
    the evidence that a case side by side, which reads only its own line, measures what it would
    alone."""
    if not ran_alone_on_gpu(row) or row.hardware.context_gib is None:
        return False
    if (
        row.memory.nvml_own_peak_gib is None
        or row.memory.nvml_peak_gib is None
        or row.memory.nvml_base_gib is None
    ):
        return False
    return (
        abs(row.memory.nvml_own_peak_gib - (row.memory.nvml_peak_gib - row.memory.nvml_base_gib))
        <= OWN_LINE_AGREEMENT_GIB
    )


def sharing_supported(profile: GpuProfile, rows: Iterable[Result]) -> bool:
    """Whether cases may share the device in this session: on a GPU profile, once one of its rows
    ran alone and its own NVML line agreed with the device's reading (`own_line_agrees`); on the
    CPU, always (no device memory to attribute)."""
    return not profile.is_gpu or any(own_line_agrees(r) for r in rows)


def next_fitting(pending: Sequence[Job], free_gib: float | None) -> int | None:
    """The index of the first pending job whose share fits `free_gib` (None: no budget)."""
    for index, job in enumerate(pending):
        if free_gib is None or job.share_gib is None or job.share_gib <= free_gib:
            return index
    return None


def run_side_by_side(
    jobs: Sequence[Job],
    lanes: int,
    on_done: Callable[[Job, Result], None],
    spares: SparePool | None = None,
    budget_gib: float | None = None,
    on_wait: OnWait | None = None,
) -> None:
    """Run `jobs` up to `lanes` at a time, each in its own fresh child with `shared_device=lanes`
    (a child's Result says how many cases may have run beside it), in their order, except that
    with `budget_gib` a job starts only when its share fits beside the running jobs' shares (the
    first that fits goes; one that fits nothing runs once nothing else does); `on_done` is
    called in this thread as each ends. With `spares`, the pool keeps one spare waiting per lane
    meanwhile and a lane hands its case to one whose imports are done, else starts it cold
    (`SparePool.deepened`). Each child takes its share of the host's cores for torch
    (`Result.hardware.torch_threads`). An interrupt (Ctrl-C) or an error in `on_done` kills every
    running child before it propagates: nothing outlives the call, and no half-run case is
    reported. `on_wait`: called in this thread at every poll with the running jobs' Result files."""
    if lanes < 1:
        raise ValueError(f"lanes={lanes} must be >= 1")
    cancel = threading.Event()
    pending = list(jobs)
    running: dict[Future[Result], Job] = {}
    deepened = spares.deepened(lanes) if spares is not None else contextlib.nullcontext()
    with deepened, ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="side-by-side") as pool:
        try:
            while pending or running:
                if spares is not None:  # started here, in the pool's thread, never in a lane's
                    spares.ensure()
                while pending and len(running) < lanes:
                    used_gib = sum(j.share_gib or 0.0 for j in running.values())
                    index = next_fitting(pending, None if budget_gib is None else budget_gib - used_gib)
                    if index is None and running:
                        break  # wait for a lane to end and free its share
                    job = pending.pop(index or 0)
                    options = dataclasses.replace(job.options, shared_device=lanes)
                    future = pool.submit(run_case, job.case, options, job.result_path, spares, cancel)
                    running[future] = job
                done, _ = wait(running, timeout=_SPARE_POLL_S, return_when=FIRST_COMPLETED)
                if on_wait is not None:
                    on_wait([job.result_path for future, job in running.items() if future not in done])
                for future in done:
                    on_done(running.pop(future), future.result())
        except BaseException:
            cancel.set()  # each thread kills its child within a poll (runner._POLL_S)
            raise
