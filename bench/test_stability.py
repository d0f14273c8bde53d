"""Stability: fp16 vs bf16 compute at learning rates 1e-4, 2e-4 and 1e-3 on real text, and the
`nan` family's learning-rate grid (up to the rate where fp16 goes non-finite), core loop and Trainer.

The case's outcome is the test (`case_result`): ok passes (the child reports ok only when every
step's loss and gradient norm were finite), NaN is a recorded outcome that xfails with its first
bad step, anything else fails. The claims compare the cases."""

FAMILY = "stability"


def test_case(case_result):
    """Runs (or reuses) the case; its status decides the outcome."""
