"""Throughput at the device-bound point: the lesson's four axes (nf4/fp4 x double quant x
fp16/bf16), fp32 compute, the 16-bit reference, and the engine comparison; tokens/s is the
median over measured steps, warm-up excluded, each step synchronized."""

from qlora_plugin.checks import assert_memory_consistent

FAMILY = "throughput"


def test_case(case_result):
    # Steps, tokens/s and finite losses are what status ok means (the child sets it only then);
    # what ok does not vouch for is that the memory figures agree.
    assert_memory_consistent(case_result)
