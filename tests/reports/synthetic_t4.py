"""`synthetic_results()`: a plausible T4 run (emulated on an H200) over every matrix family, with
its environment and measurement tables; the numbers are test inputs shaped like real
measurements, not measurements."""

from __future__ import annotations

from typing import Any

from qlora_core.measurement.result import Result
from tests.reports.report_builders import (
    gpu,
    make_result,
    memory,
    params,
    quant_codes_rows,
    quant_error_rows,
    quant_state_rows,
    training,
    weights,
)


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
