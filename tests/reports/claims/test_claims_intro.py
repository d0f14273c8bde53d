"""reports.claims.intro: the claims of "QLoRA: Quantized Training (intro)", on hand-made rows."""

from __future__ import annotations

from reports.claims import Verdict
from reports.claims.intro import check_cut_4x, check_lora_99

EIGHT = "llama-3.1-8b"
THREE = "llama-3.2-3b"


# -- cut memory by 4x -----------------------------------------------------------------------------
def test_cut_4x_refuted_with_whole_model_and_linear_ratios(build):
    rows = [
        build.result(THREE, quant_type="none", **build.params(THREE), **build.weights(THREE, "none")),
        build.result(THREE, **build.params(THREE), **build.weights(THREE)),
    ]
    (only,) = check_cut_4x(build.run(rows))
    assert only.verdict is Verdict.REFUTED
    assert "2.87x (whole model)" in only.measured and "linear layers alone: 3.88x" in only.measured
    assert "2.87x, not 4x" in only.corrected


def test_cut_4x_holds_at_four(build):
    rows = [
        build.result(THREE, quant_type="none", weight_bytes=4_000_000),
        build.result(THREE, weight_bytes=1_020_000),
    ]
    (only,) = check_cut_4x(build.run(rows))
    assert only.verdict is Verdict.HOLDS and "3.92x" in only.measured


def test_cut_4x_inconclusive_and_not_run(build):
    no_ref = [build.result(THREE, weight_bytes=1), build.result(EIGHT, quant_type="none", weight_bytes=2)]
    (only,) = check_cut_4x(build.run(no_ref))
    assert only.verdict is Verdict.INCONCLUSIVE and "no 16-bit row of llama-3.2-3b" in only.why
    (none,) = check_cut_4x(build.run([build.result(THREE, quant_type="none", weight_bytes=2)]))
    assert none.verdict is Verdict.NOT_RUN


def test_cut_4x_is_judged_on_the_lessons_model_sizes(build):
    rows = [
        build.result("tiny", quant_type="none", weight_bytes=1_000_000),
        build.result("tiny", weight_bytes=500_000),
    ]
    (only,) = check_cut_4x(build.run(rows))
    assert only.verdict is Verdict.NOT_RUN and "not judged: tiny" in only.why


SMALL = "smollm2-135m-instruct"


# -- 99% fewer trainable parameters ---------------------------------------------------------------
def test_lora_99pct(build):
    rows = [
        build.result(THREE, **build.params(THREE)),
        build.result(EIGHT, lora_r=512, total_params=8_700_000_000, trainable_params=670_000_000),
        build.result(SMALL, **build.params(SMALL)),
    ]
    evals = check_lora_99(build.run(rows))
    assert [e.condition.split(",")[0] for e in evals] == [THREE, EIGHT]
    assert build.pick(evals, THREE).verdict is Verdict.HOLDS
    eight = build.pick(evals, EIGHT)
    assert eight.verdict is Verdict.REFUTED and "92.3%" in eight.corrected
    assert SMALL in eight.why  # the small model is named as not judged
    (small,) = check_lora_99(build.run([build.result(SMALL, **build.params(SMALL))]))
    assert small.verdict is Verdict.NOT_RUN
    (failed,) = check_lora_99(build.run([build.result(THREE, status="crashed", **build.params(THREE))]))
    assert failed.verdict is Verdict.INCONCLUSIVE
