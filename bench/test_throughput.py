"""Throughput: the lesson's four axes (nf4/fp4 x double quant x fp16/bf16) and fp32 compute;
tokens/s is the median over measured steps, warm-up excluded, each step synchronized."""

import math

from conftest import assert_memory_measured

FAMILY = "throughput"


def test_case(case_result):
    case = case_result.case
    assert len(case_result.step_ms) == case["measured_steps"]
    assert case_result.tokens_per_s and case_result.tokens_per_s > 0
    assert all(math.isfinite(x) for x in case_result.losses)
    assert_memory_measured(case_result)
