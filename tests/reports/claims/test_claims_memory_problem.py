"""reports.claims.memory_problem: the claims of "The Memory Problem", on hand-made rows."""

from __future__ import annotations

from reports.claims import Verdict, claim_by_id, evaluate
from reports.claims.memory_problem import check_t4_fits_7b, check_training_total_7b, check_weights_7b

EIGHT = "llama-3.1-8b"
THREE = "llama-3.2-3b"
BASE_8B = 8_030_261_248


# -- the 7B table: weights ------------------------------------------------------------------------
def test_weights_holds_when_bytes_per_param_scale_to_the_lesson(build):
    rows = [
        build.result(EIGHT, quant_type="none", **build.params(EIGHT), weight_bytes=2 * BASE_8B),
        build.result(EIGHT, **build.params(EIGHT), weight_bytes=BASE_8B // 2),
    ]
    evals = check_weights_7b(build.run(rows))
    # 16-bit bytes per parameter scale to any size; 4-bit ones only from a 7B model.
    assert build.verdicts(evals) == ["not_run", "holds", "not_run", "inconclusive"]
    assert "not a 7B model" in build.pick(evals, "INT4").why
    fp16 = build.pick(evals, "FP16 on")
    assert "2.000 bytes/param" in fp16.measured and "14.00 GB" in fp16.measured
    assert "no FP32" in build.pick(evals, "FP32").why and "8-bit" in build.pick(evals, "INT8").why


def test_weights_refuted_with_the_measured_per_param_size(build):
    seven = "mistral-7b"
    rows = [build.result(seven, **build.params(seven), **build.weights(seven))]
    int4 = build.pick(check_weights_7b(build.run(rows)), "INT4")
    assert int4.verdict is Verdict.REFUTED
    assert "bytes/param" in int4.measured and seven in int4.evidence[0]
    assert "GB" in int4.corrected
    scaled = build.pick(
        check_weights_7b(build.run([build.result(seven, **build.params(seven), weight_bytes=3_600_000_000)])),
        "INT4",
    )
    assert scaled.verdict is Verdict.HOLDS


def test_weights_inconclusive_when_the_16bit_row_failed_at_load(build):
    rows = [build.result(EIGHT, quant_type="none", status="oom"), build.result(EIGHT, **build.params(EIGHT))]
    fp16 = build.pick(check_weights_7b(build.run(rows)), "FP16")
    assert fp16.verdict is Verdict.INCONCLUSIVE and "1 oom" in fp16.why


def test_weights_not_run_without_a_7_8b_shape(build):
    rows = [build.result(THREE, **build.params(THREE), **build.weights(THREE))]
    evals = check_weights_7b(build.run(rows))
    assert build.verdicts(evals) == ["not_run"] * 4


# -- the 7B table: totals with training -----------------------------------------------------------
def _eight_trained(build, peak: float, **fields):
    return build.result(
        EIGHT, **build.params(EIGHT), **build.gpu(), **build.memory(5.3, 7.2, 7.36, peak), **fields
    )


def test_training_total_holds_when_the_lesson_value_is_within_the_range(build):
    rows = [_eight_trained(build, 7.5), _eight_trained(build, 11.0, seq_len=2048)]
    int4 = build.pick(check_training_total_7b(build.run(rows)), "INT4")
    assert int4.verdict is Verdict.HOLDS
    assert "device" in int4.measured and "not full fine-tuning" in int4.condition


def test_training_total_refuted_when_every_setting_is_far_off(build):
    rows = [_eight_trained(build, 30.0)]
    int4 = build.pick(check_training_total_7b(build.run(rows)), "INT4")
    assert int4.verdict is Verdict.REFUTED and "33.2 GB" in int4.corrected


def test_training_total_inconclusive_when_nothing_trained_and_not_run_without_rows(build):
    rows = [build.result(EIGHT, status="oom", **build.params(EIGHT), **build.gpu())]
    evals = check_training_total_7b(build.run(rows))
    assert build.pick(evals, "INT4").verdict is Verdict.INCONCLUSIVE
    assert build.pick(evals, "FP16").verdict is Verdict.NOT_RUN


def test_training_total_applies_to_gpu_profiles_only(build):
    run = build.run([build.result(EIGHT, profile="cpu", device="cpu", **build.params(EIGHT))])
    (only,) = evaluate(claim_by_id("mem7b-training-total"), run)
    assert only.verdict is Verdict.NOT_RUN and "cpu" in only.why


# -- fitting on the T4 ------------------------------------------------------------------------------
def _compat_8b(build, status: str = "ok", peak: float | None = 8.0):
    memory = build.memory(5.3, 7.2, 7.36, peak) if peak else {}
    return build.result(
        EIGHT, families="compat", status=status, **build.params(EIGHT), **build.gpu(), **memory
    )


def test_t4_fits_7b(build):
    (fits,) = check_t4_fits_7b(build.run([_compat_8b(build)]))
    assert fits.verdict is Verdict.HOLDS and "left" in fits.measured
    (tight,) = check_t4_fits_7b(build.run([_compat_8b(build, peak=13.8)]))
    assert tight.verdict is Verdict.REFUTED and "only" in tight.corrected
    (oom,) = check_t4_fits_7b(build.run([_compat_8b(build, "oom", None)]))
    assert oom.verdict is Verdict.REFUTED
    (crashed,) = check_t4_fits_7b(build.run([_compat_8b(build, "timeout", None)]))
    assert crashed.verdict is Verdict.INCONCLUSIVE
    (none,) = check_t4_fits_7b(build.run([build.result(THREE, families="compat")]))
    assert none.verdict is Verdict.NOT_RUN


def test_t4_fits_inconclusive_without_a_peak(build):
    (only,) = check_t4_fits_7b(build.run([_compat_8b(build, "ok", None)]))
    assert only.verdict is Verdict.INCONCLUSIVE and "no peak" in only.why
