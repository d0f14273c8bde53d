"""reports.claims.nf4: the claims of "NormalFloat4: The Optimal Format", on hand-made rows."""

from __future__ import annotations

from reports.claims import Verdict
from reports.claims.double_quant import check_dq_factor_dtype
from reports.claims.nf4 import check_fp4_uniform, check_nf4_near_zero, check_nf4_quality, code_stats

THREE = "llama-3.2-3b"
SMALL = "smollm2-135m-instruct"
TEXT = {"data": "text", "batch_size": 2, "seq_len": 64, "compute_dtype": "fp16"}


# -- NF4 vs FP4 quality ---------------------------------------------------------------------------
def _quality(build, quant: str, dq: bool, before: float, after: float, **fields):
    return build.result(
        SMALL,
        families="quality",
        quant_type=quant,
        double_quant=dq,
        **TEXT,
        **build.params(SMALL),
        **{**build.weights(SMALL, quant, dq), **fields},
        ppl_before=before,
        ppl_after=after,
    )


def test_nf4_quality_holds_on_perplexity_error_and_bytes(build):
    rows = [_quality(build, "nf4", True, 21.0, 17.0), _quality(build, "fp4", True, 24.0, 19.0)]
    run = build.run(rows, {"quant_error": build.quant_error(0.09, 0.11)})
    evals = check_nf4_quality(run)
    assert set(build.verdicts(evals)) == {"holds"}
    assert "nf4 17.000, fp4 19.000" in build.pick(evals, "after training").measured
    assert "nf4 mean 0.0900" in build.pick(evals, "reconstruction error, double quant on").measured
    assert build.pick(evals, "same memory").verdict is Verdict.HOLDS


def test_nf4_quality_refuted_and_inconclusive_per_condition(build):
    rows = [_quality(build, "nf4", False, 24.0, 17.05), _quality(build, "fp4", False, 21.0, 17.0)]
    run = build.run(rows, {"quant_error": build.quant_error(0.12, 0.10)})
    evals = check_nf4_quality(run)
    before = build.pick(evals, "before training")
    assert before.verdict is Verdict.REFUTED and "FP4 gave lower perplexity" in before.corrected
    after = build.pick(evals, "after training")
    assert after.verdict is Verdict.INCONCLUSIVE and "within" in after.why
    assert build.pick(evals, "reconstruction error, double quant off").verdict is Verdict.REFUTED


def test_nf4_quality_same_memory_refuted_when_bytes_differ(build):
    rows = [
        _quality(build, "nf4", True, 21.0, 17.0),
        _quality(build, "fp4", True, 24.0, 19.0, weight_bytes=200_000_000),
    ]
    same = build.pick(check_nf4_quality(build.run(rows)), "same memory")
    assert same.verdict is Verdict.REFUTED


def test_nf4_quality_not_run_without_quality_rows_or_error_table(build):
    evals = check_nf4_quality(build.run([build.result(THREE)]))
    assert build.pick(evals, "perplexity").verdict is Verdict.NOT_RUN
    error = build.pick(evals, "reconstruction error")
    assert error.verdict is Verdict.NOT_RUN and "quant_error" in error.why
    mixed = build.quant_error(0.09, 0.11)
    mixed = [
        r | {"rel_error": 0.2} if r["quant_type"] == "nf4" and r["layer"] == "q_proj" else r for r in mixed
    ]
    run = build.run([build.result(THREE)], {"quant_error": [r for r in mixed if not r["double_quant"]]})
    (err,) = [e for e in check_nf4_quality(run) if "reconstruction" in e.condition]
    assert err.verdict is Verdict.INCONCLUSIVE  # mean worse, median better


# -- code books -----------------------------------------------------------------------------------
def test_fp4_uniform_refuted_by_the_real_code_book(build):
    (only,) = check_fp4_uniform(build.run([], {"quant_codes": build.quant_codes()}))
    assert only.verdict is Verdict.REFUTED
    assert "15 distinct levels" in only.measured and "11 levels within" in only.measured
    assert "not equally spaced" in only.corrected and only.evidence == ("quant_codes",)


def test_fp4_uniform_holds_for_an_equally_spaced_code_book(build):
    rows = [{"quant_type": "fp4", "index": i, "value": -1 + 2 * i / 15} for i in range(16)]
    assert check_fp4_uniform(build.run([], {"quant_codes": rows}))[0].verdict is Verdict.HOLDS


def test_code_book_claims_not_run_without_the_table_or_the_type(build):
    assert check_fp4_uniform(build.run([]))[0].verdict is Verdict.NOT_RUN
    nf4_only = [r for r in build.quant_codes() if r["quant_type"] == "nf4"]
    (fp4,) = check_fp4_uniform(build.run([], {"quant_codes": nf4_only}))
    assert fp4.verdict is Verdict.NOT_RUN and "no fp4" in fp4.why
    no_value = [{"quant_type": "nf4", "index": 0}]
    (col,) = check_nf4_near_zero(build.run([], {"quant_codes": no_value}))
    assert col.verdict is Verdict.NOT_RUN and "value" in col.why


def test_nf4_near_zero_holds_for_the_real_code_book_and_reports_fp4(build):
    (only,) = check_nf4_near_zero(build.run([], {"quant_codes": build.quant_codes()}))
    assert only.verdict is Verdict.HOLDS
    assert "10 levels within" in only.measured and "would have 8" in only.measured and "fp4:" in only.measured


def test_nf4_near_zero_refuted_for_an_equally_spaced_code_book(build):
    rows = [{"quant_type": "nf4", "index": i, "value": -1 + 2 * i / 15} for i in range(16)]
    (only,) = check_nf4_near_zero(build.run([], {"quant_codes": rows}))
    assert only.verdict is Verdict.REFUTED and "8 levels" in only.corrected


def test_quality_and_error_tables_with_missing_halves(build):
    rows = [_quality(build, "nf4", True, 21.0, 17.0)]
    evals = check_nf4_quality(build.run(rows, {"quant_error": build.quant_error()[:2]}))
    assert build.pick(evals, "perplexity").verdict is Verdict.NOT_RUN  # no fp4 twin
    nf4_only = [r for r in build.quant_error() if r["quant_type"] == "nf4"]
    evals = check_nf4_quality(build.run(rows, {"quant_error": nf4_only}))
    assert {e.verdict for e in evals if "reconstruction" in e.condition} == {Verdict.NOT_RUN}
    pair = [_quality(build, "nf4", True, 21.0, 17.0), _quality(build, "fp4", True, 24.0, 19.0)]
    pair[1].quality.ppl_after = None
    after = build.pick(check_nf4_quality(build.run(pair)), "after training")
    assert after.verdict is Verdict.INCONCLUSIVE and "ppl_after" in after.why


def test_code_books_without_nf4_and_layouts_without_bits(build):
    fp4_only = [r for r in build.quant_codes() if r["quant_type"] == "fp4"]
    assert check_nf4_near_zero(build.run([], {"quant_codes": fp4_only}))[0].verdict is Verdict.NOT_RUN
    layout = [{k: v for k, v in r.items() if k != "absmax_bits"} for r in build.quant_state(8)]
    evals = check_dq_factor_dtype(build.run([], {"quant_state_layout": layout}))
    assert "uint8 (8 bits)" in build.pick(evals, "on").measured  # width derived from the dtype name
    layout[1]["absmax_dtype"] = "mystery"
    evals = check_dq_factor_dtype(build.run([], {"quant_state_layout": layout}))
    assert build.pick(evals, "on").verdict is Verdict.INCONCLUSIVE


def test_code_stats_fold_signed_zero_and_measure_spacing(build):
    fp4 = code_stats(build.fp4_codes)
    assert fp4.levels == 15 and fp4.near_zero == 11 and fp4.gap_cv > 0.5
    uniform = code_stats([-1 + 2 * i / 15 for i in range(16)])
    assert uniform.levels == 16 and uniform.gap_cv < 1e-6 and uniform.near_zero == 8


def test_nf4_quality_after_training_needs_rows_trained_alike_before_training_does_not(build):
    rows = [
        _quality(build, "nf4", True, 21.0, 17.0, tokens_per_step=128, losses=[3.0] * 33),
        _quality(build, "fp4", True, 24.0, 19.0, tokens_per_step=128, losses=[3.0] * 30),
    ]
    evals = check_nf4_quality(build.run(rows))
    after = build.pick(evals, "after training")
    assert after.verdict is Verdict.INCONCLUSIVE
    assert after.why == "nf4 trained 33 steps x 128 tokens, fp4 30 steps x 128 tokens: not compared"
    assert build.pick(evals, "before training").verdict is Verdict.HOLDS  # no step trained yet
