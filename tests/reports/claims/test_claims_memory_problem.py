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
    assert "no 7-8B unquantized fp32" in build.pick(evals, "FP32").why
    assert "int8" in build.pick(evals, "INT8").why


SEVEN = "llama-2-7b"
BASE_7B = 6_738_415_616


def _loaded_7b(build, quant_type: str, dtype: str, weight_bytes: int, **fields):
    return build.result(
        SEVEN,
        families="weights",
        quant_type=quant_type,
        compute_dtype=dtype,
        load_only=True,
        total_params=BASE_7B,
        weight_bytes=weight_bytes,
        **fields,
    )


def test_weights_fp32_and_int8_from_load_only_rows(build):
    """FP32 (4 bytes/param) holds at 28 GB; INT8 with its 16-bit embeddings and lm_head (262M
    params at 2 bytes) and row scales is refuted when it lands outside 10% of 7 GB."""
    rows = [
        _loaded_7b(build, "none", "fp32", 4 * BASE_7B),
        _loaded_7b(build, "int8", "fp16", 6_476_005_376 + 2 * 262_410_240 + 4 * 1_000_000),
    ]
    evals = check_weights_7b(build.run(rows))
    fp32, int8 = build.pick(evals, "FP32 on"), build.pick(evals, "INT8 on")
    assert fp32.verdict is Verdict.HOLDS and "4.000 bytes/param" in fp32.measured
    assert int8.verdict is Verdict.HOLDS and "1.040 bytes/param" in int8.measured
    far = check_weights_7b(build.run([_loaded_7b(build, "int8", "fp16", 2 * BASE_7B)]))
    assert build.pick(far, "INT8 on").verdict is Verdict.REFUTED


def test_weights_from_an_uncapped_rerun_are_labelled_needed(build):
    """The capped FP32 row ran out of memory loading: its uncapped rerun's load decides, labelled."""
    import pandas as pd

    capped = build.result(
        SEVEN, families="weights", quant_type="none", compute_dtype="fp32", load_only=True, status="oom"
    )
    compat = build.result(
        SEVEN, families="compat", total_params=BASE_7B + 39_976_960, trainable_params=39_976_960
    )
    run = build.run([capped, compat])
    evals = check_weights_7b(run)
    assert build.pick(evals, "FP32").verdict is Verdict.INCONCLUSIVE  # no uncapped rerun recorded
    df = run.results
    df["needed_load_alloc_gib"] = pd.Series([4 * BASE_7B / 2**30, None], index=df.index, dtype="float64")
    df["needed_on"] = pd.Series(["NVIDIA H200", ""], index=df.index, dtype="str")
    fp32 = build.pick(check_weights_7b(run), "FP32 on")
    assert fp32.verdict is Verdict.HOLDS
    assert "needed (measured uncapped on NVIDIA H200)" in fp32.measured
    assert "needed (measured uncapped on NVIDIA H200)" in fp32.condition
    df.loc[df.index[0], "needed_load_alloc_gib"] = 2 * BASE_7B / 2**30  # a broken figure: refuted
    assert build.pick(check_weights_7b(run), "FP32 on").verdict is Verdict.REFUTED


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


def test_training_total_reads_training_rows_only(build):
    """Load-only rows hold no training: FP32/INT8 are not run with the reading named; a
    load-only 16-bit row does not stand in for 16-bit LoRA training."""
    loaded = build.result(EIGHT, quant_type="none", load_only=True, **build.params(EIGHT), **build.gpu())
    evals = check_training_total_7b(build.run([loaded]))
    assert build.pick(evals, "FP16").verdict is Verdict.NOT_RUN
    fp32 = build.pick(evals, "FP32")
    assert fp32.verdict is Verdict.NOT_RUN and "not full fine-tuning" in fp32.why


def test_int8_training_total_reads_lora_over_int8_weights_not_the_load(build):
    """INT8's total is LoRA trained over its LLM.int8() weights (the weights family's trained
    row); its load-only row beside it holds no training."""
    loaded = build.result(EIGHT, quant_type="int8", load_only=True, **build.params(EIGHT), **build.gpu())
    assert build.pick(check_training_total_7b(build.run([loaded])), "INT8").verdict is Verdict.NOT_RUN
    rows = [loaded, _eight_trained(build, 26.0, quant_type="int8", double_quant=False)]
    int8 = build.pick(check_training_total_7b(build.run(rows)), "INT8")
    assert int8.verdict is Verdict.HOLDS and "LoRA on int8 weights" in int8.condition
    far = build.pick(
        check_training_total_7b(build.run([_eight_trained(build, 9.0, quant_type="int8")])), "INT8"
    )
    assert far.verdict is Verdict.REFUTED and "peaked at 10.6 GB" in far.corrected


def test_training_total_counts_an_oom_point_by_what_it_needed_uncapped(build):
    """A point over the cap is in the range with its uncapped need, labelled: the range a profile
    shows does not depend on which points fit its card."""
    capped = build.result(
        EIGHT, status="oom", seq_len=2048, **build.params(EIGHT), **build.gpu(), **build.needed(92.0, 95.0)
    )
    rows = [_eight_trained(build, 7.5), capped]
    int4 = build.pick(check_training_total_7b(build.run(rows)), "INT4")
    assert "needed (measured uncapped on NVIDIA H200)" in int4.measured and "95.00 GiB" in int4.measured
    assert int4.points == "llama-3.1-8b b1 s512, b1 s2048: needed (measured uncapped on NVIDIA H200)"
    without = build.pick(check_training_total_7b(build.run(rows[:1])), "INT4")
    assert "95.00 GiB" not in without.measured  # the rule, not the fixture, brought the point in


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


def test_t4_fits_says_what_an_oom_needed_uncapped(build):
    need = build.needed(15.2, 16.1)
    row = build.result(EIGHT, families="compat", status="oom", **build.params(EIGHT), **build.gpu(), **need)
    (only,) = check_t4_fits_7b(build.run([row]))
    assert only.verdict is Verdict.REFUTED
    assert (
        only.measured
        == "status oom; needed (measured uncapped on NVIDIA H200): 16.10 GiB (17.29 GB) at its device peak"
    )


def test_t4_fits_inconclusive_without_a_peak(build):
    (only,) = check_t4_fits_7b(build.run([_compat_8b(build, "ok", None)]))
    assert only.verdict is Verdict.INCONCLUSIVE and "no peak" in only.why
