"""The 4-bit formats measured in-process, after every case (they run last, beside the kernels): the
code tables and scaling-factor layout bitsandbytes really uses, and the reconstruction error of
every decoder projection of the real model, NF4 vs FP4, on the device the profile runs on.

Last, because on a GPU the session's own process then touches the device: before the cases, that
would put a CUDA context of its own beside theirs for the rest of the session. On the CPU, where
they once ran before the memory families, these measurements sat between two cases of the t4
tier for ~75 s of its sitting on the H200's host."""

import math

import pytest

from qlora_core.cases.case import LESSON_TARGET_MODULES
from qlora_core.measurement import quantization


def _device(bench_session) -> str:
    return "cuda" if bench_session.options.profile.is_gpu else "cpu"


def test_code_tables(bench_session):
    rows = quantization.code_tables(_device(bench_session))
    bench_session.record_measurement("quant_codes", rows)
    for quant in quantization.QUANT_TYPES_4BIT:
        values = [r["value"] for r in rows if r["quant_type"] == quant]
        assert len(values) == 16
        assert max(abs(v) for v in values) == pytest.approx(1.0)


def test_quant_state_layout(bench_session):
    rows = quantization.quant_state_layout(_device(bench_session))
    bench_session.record_measurement("quant_state_layout", rows)
    by_dq = {r["double_quant"]: r for r in rows}
    assert by_dq[True]["stats_bits_per_param"] < by_dq[False]["stats_bits_per_param"]


def test_reconstruction_error(bench_session):
    """Every decoder projection of the real model, quantized and restored, NF4 vs FP4."""
    import torch
    from transformers import AutoModelForCausalLM

    from qlora_core.models import REAL_MODEL
    from qlora_core.models.resolve import resolve_model

    resolved = resolve_model(REAL_MODEL, device="cpu")
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.bfloat16)
    weights = quantization.linear_weights(model, LESSON_TARGET_MODULES)
    assert weights, "no projection weights found in the real model"
    rows = quantization.reconstruction_errors(weights, _device(bench_session))
    bench_session.record_measurement("quant_error", rows)
    assert all(math.isfinite(r["rel_error"]) and r["rel_error"] > 0 for r in rows)
