"""Weights by precision: the weights model loaded only (FP32, FP16, BF16, INT8, NF4/FP4 with and
without double quantization), its weight bytes and the device after the load, and LoRA trained
over its INT8 weights (that precision's training total); and the parameter counts of the
lesson's models, from their architectures instantiated without weights."""

from qlora_core.cases.case import LESSON_TARGET_MODULES
from qlora_core.measurement import memory
from qlora_core.models.registry import COUNTED_MODELS, PARAM_COUNTS_TABLE
from qlora_plugin.checks import (
    assert_adapters_only_train,
    assert_memory_consistent,
    assert_weights_consistent,
)

FAMILY = "weights"
LESSON_LORA_R = 16  # the lesson's LoraConfig (r=16 on the seven projections)


def test_case(case_result):
    if case_result.case["load_only"]:
        assert_weights_consistent(case_result)
    else:
        assert_memory_consistent(case_result)
        assert_adapters_only_train(case_result)


def test_parameter_counts(bench_session):
    """On every tier: no weights, no GPU, seconds (print-trainable-3b reads this table)."""
    rows = [
        memory.empty_weight_counts(model, LESSON_LORA_R, LESSON_TARGET_MODULES) for model in COUNTED_MODELS
    ]
    bench_session.record_measurement(PARAM_COUNTS_TABLE, rows)
    for row in rows:
        assert 0 < row["trainable_params"] < row["total_params"]
        assert row["total_params"] == row["base_params"] + row["trainable_params"]
