"""Quantization and dtype claims: NF4 vs FP4 (quality, code books), double quantization (bytes,
factor width, speed), compute dtype speed and quality, bf16 on the T4, the NaN advice."""

from __future__ import annotations

import dataclasses

from qlora_core.gpus import PROFILES
from reports import claims as c

SMALL = "smollm2-135m-instruct"
THREE = "llama-3.2-3b"
TEXT = {"data": "text", "batch_size": 2, "seq_len": 64, "compute_dtype": "fp16"}


def claim(claim_id: str) -> c.Claim:
    return next(x for x in c.CLAIMS if x.id == claim_id)


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
    evals = c.check_nf4_quality(run)
    assert set(build.verdicts(evals)) == {"holds"}
    assert "nf4 17.000, fp4 19.000" in build.pick(evals, "after training").measured
    assert "nf4 mean 0.0900" in build.pick(evals, "reconstruction error, double quant on").measured
    assert build.pick(evals, "same memory").verdict is c.Verdict.HOLDS


def test_nf4_quality_refuted_and_inconclusive_per_condition(build):
    rows = [_quality(build, "nf4", False, 24.0, 17.05), _quality(build, "fp4", False, 21.0, 17.0)]
    run = build.run(rows, {"quant_error": build.quant_error(0.12, 0.10)})
    evals = c.check_nf4_quality(run)
    before = build.pick(evals, "before training")
    assert before.verdict is c.Verdict.REFUTED and "FP4 gave lower perplexity" in before.corrected
    after = build.pick(evals, "after training")
    assert after.verdict is c.Verdict.INCONCLUSIVE and "within" in after.why
    assert build.pick(evals, "reconstruction error, double quant off").verdict is c.Verdict.REFUTED


def test_nf4_quality_same_memory_refuted_when_bytes_differ(build):
    rows = [
        _quality(build, "nf4", True, 21.0, 17.0),
        _quality(build, "fp4", True, 24.0, 19.0, weight_bytes=200_000_000),
    ]
    same = build.pick(c.check_nf4_quality(build.run(rows)), "same memory")
    assert same.verdict is c.Verdict.REFUTED


def test_nf4_quality_not_run_without_quality_rows_or_error_table(build):
    evals = c.check_nf4_quality(build.run([build.result(THREE)]))
    assert build.pick(evals, "perplexity").verdict is c.Verdict.NOT_RUN
    error = build.pick(evals, "reconstruction error")
    assert error.verdict is c.Verdict.NOT_RUN and "quant_error" in error.why
    mixed = build.quant_error(0.09, 0.11)
    mixed = [
        r | {"rel_error": 0.2} if r["quant_type"] == "nf4" and r["layer"] == "q_proj" else r for r in mixed
    ]
    run = build.run([build.result(THREE)], {"quant_error": [r for r in mixed if not r["double_quant"]]})
    (err,) = [e for e in c.check_nf4_quality(run) if "reconstruction" in e.condition]
    assert err.verdict is c.Verdict.INCONCLUSIVE  # mean worse, median better


# -- code books -----------------------------------------------------------------------------------
def test_fp4_uniform_refuted_by_the_real_code_book(build):
    (only,) = c.check_fp4_uniform(build.run([], {"quant_codes": build.quant_codes()}))
    assert only.verdict is c.Verdict.REFUTED
    assert "15 distinct levels" in only.measured and "11 levels within" in only.measured
    assert "not equally spaced" in only.corrected and only.evidence == ("quant_codes",)


def test_fp4_uniform_holds_for_an_equally_spaced_code_book(build):
    rows = [{"quant_type": "fp4", "index": i, "value": -1 + 2 * i / 15} for i in range(16)]
    assert c.check_fp4_uniform(build.run([], {"quant_codes": rows}))[0].verdict is c.Verdict.HOLDS


def test_code_book_claims_not_run_without_the_table_or_the_type(build):
    assert c.check_fp4_uniform(build.run([]))[0].verdict is c.Verdict.NOT_RUN
    nf4_only = [r for r in build.quant_codes() if r["quant_type"] == "nf4"]
    (fp4,) = c.check_fp4_uniform(build.run([], {"quant_codes": nf4_only}))
    assert fp4.verdict is c.Verdict.NOT_RUN and "no fp4" in fp4.why
    no_value = [{"quant_type": "nf4", "index": 0}]
    (col,) = c.check_nf4_near_zero(build.run([], {"quant_codes": no_value}))
    assert col.verdict is c.Verdict.NOT_RUN and "value" in col.why


def test_nf4_near_zero_holds_for_the_real_code_book_and_reports_fp4(build):
    (only,) = c.check_nf4_near_zero(build.run([], {"quant_codes": build.quant_codes()}))
    assert only.verdict is c.Verdict.HOLDS
    assert "10 levels within" in only.measured and "would have 8" in only.measured and "fp4:" in only.measured


def test_nf4_near_zero_refuted_for_an_equally_spaced_code_book(build):
    rows = [{"quant_type": "nf4", "index": i, "value": -1 + 2 * i / 15} for i in range(16)]
    (only,) = c.check_nf4_near_zero(build.run([], {"quant_codes": rows}))
    assert only.verdict is c.Verdict.REFUTED and "8 levels" in only.corrected


# -- double quantization ---------------------------------------------------------------------------
def test_dq_overhead_scales_bits_per_param_to_the_7_8b_shape(build):
    rows = [
        build.result(THREE, double_quant=dq, **build.params(THREE), **build.weights(THREE, "nf4", dq))
        for dq in (False, True)
    ] + [build.result("llama-3.1-8b", **build.params("llama-3.1-8b"), **build.weights("llama-3.1-8b"))]
    evals = c.check_dq_overhead(build.run(rows))
    off, on = build.pick(evals, "off"), build.pick(evals, "on")
    assert (
        off.verdict is c.Verdict.HOLDS and "0.5000 bits" in off.measured and "6,979,321,856" in off.measured
    )
    assert on.verdict is c.Verdict.REFUTED and "0.1270 bits" in on.measured and "~0.11 GB" in on.corrected


def test_dq_overhead_scales_to_7e9_without_a_7_8b_row_and_not_run_per_condition(build):
    rows = [build.result(THREE, **build.params(THREE), **build.weights(THREE, "nf4", True))]
    evals = c.check_dq_overhead(build.run(rows))
    assert "lesson's 7e9" in build.pick(evals, "on").measured
    assert build.pick(evals, "off").verdict is c.Verdict.NOT_RUN
    (failed,) = c.check_dq_overhead(build.run([build.result(THREE, status="crashed")]))
    assert failed.verdict is c.Verdict.INCONCLUSIVE


def test_dq_factor_dtype_from_the_layout_table(build):
    evals = c.check_dq_factor_dtype(build.run([], {"quant_state_layout": build.quant_state(8)}))
    off, on = build.pick(evals, "off"), build.pick(evals, "on")
    assert off.verdict is c.Verdict.HOLDS and "float32 (32 bits)" in off.measured
    assert on.verdict is c.Verdict.REFUTED and "uint8 (8-bit)" in on.corrected
    evals = c.check_dq_factor_dtype(build.run([], {"quant_state_layout": build.quant_state(4)}))
    assert build.pick(evals, "on").verdict is c.Verdict.HOLDS


def test_dq_factor_dtype_inconclusive_without_the_table_and_not_run_without_a_condition(build):
    assert set(build.verdicts(c.check_dq_factor_dtype(build.run([])))) == {"inconclusive"}
    only_off = build.quant_state(8)[:1]
    evals = c.check_dq_factor_dtype(build.run([], {"quant_state_layout": only_off}))
    assert build.pick(evals, "on").verdict is c.Verdict.NOT_RUN


def _speed_pair(build, slow: float, spread: float = 0.04, key: str = "double_quant"):
    fields = {"double_quant": False} if key == "double_quant" else {"compute_dtype": "fp32"}
    return [
        build.result(THREE, compute_dtype="fp16", **build.gpu(), **build.training(1000.0, spread=spread)),
        build.result(THREE, **{"compute_dtype": "fp16", **fields}, **build.gpu(), **build.training(slow)),
    ]


def test_dq_compute_overhead(build):
    (minor,) = c.check_dq_compute_overhead(build.run(_speed_pair(build, 1050.0)))
    assert minor.verdict is c.Verdict.HOLDS and "+4.8% slower" in minor.measured
    (heavy,) = c.check_dq_compute_overhead(build.run(_speed_pair(build, 1500.0)))
    assert heavy.verdict is c.Verdict.REFUTED and "33%" in heavy.corrected
    (noisy,) = c.check_dq_compute_overhead(build.run(_speed_pair(build, 1130.0, spread=0.2)))
    assert noisy.verdict is c.Verdict.INCONCLUSIVE and "noise" in noisy.why
    (none,) = c.check_dq_compute_overhead(build.run(_speed_pair(build, 1000.0)[:1]))
    assert none.verdict is c.Verdict.NOT_RUN


# -- compute dtype ----------------------------------------------------------------------------------
def test_dtype_speed(build):
    def row(dtype: str, tps: float):
        return build.result(THREE, compute_dtype=dtype, **build.gpu(), **build.training(tps))

    evals = c.check_dtype_speed(build.run([row("fp16", 1000.0), row("bf16", 1100.0), row("fp32", 400.0)]))
    assert build.verdicts(evals) == ["holds", "holds"]
    assert "fp32 at 0.40x" in build.pick(evals, "fp32 vs fp16").measured
    # Not slower even allowing the cross-process noise floor (fp32 at 1.2x): refuted.
    evals = c.check_dtype_speed(build.run([row("fp16", 1000.0), row("fp32", 1200.0)]))
    assert build.verdicts(evals) == ["refuted", "not_run"]
    assert "not slower" in evals[0].corrected
    evals = c.check_dtype_speed(build.run([row("fp16", 1000.0), row("fp32", 1000.0)]))
    assert build.verdicts(evals) == ["inconclusive", "not_run"]
    evals = c.check_dtype_speed(build.run([row("fp16", 1000.0), row("fp32", 950.0)]))
    assert build.verdicts(evals)[0] == "inconclusive"
    assert build.verdicts(c.check_dtype_speed(build.run([row("fp16", 1000.0)]))) == ["not_run"]


def _stability(build, dtype: str, lr: float, final: float | None, **fields):
    status = "nan" if final is None else "ok"
    losses = [3.0, float("nan")] if final is None else [3.0, final]
    extra = {"first_nonfinite_step": 1} if final is None else {}
    return build.result(
        SMALL,
        families="stability",
        status=status,
        lr=lr,
        **{**TEXT, "compute_dtype": dtype},
        **build.training(900.0, losses),
        **extra,
        **fields,
    )


def test_bf16_quality_per_learning_rate(build):
    rows = [
        _stability(build, "fp16", 1e-4, 2.90),
        _stability(build, "bf16", 1e-4, 2.80),
        _stability(build, "fp16", 2e-4, 2.80),
        _stability(build, "bf16", 2e-4, 2.81),
        _stability(build, "fp16", 1e-3, None),
        _stability(build, "bf16", 1e-3, 2.70),
    ]
    evals = c.check_bf16_quality(build.run(rows))
    assert build.verdicts(evals) == ["holds", "inconclusive", "holds"]
    assert "fp16 NaN at step 1" in build.pick(evals, "lr 0.001").measured


def test_bf16_quality_refuted(build):
    worse = [_stability(build, "fp16", 1e-4, 2.5), _stability(build, "bf16", 1e-4, 2.9)]
    assert c.check_bf16_quality(build.run(worse))[0].verdict is c.Verdict.REFUTED
    nan = [_stability(build, "fp16", 1e-4, 2.5), _stability(build, "bf16", 1e-4, None)]
    (only,) = c.check_bf16_quality(build.run(nan))
    assert only.verdict is c.Verdict.REFUTED and "bf16 went NaN" in only.corrected


def test_bf16_quality_not_run_and_inconclusive(build):
    assert c.check_bf16_quality(build.run([build.result(THREE)]))[0].verdict is c.Verdict.NOT_RUN
    crashed = _stability(build, "fp16", 1e-4, 2.5)
    crashed.status = "crashed"
    (only,) = c.check_bf16_quality(build.run([crashed]))
    assert only.verdict is c.Verdict.INCONCLUSIVE and "1 crashed" in only.why


# -- the NaN advice ---------------------------------------------------------------------------------
def test_nan_lr_holds_refuted_and_untested(build):
    fp16 = [_stability(build, "fp16", 1e-4, 2.9), _stability(build, "fp16", 1e-3, None)]
    bf16 = [_stability(build, "bf16", 1e-4, 2.9), _stability(build, "bf16", 1e-3, 2.8)]
    evals = c.check_nan_lr(build.run(fp16 + bf16))
    assert build.pick(evals, "fp16").verdict is c.Verdict.HOLDS
    untested = build.pick(evals, "bf16")
    assert untested.verdict is c.Verdict.INCONCLUSIVE and "untested" in untested.why
    both = [_stability(build, "fp16", 1e-4, None), _stability(build, "fp16", 1e-3, None)]
    (refuted,) = c.check_nan_lr(build.run(both))
    assert refuted.verdict is c.Verdict.REFUTED and "1e-4" in refuted.corrected


def test_nan_lr_not_run_and_inconclusive_without_both_learning_rates(build):
    assert c.check_nan_lr(build.run([build.result(THREE)]))[0].verdict is c.Verdict.NOT_RUN
    (only,) = c.check_nan_lr(build.run([_stability(build, "fp16", 1e-3, None)]))
    assert only.verdict is c.Verdict.INCONCLUSIVE


def test_nan_bf16(build):
    rows = [_stability(build, "fp16", 1e-3, None), _stability(build, "bf16", 1e-3, 2.8)]
    (ok,) = c.check_nan_bf16(build.run(rows))
    assert ok.verdict is c.Verdict.HOLDS
    rows = [_stability(build, "fp16", 1e-3, None), _stability(build, "bf16", 1e-3, None)]
    (bad,) = c.check_nan_bf16(build.run(rows))
    assert bad.verdict is c.Verdict.REFUTED and "0.001" in bad.corrected
    rows = [_stability(build, "fp16", 1e-3, 2.9), _stability(build, "bf16", 1e-3, 2.8)]
    (untested,) = c.check_nan_bf16(build.run(rows))
    assert untested.verdict is c.Verdict.INCONCLUSIVE and "untested" in untested.why
    assert c.check_nan_bf16(build.run([]))[0].verdict is c.Verdict.NOT_RUN


# -- bf16 on the T4 -----------------------------------------------------------------------------------
def _t4(build, dtype: str, status: str = "ok", emulated: bool = True, tps: float = 1000.0):
    return build.result(
        THREE, compute_dtype=dtype, status=status, **build.gpu(emulated), **build.training(tps)
    )


def test_t4_bf16_emulated_is_a_datasheet_fact_plus_inconclusive_runs(build):
    evals = c.check_t4_bf16(build.run([_t4(build, "bf16"), _t4(build, "fp16")]))
    hardware = build.pick(evals, "hardware")
    assert hardware.verdict is c.Verdict.HOLDS and "datasheet" in hardware.why and "7.5" in hardware.measured
    runs = build.pick(evals, "bf16 runs")
    assert runs.verdict is c.Verdict.INCONCLUSIVE and "NVIDIA H200" in runs.why
    assert build.pick(evals, "speed").verdict is c.Verdict.INCONCLUSIVE


def test_t4_bf16_on_a_real_t4(build):
    rows = [_t4(build, "bf16", emulated=False, tps=300.0), _t4(build, "fp16", emulated=False)]
    evals = c.check_t4_bf16(build.run(rows))
    hardware = build.pick(evals, "hardware")
    assert hardware.verdict is c.Verdict.HOLDS and "bf16_native = [False]" in hardware.measured
    runs = build.pick(evals, "bf16 runs")
    assert runs.verdict is c.Verdict.REFUTED and "runs on it" in runs.corrected
    assert build.pick(evals, "speed").verdict is c.Verdict.HOLDS
    rows = [_t4(build, "bf16", "unsupported", emulated=False), _t4(build, "fp16", emulated=False)]
    evals = c.check_t4_bf16(build.run(rows))
    assert build.pick(evals, "bf16 runs").verdict is c.Verdict.HOLDS
    assert build.pick(evals, "speed").verdict is c.Verdict.NOT_RUN


def test_t4_bf16_without_bf16_rows_and_on_other_profiles(build):
    evals = c.check_t4_bf16(build.run([_t4(build, "fp16", emulated=False)]))
    assert build.pick(evals, "bf16 runs").verdict is c.Verdict.NOT_RUN
    run = build.run([build.result(THREE, profile="a100-80gb", **build.gpu(False))])
    assert c.evaluate(claim("t4-no-bf16"), run)[0].verdict is c.Verdict.NOT_RUN


def test_t4_bf16_real_gpu_reporting_native_bf16_refutes_and_registry_decides_when_emulated(
    build, monkeypatch
):
    row = _t4(build, "fp16", emulated=False)
    row.bf16_native = True
    evals = c.check_t4_bf16(build.run([row]))
    assert build.pick(evals, "hardware").verdict is c.Verdict.REFUTED
    fake = dataclasses.replace(PROFILES["t4"], capability=(8, 0))
    monkeypatch.setitem(c.PROFILES, "t4", fake)
    evals = c.check_t4_bf16(build.run([_t4(build, "fp16")]))
    assert build.pick(evals, "hardware").verdict is c.Verdict.REFUTED


def test_t4_bf16_real_gpu_edge_outcomes(build):
    rows = [_t4(build, "bf16", "timeout", emulated=False), _t4(build, "fp16", emulated=False)]
    assert build.pick(c.check_t4_bf16(build.run(rows)), "bf16 runs").verdict is c.Verdict.INCONCLUSIVE
    rows = [_t4(build, "bf16", emulated=False, tps=980.0), _t4(build, "fp16", emulated=False)]
    speed = build.pick(c.check_t4_bf16(build.run(rows)), "speed")
    assert speed.verdict is c.Verdict.INCONCLUSIVE and "0.98x" in speed.measured


def test_bf16_quality_both_nan_or_unmeasured_is_inconclusive(build):
    both = [_stability(build, "fp16", 1e-3, None), _stability(build, "bf16", 1e-3, None)]
    assert c.check_bf16_quality(build.run(both))[0].verdict is c.Verdict.INCONCLUSIVE
    rows = [_stability(build, "fp16", 1e-4, 2.9), _stability(build, "bf16", 1e-4, 2.8)]
    rows[0].final_loss = None
    (only,) = c.check_bf16_quality(build.run(rows))
    assert only.verdict is c.Verdict.INCONCLUSIVE and "final_loss" in only.why


def test_quality_and_error_tables_with_missing_halves(build):
    rows = [_quality(build, "nf4", True, 21.0, 17.0)]
    evals = c.check_nf4_quality(build.run(rows, {"quant_error": build.quant_error()[:2]}))
    assert build.pick(evals, "perplexity").verdict is c.Verdict.NOT_RUN  # no fp4 twin
    nf4_only = [r for r in build.quant_error() if r["quant_type"] == "nf4"]
    evals = c.check_nf4_quality(build.run(rows, {"quant_error": nf4_only}))
    assert {e.verdict for e in evals if "reconstruction" in e.condition} == {c.Verdict.NOT_RUN}
    pair = [_quality(build, "nf4", True, 21.0, 17.0), _quality(build, "fp4", True, 24.0, 19.0)]
    pair[1].ppl_after = None
    after = build.pick(c.check_nf4_quality(build.run(pair)), "after training")
    assert after.verdict is c.Verdict.INCONCLUSIVE and "ppl_after" in after.why


def test_code_books_without_nf4_and_layouts_without_bits(build):
    fp4_only = [r for r in build.quant_codes() if r["quant_type"] == "fp4"]
    assert c.check_nf4_near_zero(build.run([], {"quant_codes": fp4_only}))[0].verdict is c.Verdict.NOT_RUN
    layout = [{k: v for k, v in r.items() if k != "absmax_bits"} for r in build.quant_state(8)]
    evals = c.check_dq_factor_dtype(build.run([], {"quant_state_layout": layout}))
    assert "uint8 (8 bits)" in build.pick(evals, "on").measured  # width derived from the dtype name
    layout[1]["absmax_dtype"] = "mystery"
    evals = c.check_dq_factor_dtype(build.run([], {"quant_state_layout": layout}))
    assert build.pick(evals, "on").verdict is c.Verdict.INCONCLUSIVE


def test_dq_overhead_small_models_only_fall_back_to_the_layout_table_or_are_inconclusive(build):
    tiny = build.result(
        SMALL, **build.params(SMALL), quant_stats_bytes=5_000_000, quantized_params=100_000_000
    )  # 0.4 bits/param: per-tensor constants of a small model
    evals = c.check_dq_overhead(build.run([tiny]))
    on = build.pick(evals, "on")
    assert on.verdict is c.Verdict.INCONCLUSIVE and "0.4000 bits" in on.measured and "per-tensor" in on.why
    layout = [r | {"stats_bits_per_param": bits} for r, bits in zip(build.quant_state(8), (0.5001, 0.1290))]
    evals = c.check_dq_overhead(build.run([tiny], {"quant_state_layout": layout}))
    on, off = build.pick(evals, "on"), build.pick(evals, "off")
    assert on.verdict is c.Verdict.REFUTED and "0.1290 bits" in on.measured and "quant_state_layout" in on.why
    assert off.verdict is c.Verdict.HOLDS and on.evidence == ("quant_state_layout",)
    only_table = c.check_dq_overhead(build.run([], {"quant_state_layout": layout}))
    assert build.verdicts(only_table) == ["holds", "refuted"]
