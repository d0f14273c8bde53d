"""Training engines: how a case trains, one contract whichever engine runs it.

`run_training(model, case, batches, device, on_step, plan, on_start)` trains a prepared LoRA model
with the engine `case.engine` names (`loop`, `trainer`, `sft`) and returns `TrainStats`.
Its batches come from `engines.data` (synthetic, or real text with a held-out tail).
See docs/engines.md#the-engine-contract.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qlora_core.cases.case import ENGINES, Case
from qlora_core.engines.common import OnStart, OnStep, TrainStats
from qlora_core.engines.loop import run_loop
from qlora_core.engines.pacing import StepPlan, plan_steps

__all__ = ["ENGINES", "OnStart", "OnStep", "StepPlan", "TrainStats", "plan_steps", "run_training"]


def run_training(
    model: torch.nn.Module,
    case: Case,
    batches: Sequence[torch.Tensor],
    device: str,
    on_step: OnStep | None = None,
    plan: StepPlan | None = None,
    on_start: OnStart | None = None,
) -> TrainStats:
    """Train `model` on `batches` with the engine of `case` (see the module docstring), step by
    step as `plan` says (default `plan_steps(case, device)`: adaptive and profiled on CUDA);
    `on_step` after every step, `on_start` once before the first."""
    plan = plan or plan_steps(case, device)
    if case.engine == "loop":
        return run_loop(model, case, batches, device, on_step, plan, on_start)
    # Imported only here: transformers' Trainer, TRL and datasets are heavy.
    from qlora_core.engines import hf

    if case.engine == "trainer":
        return hf.run_trainer(model, case, batches, device, on_step, plan, on_start)
    if case.engine == "sft":
        return hf.run_sft(model, case, batches, device, on_step, plan, on_start)
    raise ValueError(f"engine={case.engine!r} is not one of {list(ENGINES)}")
