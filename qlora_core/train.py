"""Where the runner's child finds training until it calls `qlora_core.engines` itself.

The loop, Trainer and SFTTrainer engines live in `qlora_core.engines`; this module only keeps
the child's `train.train(...)` / `train.TrainStats` names working. Delete it when the child
imports `qlora_core.engines.run_training`.
"""

from __future__ import annotations

from qlora_core.engines import TrainStats
from qlora_core.engines import run_training as train

__all__ = ["TrainStats", "train"]
