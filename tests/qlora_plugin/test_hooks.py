"""check_outcome: which recorded outcomes a bench test xfails (findings) and which fail it."""

from __future__ import annotations

import pytest

from qlora_core.result import Result
from qlora_core.spec import Case
from qlora_plugin.hooks import check_outcome

CASE = Case("tiny", compute_dtype="fp16", engine="sft")
# The row of the t4 profile's fp16 sft case, as the child words it (engines.hf, outcomes).
SFT_FP16_REASON = (
    "training: fp16's gradient scaler cannot unscale bf16 gradients (bf16 trainable parameters under"
    " fp16): NotImplementedError: TRL's SFTTrainer cast the trainable parameters float32 -> bfloat16 at"
    " init (trl/trainer/sft_trainer.py casts a quantized model's trainable parameters to bfloat16 whatever"
    " fp16/bf16 say); then \"_amp_foreach_non_finite_check_and_unscale_cuda\" not implemented for 'BFloat16'"
)


def row(status: str, reason: str = "") -> Result:
    result = Result.for_case(CASE, "t4")
    result.status, result.reason = status, reason
    return result


def test_ok_passes():
    check_outcome(row("ok"))


@pytest.mark.parametrize("status", ["oom", "nan", "unsupported"])
def test_a_finding_is_a_recorded_outcome_with_its_whole_reason(status: str):
    with pytest.raises(pytest.xfail.Exception) as outcome:
        check_outcome(row(status, SFT_FP16_REASON))
    assert str(outcome.value) == f"{status} (recorded outcome): {SFT_FP16_REASON}"


@pytest.mark.parametrize("status", ["crashed", "timeout", "cuda_error", "missing_model", "config_error"])
def test_what_the_suite_could_not_measure_fails(status: str):
    with pytest.raises(pytest.fail.Exception, match=f"^{status}: why"):
        check_outcome(row(status, "why"))
