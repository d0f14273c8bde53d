"""The core loop, with mixed precision as training frameworks apply it: the forward and loss under
`torch.autocast` of the compute dtype, fp16 with a gradient scaler, on CUDA and the CPU alike.
See docs/engines.md#the-core-loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import torch

from qlora_core.cases.case import Case
from qlora_core.engines.common import (
    LR_SCHEDULER,
    MAX_GRAD_NORM,
    NO_AUTOCAST,
    WEIGHT_DECAY,
    OnStart,
    OnStep,
    TrainStats,
    check_batches,
    is_nonfinite,
    optimizer_state_bytes,
    synchronize,
    trainable_parameters,
)
from qlora_core.engines.pacing import StepClock, StepPlan, plan_steps
from qlora_core.measurement.memory import params_device, trainable_dtypes

_AUTOCAST_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}
GRAD_SCALER_INIT_SCALE = 2.0**16
"""The fp16 scaler's first loss scale: torch's default, and so accelerate's and Trainer's."""


def make_optimizer(model: torch.nn.Module, case: Case) -> torch.optim.Optimizer:
    """The case's optimizer over the trainable parameters, with the engines' shared settings."""
    params = trainable_parameters(model)
    if case.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=case.lr, weight_decay=WEIGHT_DECAY)
    import bitsandbytes as bnb

    if case.optimizer == "adamw_8bit":
        return bnb.optim.AdamW8bit(params, lr=case.lr, weight_decay=WEIGHT_DECAY)
    if case.optimizer == "paged_adamw_8bit":
        return bnb.optim.PagedAdamW8bit(params, lr=case.lr, weight_decay=WEIGHT_DECAY)
    raise ValueError(f"optimizer={case.optimizer!r} is not one of adamw, adamw_8bit, paged_adamw_8bit")


def make_scheduler(
    optimizer: torch.optim.Optimizer, case: Case, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' own warm-up schedule, the one the trainer engines get from `LR_SCHEDULER`
    (constant after warm-up, so `steps`, the most the plan may run, changes nothing)."""
    from transformers import get_scheduler

    return get_scheduler(
        LR_SCHEDULER,
        optimizer=optimizer,
        num_warmup_steps=case.warmup_steps,
        num_training_steps=steps,
    )


def run_loop(
    model: torch.nn.Module,
    case: Case,
    batches: Sequence[torch.Tensor],
    device: str,
    on_step: OnStep | None = None,
    plan: StepPlan | None = None,
    on_start: OnStart | None = None,
) -> TrainStats:
    """Train `model` over `batches` in the core loop, step by step as `plan` says (default:
    `plan_steps(case, device)`)."""
    plan = plan or plan_steps(case, device)
    check_batches(case, batches, plan.max_total_steps)
    # from_pretrained returns eval mode; transformers applies checkpointing only in training.
    model.train()
    optimizer = make_optimizer(model, case)
    scheduler = make_scheduler(optimizer, case, plan.max_total_steps)
    autocast_dtype = _AUTOCAST_DTYPES.get(case.compute_dtype)
    scaler = None
    if case.compute_dtype == "fp16":
        scaler = torch.amp.GradScaler(device, init_scale=GRAD_SCALER_INIT_SCALE)
    stats = TrainStats(
        engine="loop",
        autocast=case.compute_dtype if autocast_dtype is not None else NO_AUTOCAST,
        grad_scaler=scaler is not None,
        scaler_skipped_steps=0 if scaler is not None else None,
        params_on_in_training=params_device(model),
        trained_dtypes=trainable_dtypes(model),
    )
    if on_start is not None:
        on_start(stats)
    clock = StepClock(plan, case, device, stats)
    try:
        _train_steps(model, case, batches, device, on_step, clock, optimizer, scheduler, scaler)
    finally:
        clock.close()
    if scaler is not None:
        stats.scaler_final_scale = float(scaler.get_scale())
    stats.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    stats.trained_dtypes = trainable_dtypes(model)
    return stats


def _train_steps(
    model: torch.nn.Module,
    case: Case,
    batches: Sequence[torch.Tensor],
    device: str,
    on_step: OnStep | None,
    clock: StepClock,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """The optimizer steps, until the clock is done or a step is non-finite."""
    params = trainable_parameters(model)
    autocast_dtype = _AUTOCAST_DTYPES.get(case.compute_dtype)
    stats = clock.stats
    step = 0
    while not clock.done:
        clock.begin_step()
        synchronize(device)
        start = time.perf_counter()
        step_loss = torch.zeros((), device=device)
        for micro in range(case.grad_accum):
            ids = batches[step * case.grad_accum + micro].to(device, non_blocking=True)
            with _autocast(device, autocast_dtype):
                loss = model(input_ids=ids, labels=ids).loss / case.grad_accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
            step_loss += loss.detach().float()
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip (and measure) the true gradients, not the scaled ones
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm=MAX_GRAD_NORM))
        loss_value = float(step_loss)
        skipped = False
        if scaler is not None:
            # Stepped even after a non-finite loss, as Trainer does: the scaler skips and counts it.
            scale_before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            # The scaler lowers its scale exactly when it skipped the step (as accelerate tells).
            skipped = scaler.get_scale() < scale_before
        elif not is_nonfinite(loss_value, grad_norm, grad_scaler=False):
            optimizer.step()
        if not skipped:
            scheduler.step()  # as Trainer: a skipped step does not advance the schedule
        optimizer.zero_grad(set_to_none=True)
        clock.pad_step()
        synchronize(device)
        measured = clock.end_step((time.perf_counter() - start) * 1000.0)
        stop = stats.record_step(step, loss_value, grad_norm, measured, skipped)
        if on_step is not None:
            on_step(step, stats)
        if stop:
            break
        step += 1


def _autocast(device: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)
