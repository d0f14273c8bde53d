"""qlora_core: everything in qlora-bench that touches a model.

One frozen `Case` describes a run (`cases.case`), `process.runner.run_case` executes it in a fresh
child process and returns one flat `Result` row (`measurement.result`). The subpackages are the
layers: `cases` (what runs: the Case, GPU profiles, the matrix), `process` (the processes a case
runs in), `models` (where a model comes from, and `models.load`: 4-bit + prepare + LoRA),
`engines` (how it trains, on the batches of `engines.data`) and `measurement` (what a run
measures, and the row it records).
"""

__version__ = "0.1.0"
