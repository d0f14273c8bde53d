"""Hand-made rows for the report tests, built through the real `Case` / `Result` schema.

`make_result(model=..., families=..., status=..., **fields)` splits its keyword arguments into
Case fields and Result fields, so a row is written the way the runner writes it. `make_run`
turns Results (and measurement tables) into `RunData` through `reports.run.frame.results_frame`;
`write_run_dir` writes them as a run folder. The column builders (`weights`, `params`, `gpu`,
`memory`, `training`, `needed`) return a row's fields by theme. Tests reach them through the
`build` fixture (tests/reports/conftest.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from qlora_core.cases.case import FIELD_NAMES, LESSON_TARGET_MODULES, Case
from qlora_core.measurement.result import RESULT_FIELDS, Result
from qlora_core.models import REAL_MODEL
from qlora_core.models import SHAPES as MODEL_SHAPES
from reports.claims.lora_config import lora_param_count
from reports.run.folder import ENVIRONMENT_JSON, MEASUREMENTS_DIR, RESULTS_JSONL
from reports.run.frame import RunData, results_frame

GIB = 2**30

# The code books bitsandbytes 0.50 returns from functional.get_4bit_type (rounded): test inputs.
NF4_CODES = [
    -1.0, -0.696193, -0.525073, -0.394917, -0.284441, -0.184773, -0.09105, 0.0,
    0.07958, 0.16093, 0.246112, 0.337915, 0.44071, 0.562617, 0.722957, 1.0,
]  # fmt: skip
FP4_CODES = [
    0.0, 0.005208, 0.666667, 1.0, 0.333333, 0.5, 0.166667, 0.25,
    0.0, -0.005208, -0.666667, -1.0, -0.333333, -0.5, -0.166667, -0.25,
]  # fmt: skip

# Parameter counts of the shapes (qlora_core.models.SHAPES) and LoRA r=16 on the seven projections;
# the real model has the smollm2-135m shape.
_SHAPE_OF = {
    "llama-3.2-3b": "llama-3.2-3b",
    "llama-3.1-8b": "llama-3.1-8b",
    "mistral-7b": "mistral-7b",
    REAL_MODEL: "smollm2-135m",
}
SHAPES: dict[str, dict[str, int]] = {
    model: {
        "base": MODEL_SHAPES[shape].total_params,
        "linear": MODEL_SHAPES[shape].linear_params,
        "lora": lora_param_count(shape, 16, LESSON_TARGET_MODULES),
    }
    for model, shape in _SHAPE_OF.items()
}


def make_result(
    model: str = "llama-3.2-3b",
    *,
    families: str = "",
    status: str = "ok",
    profile: str = "t4",
    **fields: Any,
) -> Result:
    """One Result row: Case fields go to the Case, every other keyword to the Result."""
    case_kwargs = {k: fields.pop(k) for k in list(fields) if k in FIELD_NAMES}
    case = Case(model=model, **case_kwargs)
    result = Result.for_case(case, profile, families=families)
    result.status = status
    unknown = [k for k in fields if k not in RESULT_FIELDS]
    assert not unknown, f"not Result fields: {unknown}"
    result.set_fields(fields)
    return result


def make_run(
    results: Iterable[Result],
    measurements: dict[str, list[dict[str, Any]]] | None = None,
    environment: dict[str, Any] | None = None,
) -> RunData:
    """RunData from Results (and measurement rows), as `load_run` would build it."""
    tables = {name: pd.DataFrame(rows) for name, rows in (measurements or {}).items()}
    return RunData(results_frame(list(results)), tables, environment or {})


def weights(model: str, quant: str = "nf4", dq: bool = True) -> dict[str, Any]:
    """Byte columns of a model as 4-bit (nf4/fp4, with or without double quant) or 16-bit."""
    s = SHAPES[model]
    if quant == "none":
        return {"weight_bytes": s["base"] * 2, "quantized_params": 0}
    data = s["linear"] // 2
    stats = s["linear"] // 64 + s["linear"] // 64 // 256 * 4 if dq else s["linear"] // 64 * 4
    rest = (s["base"] - s["linear"]) * 2
    return {
        "weight_bytes": data + stats + rest,
        "quant_data_bytes": data,
        "quant_stats_bytes": stats,
        "quantized_params": s["linear"],
    }


def params(model: str, trainable_dtypes: str = "float32") -> dict[str, Any]:
    s = SHAPES[model]
    return {
        "total_params": s["base"] + s["lora"],
        "trainable_params": s["lora"],
        "trainable_dtypes": trainable_dtypes,
    }


def gpu(emulated: bool = True) -> dict[str, Any]:
    """Device columns of a T4 profile run, emulated on an H200 or on a real T4."""
    if emulated:
        return {
            "device": "cuda",
            "gpu_name": "NVIDIA H200",
            "gpu_capability": "9.0",
            "emulated": True,
            "emulated_on": "NVIDIA H200",
            "bf16_native": False,
            "bf16_torch_supported": True,
        }
    return {
        "device": "cuda",
        "gpu_name": "Tesla T4",
        "gpu_capability": "7.5",
        "bf16_native": False,
        "bf16_torch_supported": True,
    }


def memory(load: float, prepare: float, lora: float, peak: float, nvml_extra: float = 0.6) -> dict[str, Any]:
    """Stage memory columns (GiB); reserved a little above allocated, NVML above reserved."""
    return {
        "load_alloc_gib": load,
        "load_reserved_gib": load + 0.1,
        "prepare_alloc_gib": prepare,
        "prepare_reserved_gib": prepare + 0.1,
        "lora_alloc_gib": lora,
        "lora_reserved_gib": lora + 0.1,
        "peak_alloc_gib": peak,
        "peak_reserved_gib": peak + 0.3,
        "nvml_base_gib": 0.5,
        "nvml_peak_gib": peak + 0.3 + nvml_extra + 0.5,
    }


def training(tokens_per_s: float, losses: list[float] | None = None, spread: float = 0.04) -> dict[str, Any]:
    losses = losses or [2.5, 2.2, 2.0, 1.9]
    return {
        "tokens_per_s": tokens_per_s,
        "step_ms_spread": spread,
        "losses": losses,
        "first_loss": losses[0],
        "final_loss": losses[-1],
    }


def in_processes(result: Result, tokens_per_s: Iterable[float]) -> list[Result]:
    """`result` as run in one fresh process per value (`--repeat N`), each its own tokens/s."""
    return [result.replaced(repeat=i, tokens_per_s=tps) for i, tps in enumerate(tokens_per_s)]


STABILITY_STEPS = 10
"""Steps of a finite stability row: more than the claims' mean of the last 8 losses needs."""


def stability_row(dtype: str, lr: float, final: float | None, **fields: Any) -> Result:
    """A stability-family row of the real model that trained `STABILITY_STEPS` steps and ended
    at `final` (its last losses all `final`, so their mean is `final` too), or NaN at step 1
    (`final` None)."""
    status = "nan" if final is None else "ok"
    losses = [3.0, float("nan")] if final is None else [3.0] + [final] * (STABILITY_STEPS - 1)
    extra = {"first_nonfinite_step": 1} if final is None else {}
    text = {"data": "text", "batch_size": 2, "seq_len": 64, "compute_dtype": dtype}
    text.update((k, fields.pop(k)) for k in list(fields) if k in text)
    return make_result(
        "smollm2-135m-instruct",
        families="stability",
        status=status,
        lr=lr,
        **text,
        **training(900.0, losses),
        **extra,
        **fields,
    )


def quant_codes_rows() -> list[dict[str, Any]]:
    return [
        {"quant_type": q, "index": i, "value": v}
        for q, c in (("nf4", NF4_CODES), ("fp4", FP4_CODES))
        for i, v in enumerate(c)
    ]


def quant_state_rows(dq_bits: int = 8) -> list[dict[str, Any]]:
    return [
        {"double_quant": False, "blocksize": 64, "absmax_dtype": "float32", "absmax_bits": 32,
         "nested_absmax_dtype": "", "nested_blocksize": None},
        {"double_quant": True, "blocksize": 64, "absmax_dtype": "uint8" if dq_bits == 8 else "int4",
         "absmax_bits": dq_bits, "nested_absmax_dtype": "float32", "nested_blocksize": 256},
    ]  # fmt: skip


def quant_error_rows(nf4: float = 0.09, fp4: float = 0.11) -> list[dict[str, Any]]:
    rows = []
    for layer, scale in (("q_proj", 1.0), ("k_proj", 1.05), ("down_proj", 0.95)):
        for quant, err in (("nf4", nf4), ("fp4", fp4)):
            for dq in (False, True):
                rows.append(
                    {
                        "layer": layer,
                        "quant_type": quant,
                        "double_quant": dq,
                        "rel_error": err * scale,
                        "numel": 1000,
                    }
                )
    return rows


def write_run_dir(
    run_dir: Path,
    results: Iterable[Result],
    measurements: dict[str, list[dict[str, Any]]] | None = None,
    environment: dict[str, Any] | None = None,
) -> Path:
    """A run folder as `pytest bench` writes it: results.jsonl, environment.json, measurements/."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULTS_JSONL).write_text("".join(r.to_json() + "\n" for r in results))
    if environment is not None:
        (run_dir / ENVIRONMENT_JSON).write_text(json.dumps(environment))
    for name, rows in (measurements or {}).items():
        (run_dir / MEASUREMENTS_DIR).mkdir(exist_ok=True)
        pd.DataFrame(rows).to_csv(run_dir / MEASUREMENTS_DIR / f"{name}.csv", index=False)
    return run_dir


def pick(evaluations: list[Any], needle: str = "") -> Any:
    """The one evaluation whose condition contains `needle` (all of them must be unique)."""
    found = [e for e in evaluations if needle in e.condition]
    assert len(found) == 1, f"{len(found)} evaluations with {needle!r}: {[e.condition for e in evaluations]}"
    return found[0]


def verdicts(evaluations: list[Any]) -> list[str]:
    return [e.verdict.value for e in evaluations]


def needed(peak: float, device_peak: float, status: str = "ok") -> dict[str, Any]:
    """The needed_* columns an uncapped rerun on an H200 folds into a row that ran out of memory
    under the T4 cap (qlora_core.process.oom_need): training peak `peak`, NVML device peak `device_peak`
    (GiB, over a 0.6 GiB base), the LoRA stage at 7.36 GiB, 8-bit Adam's 40 MB of states."""
    return {
        "memory_cap_gib": 14.49,
        "needed_status": status,
        "needed_on": "NVIDIA H200",
        "needed_lora_alloc_gib": 7.36,
        "needed_peak_alloc_gib": peak,
        "needed_peak_reserved_gib": peak + 0.4,
        "needed_nvml_base_gib": 0.6,
        "needed_nvml_peak_gib": 0.6 + device_peak,
        "needed_optimizer_state_bytes": 40_000_000,
    }
