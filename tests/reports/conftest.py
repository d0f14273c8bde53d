"""Hand-made runs for the report tests, built through the real `Case` / `Result` schema.

`make_result(model=..., families=..., status=..., **fields)` splits its keyword arguments into
Case fields and Result fields, so a row is written the way the runner writes it. `make_run`
turns Results (and measurement tables) into `RunData` through `reports.run.frame.results_frame`.
`synthetic_results()` is a plausible T4 run (emulated on an H200) over every matrix family; the
numbers are test inputs shaped like real measurements, not measurements.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

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


def synthetic_results(emulated: bool = True) -> list[Result]:
    """A T4 run over every family (3B primary, 8B ladder/compat, 135M quality and stability)."""
    dev = gpu(emulated)
    three = {**params("llama-3.2-3b"), **dev}
    lesson = {"compute_dtype": "fp16", "batch_size": 1, "seq_len": 512}
    out: list[Result] = []

    def add(model: str, families: str, status: str = "ok", **fields: Any) -> None:
        out.append(make_result(model, families=families, status=status, **fields))

    # factorial (nf4/fp4 x dq x fp16/bf16) at the lesson point; the lesson row serves many families
    for quant in ("nf4", "fp4"):
        for dq in (True, False):
            for dtype in ("fp16", "bf16"):
                tags = "factorial"
                if (quant, dq, dtype) == ("nf4", True, "fp16"):
                    tags = "factorial,sweep,gc,prepare,compat"
                speed = 2000.0 * (0.97 if dq else 1.0) * (0.8 if dtype == "bf16" else 1.0)
                add(
                    "llama-3.2-3b",
                    tags,
                    quant_type=quant,
                    double_quant=dq,
                    compute_dtype=dtype,
                    batch_size=1,
                    seq_len=512,
                    **three,
                    **weights("llama-3.2-3b", quant, dq),
                    **memory(2.07, 2.8, 2.89, 3.6),
                    **training(speed),
                )
    # the rest of the sweep and the 16-bit reference at every sweep point
    sweep_peaks = {(1, 512): 3.6, (1, 2048): 4.9, (4, 512): 4.6, (4, 2048): 9.5}
    for (b, s), peak in sweep_peaks.items():
        if (b, s) != (1, 512):
            add(
                "llama-3.2-3b",
                "sweep",
                batch_size=b,
                seq_len=s,
                compute_dtype="fp16",
                **three,
                **weights("llama-3.2-3b"),
                **memory(2.07, 2.8, 2.89, peak),
                **training(2000.0 * b * s / 512),
            )
        add(
            "llama-3.2-3b",
            "reference" + (",compat" if (b, s) == (1, 512) else ""),
            quant_type="none",
            compute_dtype="fp16",
            batch_size=b,
            seq_len=s,
            **three,
            **weights("llama-3.2-3b", "none"),
            **memory(5.98, 5.98, 6.07, 6.07 + peak - 2.89),
            **training(2500.0 * b * s / 512),
        )
    add(
        "llama-3.2-3b",
        "fp32",
        compute_dtype="fp32",
        **{k: v for k, v in lesson.items() if k != "compute_dtype"},
        **three,
        **weights("llama-3.2-3b"),
        **memory(2.07, 2.8, 2.89, 4.4),
        **training(700.0),
    )
    add(
        "llama-3.2-3b",
        "gc",
        gradient_checkpointing=False,
        **lesson,
        **three,
        **weights("llama-3.2-3b"),
        **memory(2.07, 2.8, 2.89, 5.2),
        **training(2600.0),
    )
    add(
        "llama-3.2-3b",
        "prepare",
        prepare_kbit=False,
        **lesson,
        **three,
        **weights("llama-3.2-3b"),
        **memory(2.07, 2.07, 2.16, 3.0),
        **training(2300.0),
    )
    # the OOM ladder on the 8B shape (8-bit Adam, no checkpointing at the start)
    eight = {**params("llama-3.1-8b"), **dev, **weights("llama-3.1-8b")}
    ladder = {
        "quant_type": "nf4",
        "compute_dtype": "fp16",
        "optimizer": "adamw_8bit",
        "seq_len": 2048,
        "gradient_checkpointing": False,
        "warmup_steps": 2,
        "measured_steps": 4,
    }
    steps = [
        ({"batch_size": 4}, "oom", None),
        ({"batch_size": 2, "grad_accum": 2}, "oom", None),
        ({"batch_size": 1, "grad_accum": 4}, "ok", 13.1),
        ({"batch_size": 1, "grad_accum": 4, "seq_len": 1024}, "ok", 10.4),
        ({"batch_size": 1, "grad_accum": 4, "seq_len": 1024, "gradient_checkpointing": True}, "ok", 8.0),
    ]
    for k, (change, status, peak) in enumerate(steps):
        stage = (
            memory(5.3, 7.2, 7.36, peak)
            if peak
            else {
                "load_alloc_gib": 5.3,
                "prepare_alloc_gib": 7.2,
                "lora_alloc_gib": 7.36,
                "nvml_base_gib": 0.5,
            }
        )
        add(
            "llama-3.1-8b",
            f"ladder:{k}",
            status,
            **{**ladder, **change},
            **eight,
            **stage,
            **(training(900.0) if peak else {}),
        )
    # compat: the 8B as QLoRA and as 16-bit LoRA at the smallest point
    add("llama-3.1-8b", "compat", **lesson, **eight, **memory(5.3, 7.2, 7.36, 8.1), **training(1100.0))
    add("llama-3.1-8b", "compat", "oom", quant_type="none", **lesson, **dev, reason="CUDA out of memory")
    # quality and stability on the real model (text)
    text = {
        "model": "smollm2-135m-instruct",
        "data": "text",
        "batch_size": 2,
        "seq_len": 64,
        "compute_dtype": "fp16",
        "warmup_steps": 0,
        "measured_steps": 20,
    }
    small = {**params("smollm2-135m-instruct"), **dev}
    ppl = {
        ("nf4", True): (21.0, 17.2),
        ("nf4", False): (20.9, 17.1),
        ("fp4", True): (24.0, 19.0),
        ("fp4", False): (23.8, 18.9),
    }
    for (quant, dq), (before, after) in ppl.items():
        out.append(
            make_result(
                # the matrix's lesson text case serves both families (one case, one row)
                families="quality,stability" if (quant, dq) == ("nf4", True) else "quality",
                quant_type=quant,
                double_quant=dq,
                **text,
                **small,
                **weights("smollm2-135m-instruct", quant, dq),
                ppl_before=before,
                ppl_after=after,
                **training(
                    9000.0,
                    [3.4, 3.1 + (quant == "fp4") * 0.05, 2.95 - dq * 0.03, 2.9 + (quant == "fp4") * 0.2],
                ),
            )
        )
    out.append(
        make_result(
            families="quality",
            quant_type="none",
            **text,
            **small,
            **weights("smollm2-135m-instruct", "none"),
            ppl_before=19.5,
            ppl_after=16.6,
            **training(12000.0, [3.3, 3.0, 2.8, 2.7]),
        )
    )
    for dtype in ("fp16", "bf16"):
        for lr in (1e-4, 2e-4, 1e-3):
            if (dtype, lr) == ("fp16", 2e-4):
                continue  # the quality family's nf4+dq row
            nan = dtype == "fp16" and lr == 1e-3
            losses = [3.4, 3.2, float("nan")] if nan else [3.4, 3.1, 2.9 - (dtype == "bf16") * 0.1]
            fields = {**text, "compute_dtype": dtype, "lr": lr, **small, **training(9000.0, losses)}
            if nan:
                fields["first_nonfinite_step"] = 2
            out.append(make_result(families="stability", status="nan" if nan else "ok", **fields))
    return out


def synthetic_environment(emulated: bool = True) -> dict[str, Any]:
    return {
        "profile": "t4",
        "matrix": "default",
        "gpu_present": "NVIDIA H200" if emulated else "Tesla T4",
        "emulated": emulated,
        "emulated_on": "NVIDIA H200" if emulated else None,
        "torch_version": "2.11.0+cu128",
        "cuda_version": "12.8",
        "transformers_version": "5.24.0",
        "peft_version": "0.21.2",
        "bitsandbytes_version": "0.50.2",
    }


def synthetic_measurements() -> dict[str, list[dict[str, Any]]]:
    return {
        "quant_codes": quant_codes_rows(),
        "quant_state_layout": quant_state_rows(),
        "quant_error": quant_error_rows(),
    }


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


@pytest.fixture
def build() -> SimpleNamespace:
    """The row and run builders of this module, for tests (conftest is not imported directly)."""
    return SimpleNamespace(
        result=make_result,
        run=make_run,
        weights=weights,
        params=params,
        gpu=gpu,
        memory=memory,
        needed=needed,
        training=training,
        in_processes=in_processes,
        stability=stability_row,
        quant_codes=quant_codes_rows,
        quant_state=quant_state_rows,
        quant_error=quant_error_rows,
        synthetic_results=synthetic_results,
        synthetic_measurements=synthetic_measurements,
        synthetic_environment=synthetic_environment,
        write_run_dir=write_run_dir,
        shapes=SHAPES,
        nf4_codes=NF4_CODES,
        fp4_codes=FP4_CODES,
        pick=pick,
        verdicts=verdicts,
    )


@pytest.fixture
def synthetic_run() -> RunData:
    """The synthetic T4 run as RunData."""
    return make_run(synthetic_results(), synthetic_measurements(), synthetic_environment())


@pytest.fixture
def synthetic_run_dir(tmp_path: Path) -> Path:
    """The synthetic T4 run written as a run folder."""
    return write_run_dir(
        tmp_path / "t4-default-run", synthetic_results(), synthetic_measurements(), synthetic_environment()
    )
