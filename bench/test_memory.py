"""Memory: the sweep and its 16-bit reference, checkpointing and prepare on/off, the OOM ladder,
which model sizes fit. Each case's stage and peak memory are measured in its own child."""

from qlora_plugin.checks import assert_adapters_only_train, assert_memory_consistent

FAMILY = "memory"


def test_case(case_result):
    assert_memory_consistent(case_result)
    assert_adapters_only_train(case_result)
