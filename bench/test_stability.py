"""Stability: fp16 vs bf16 compute at learning rates 1e-4, 2e-4 and 1e-3 on real text. A NaN is
a recorded outcome (xfail with its first bad step); an ok case must be finite throughout."""

import math

FAMILY = "stability"


def test_case(case_result):
    assert case_result.first_nonfinite_step is None
    assert len(case_result.losses) == case_result.case["warmup_steps"] + case_result.case["measured_steps"]
    assert all(math.isfinite(x) for x in case_result.losses + case_result.grad_norms)
