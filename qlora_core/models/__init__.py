"""Model sources, one module per job: `registry` (the names a Case may use; no torch), `cache`
(build each artifact once), `shapes` (random-init checkpoints), `real` (SmolLM2-135M-Instruct,
GGUF -> safetensors), `prequantized` (4-bit checkpoints built layer by layer), `resolve`
(`resolve_model(name)` -> where to load it from) and `load` (4-bit load -> prepare -> LoRA).

The registry's names are re-exported here; the heavier ones import from their modules, so that
reading a model name never loads the ML stack.
"""

from qlora_core.models.registry import (
    REAL_MODEL,
    REAL_MODEL_WHEEL,
    SHAPES,
    ModelUnavailableError,
    Prequant,
    ShapeSpec,
    model_problem,
)

__all__ = [
    "REAL_MODEL",
    "REAL_MODEL_WHEEL",
    "SHAPES",
    "ModelUnavailableError",
    "Prequant",
    "ShapeSpec",
    "model_problem",
]
