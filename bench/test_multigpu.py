"""Multi-GPU, on a multi-card profile (`--gpu t4x2`, `--gpu l4x2`): the 8B shape
through the Trainer on one card and, launched by `accelerate launch`, on every card with FSDP and
with DDP. A multi-GPU row is merged from its ranks; each rank was capped like one emulated card."""

from qlora_plugin.checks import assert_adapters_only_train, assert_ranks_consistent

FAMILY = "multigpu"


def test_case(case_result):
    if case_result.case["num_gpus"] > 1:
        assert_ranks_consistent(case_result)
    assert_adapters_only_train(case_result)
