"""Quality: perplexity on held-out real text of the real model quantized as NF4 and FP4 (with and
without double quantization) and in 16-bit; per-layer weight reconstruction error NF4 vs FP4;
the code tables and scaling-factor layout bitsandbytes really uses."""

import math

import pytest

from qlora_core import quantization
from qlora_core.spec import LESSON_TARGET_MODULES

FAMILY = "quality"


def test_case(case_result):
    assert case_result.ppl_before is not None and math.isfinite(case_result.ppl_before)
    assert case_result.ppl_after is not None and math.isfinite(case_result.ppl_after)
    assert case_result.ppl_before > 1.0


def test_code_tables(bench_session):
    rows = quantization.code_tables()
    bench_session.record_measurement("quant_codes", rows)
    for quant in quantization.QUANT_TYPES_4BIT:
        values = [r["value"] for r in rows if r["quant_type"] == quant]
        assert len(values) == 16
        assert max(abs(v) for v in values) == pytest.approx(1.0)


def test_quant_state_layout(bench_session):
    rows = quantization.quant_state_layout()
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
    rows = quantization.reconstruction_errors(weights)
    bench_session.record_measurement("quant_error", rows)
    assert all(math.isfinite(r["rel_error"]) and r["rel_error"] > 0 for r in rows)
