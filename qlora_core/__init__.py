"""qlora_core: everything in qlora-bench that touches a model.

One frozen `Case` describes a run (`spec`), `runner.run_case` executes it in a fresh child
process and returns one flat `Result` row (`result`). The modules in between follow the recipe
under test: models -> load (4-bit + prepare + LoRA) -> train -> measure.
"""

__version__ = "0.1.0"
