"""What a row derives from its own measurements once training is over: the step-time summary
(median, spreads, tokens/s) and FLOPs per step with MFU. Used by the child and by the multi-GPU
merge of the ranks' rows (`qlora_core.process.distributed`)."""

from __future__ import annotations

import statistics
from typing import Any

from qlora_core.cases.case import Case
from qlora_core.cases.gpus import DetectedGpu, profile_for_device
from qlora_core.measurement import flops
from qlora_core.measurement.result import Result


def summarize_steps(r: Result) -> None:
    """Median step time, its relative spreads (p90 - p10) / median and (p75 - p25) / median,
    and tokens/s."""
    # Here: the engines package imports torch, and the runner imports this module (the ranks'
    # merge, `qlora_core.process.distributed`).
    from qlora_core.engines.pacing import percentile, rel_iqr

    if not r.training.step_ms:
        return
    ordered = sorted(r.training.step_ms)
    median = statistics.median(ordered)
    r.training.step_ms_median = median
    r.training.step_ms_spread = (
        (percentile(ordered, 0.9) - percentile(ordered, 0.1)) / median if median > 0 else None
    )
    r.training.step_ms_rel_iqr = rel_iqr(ordered)
    if r.training.tokens_per_step and median > 0:
        r.training.tokens_per_s = r.training.tokens_per_step / (median / 1000.0)


def record_mfu(r: Result, case: Case, config: Any, gpu: DetectedGpu | None) -> None:
    """FLOPs per step (any device) and MFU against the GPU the kernels ran on (never the
    emulated profile's: an emulated T4's kernels run on the host GPU)."""
    dims = flops.dims_of(config)
    if dims is None:
        return
    r.training.flops_per_step = flops.step_flops(
        dims,
        batch_size=case.batch_size,
        seq_len=case.seq_len,
        grad_accum=case.grad_accum,
        lora_r=case.lora_r,
        target_modules=case.target_modules,
        gradient_checkpointing=case.gradient_checkpointing,
    )
    host = profile_for_device(gpu.name, gpu.total_gib) if gpu is not None else None
    peak = host.peak_tflops(case.compute_dtype) if host is not None else None
    r.training.mfu = flops.mfu(r.training.flops_per_step, r.training.step_ms_median, peak)
    r.training.mfu_kernel = flops.mfu(r.training.flops_per_step, r.training.kernel_ms_per_step, peak)
