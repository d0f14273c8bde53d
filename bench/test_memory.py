"""Memory: the sweep and its 16-bit reference, checkpointing and prepare on/off, the OOM ladder,
which model sizes fit. Each case's stage and peak memory are measured in its own child."""

from conftest import assert_memory_measured

FAMILY = "memory"


def test_case(case_result):
    assert_memory_measured(case_result)
    assert case_result.trainable_params and case_result.trainable_params > 0
