"""The child's stages, in order (`qlora_core.process.child` runs one function per stage).

No imports: the checkpointer checks the stage it enters against this list, and the test-only
faults (`qlora_core.process.faults`) name the stage they fire at from it.
"""

from __future__ import annotations

STAGES: tuple[str, ...] = (
    "start-up",
    "model creation",  # CUDA only: a shape's checkpoint is built in a process of its own
    "model resolution",
    "load",
    "prepare",
    "LoRA",
    "data",
    "perplexity before training",  # data == "text" only
    "training",
    "perplexity after training",  # data == "text" only
)
"""The child's stages, in order; its Result is written as each one starts."""
