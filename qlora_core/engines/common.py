"""What every engine shares: the statistics it returns, the training settings all engines use
alike, and the rule that decides when a step is non-finite.

One *step* is one optimizer step over `grad_accum` micro-batches. Warm-up steps run first and
are excluded from timing (kernels compile, the allocator grows); measured steps are each timed
between two device synchronizations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qlora_core.cases.case import Case

# Training settings every engine uses alike, so that a case trains the same way whichever engine
# runs it. Each equals what `TrainingArguments` gives a reader who does not set it (a test pins
# that), and the trainer engines pass them explicitly all the same.
MAX_GRAD_NORM = 1.0
"""Gradients are clipped to this total norm (after unscaling, under a gradient scaler)."""
WEIGHT_DECAY = 0.0
LR_SCHEDULER = "constant_with_warmup"
"""transformers' schedule name: linear from 0 over `warmup_steps`, then constant at `lr`."""
NO_AUTOCAST = "none"


@dataclass
class TrainStats:
    """What one engine measured while training a case. Same fields, whichever engine."""

    engine: str
    autocast: str
    """The dtype forward and loss ran under torch.autocast ('bf16', 'fp16'), or 'none'."""
    grad_scaler: bool
    """True when an fp16 gradient scaler scaled the loss (and skipped overflowing steps)."""
    step_ms: list[float] = field(default_factory=list)  # measured steps only
    losses: list[float] = field(default_factory=list)  # every step
    grad_norms: list[float] = field(default_factory=list)  # every step, before clipping
    first_nonfinite_step: int | None = None
    optimizer_state_bytes: int = 0
    scaler_skipped_steps: int | None = None
    """Optimizer steps the scaler skipped (gradients overflowed); None without a scaler."""
    scaler_final_scale: float | None = None
    """The scaler's loss scale after the last step; None without a scaler."""
    trained_dtypes: str = ""
    """dtypes of the trainable parameters as trained (an engine may cast the adapters)."""
    params_on_in_training: str = ""
    """Where the parameters were once the engine had wrapped the model, before its first step
    (`measure.params_device`): "cpu" shows FSDP's CPU offload in effect, not only configured."""
    # Speed (engines.pacing, engines.devicetime, engines.slowdown); None: not measured.
    stop_reason: str | None = None
    """Why measuring stopped: "target", "budget", "cap" (adaptive) or "fixed" (pacing)."""
    kernel_ms_per_step: float | None = None
    kernels_per_step: float | None = None
    comm_ms_per_step: float | None = None
    gpu_busy: float | None = None
    host_bound: bool | None = None
    profiled_steps: int = 0
    """Optimizer steps run under the profiler after the measured ones (in `losses`, not timed)."""
    slowdown_ms_per_step: float | None = None
    """Device work the test-only slowdown knob added to each step after warm-up, as calibrated: kernel
    time where the run profiles it (CUDA), wall time on the CPU (`engines.slowdown`)."""
    warmup_s: float | None = None
    train_s: float | None = None
    """Seconds of the measured steps (from the end of warm-up to the last measured step)."""
    profile_s: float | None = None

    @property
    def diverged(self) -> bool:
        return self.first_nonfinite_step is not None

    def result_fields(self) -> dict[str, Any]:
        """The measurements under their `Result` field names (every field but `engine`, which
        the row already has as the case's field)."""
        out = dataclasses.asdict(self)
        del out["engine"]
        return out

    def start_fields(self) -> dict[str, Any]:
        """What is known before the first step, under its `Result` names: the mixed precision and
        the trainable parameters' dtypes as the engine built them (`OnStart`)."""
        return {name: getattr(self, name) for name in ("autocast", "grad_scaler", "trained_dtypes")}

    def record_step(
        self, step: int, loss: float, grad_norm: float, step_ms: float | None, skipped: bool
    ) -> bool:
        """Append one optimizer step; True when it is non-finite (training stops there)."""
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        if step_ms is not None:
            self.step_ms.append(step_ms)
        if skipped:
            self.scaler_skipped_steps = (self.scaler_skipped_steps or 0) + 1
        if is_nonfinite(loss, grad_norm, self.grad_scaler):
            self.first_nonfinite_step = step
            return True
        return False


OnStep = Callable[[int, TrainStats], None]
"""Called after every recorded step with its index and the statistics so far."""
OnStart = Callable[[TrainStats], None]
"""Called once before the first step, with what the engine will train with (mixed precision,
the trainable parameters' dtypes as built): a run that fails in training keeps them."""


def is_nonfinite(loss: float, grad_norm: float, grad_scaler: bool) -> bool:
    """Whether a step counts as non-finite (the lesson's "Loss: nan").

    A non-finite loss always does, scaler or not: the scaler must not hide what the NaN advice is
    about. A non-finite gradient norm does only without a scaler; with one it is an overflow of
    the scaled gradients, a step the scaler skips and counts, not a divergence.
    """
    if not math.isfinite(loss):
        return True
    return not grad_scaler and not math.isfinite(grad_norm)


def check_batches(case: Case, batches: Sequence[torch.Tensor], steps: int) -> None:
    """Fail before training when there are too few micro-batches for `steps` optimizer steps (a
    plan's `max_total_steps`) or one has the wrong shape."""
    needed = steps * case.grad_accum
    if len(batches) < needed:
        raise ValueError(f"training needs {needed} micro-batches, got {len(batches)}")
    shape = (case.batch_size, case.seq_len)
    bad = [i for i, ids in enumerate(batches[:needed]) if tuple(ids.shape) != shape]
    if bad:
        raise ValueError(f"micro-batches {bad[:5]} are not of shape {shape} (batch_size, seq_len)")


def synchronize(device: str) -> None:
    # The CPU-GPU sync point that makes a wall-clock step time mean the GPU's time.
    if device == "cuda":
        torch.cuda.synchronize()


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: LoRA target_modules matched nothing")
    return params


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer keeps (moments; 8-bit states and their scales)."""
    # accelerate wraps the optimizer a Trainer builds; the states live in the one it wraps.
    inner = getattr(optimizer, "optimizer", optimizer)
    return sum(
        value.numel() * value.element_size()
        for state in inner.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )
