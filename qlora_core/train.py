"""The training loop: per-step loss, grad norm, NaN/Inf detection, synchronized step times.

One *step* is one optimizer step over `grad_accum` micro-batches. Warm-up steps run first and
are excluded from timing (kernels compile, the allocator grows); measured steps are each timed
between two device synchronizations. A non-finite loss or gradient norm stops training at once
and is recorded as the first bad step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from qlora_core.spec import Case


@dataclass
class TrainStats:
    step_ms: list[float] = field(default_factory=list)  # measured steps only
    losses: list[float] = field(default_factory=list)  # every step
    grad_norms: list[float] = field(default_factory=list)  # every step
    first_nonfinite_step: int | None = None
    optimizer_state_bytes: int = 0

    @property
    def diverged(self) -> bool:
        return self.first_nonfinite_step is not None


def make_optimizer(model: torch.nn.Module, case: Case) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: LoRA target_modules matched nothing")
    if case.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=case.lr)
    import bitsandbytes as bnb

    if case.optimizer == "adamw_8bit":
        return bnb.optim.AdamW8bit(params, lr=case.lr)
    if case.optimizer == "paged_adamw_8bit":
        return bnb.optim.PagedAdamW8bit(params, lr=case.lr)
    raise ValueError(f"optimizer={case.optimizer!r} is not one of adamw, adamw_8bit, paged_adamw_8bit")


def _synchronize(device: str) -> None:
    # The CPU-GPU sync point that makes a wall-clock step time mean the GPU's time.
    if device == "cuda":
        torch.cuda.synchronize()


def lr_at(step: int, case: Case) -> float:
    """Linear warm-up over the warm-up steps, then constant: a short, stable schedule."""
    if case.warmup_steps and step < case.warmup_steps:
        return case.lr * (step + 1) / (case.warmup_steps + 1)
    return case.lr


def train(
    model: torch.nn.Module,
    case: Case,
    batches: Sequence[torch.Tensor],
    device: str,
    on_step: Callable[[int, TrainStats], None] | None = None,
) -> TrainStats:
    """Run warm-up + measured steps over `batches` ((warmup+measured) * grad_accum of them)."""
    total_steps = case.warmup_steps + case.measured_steps
    needed = total_steps * case.grad_accum
    if len(batches) < needed:
        raise ValueError(f"train needs {needed} micro-batches, got {len(batches)}")
    # from_pretrained returns eval mode; transformers applies checkpointing only in training.
    model.train()
    optimizer = make_optimizer(model, case)
    params = [p for p in model.parameters() if p.requires_grad]
    stats = TrainStats()
    for step in range(total_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, case)
        _synchronize(device)
        start = time.perf_counter()
        step_loss = 0.0
        for micro in range(case.grad_accum):
            ids = batches[step * case.grad_accum + micro].to(device, non_blocking=True)
            loss = model(input_ids=ids, labels=ids).loss / case.grad_accum
            loss.backward()
            step_loss += float(loss.detach())
        # Total norm without clipping (max_norm=inf): a measurement, not a change to training.
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm=math.inf))
        finite = math.isfinite(step_loss) and math.isfinite(grad_norm)
        if finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _synchronize(device)
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        stats.losses.append(step_loss)
        stats.grad_norms.append(grad_norm)
        if step >= case.warmup_steps:
            stats.step_ms.append(elapsed_ms)
        if on_step is not None:
            on_step(step, stats)
        if not finite:
            stats.first_nonfinite_step = step
            break
    stats.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    return stats


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer keeps (moments; 8-bit states and their scales)."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )
