"""reports.claims.double_quant: the claims of "Double Quantization", on hand-made rows."""

from __future__ import annotations

from reports.claims import Verdict
from reports.claims.double_quant import check_dq_compute_overhead, check_dq_factor_dtype, check_dq_overhead

THREE = "llama-3.2-3b"
SMALL = "smollm2-135m-instruct"


# -- double quantization ---------------------------------------------------------------------------
def test_dq_overhead_scales_bits_per_param_to_the_7_8b_shape(build):
    rows = [
        build.result(THREE, double_quant=dq, **build.params(THREE), **build.weights(THREE, "nf4", dq))
        for dq in (False, True)
    ] + [build.result("llama-3.1-8b", **build.params("llama-3.1-8b"), **build.weights("llama-3.1-8b"))]
    evals = check_dq_overhead(build.run(rows))
    off, on = build.pick(evals, "off"), build.pick(evals, "on")
    assert off.verdict is Verdict.HOLDS and "0.5000 bits" in off.measured and "6,979,321,856" in off.measured
    assert on.verdict is Verdict.REFUTED and "0.1270 bits" in on.measured and "~0.11 GB" in on.corrected


def test_dq_overhead_scales_to_7e9_without_a_7_8b_row_and_not_run_per_condition(build):
    rows = [build.result(THREE, **build.params(THREE), **build.weights(THREE, "nf4", True))]
    evals = check_dq_overhead(build.run(rows))
    assert "lesson's 7e9" in build.pick(evals, "on").measured
    assert build.pick(evals, "off").verdict is Verdict.NOT_RUN
    (failed,) = check_dq_overhead(build.run([build.result(THREE, status="crashed")]))
    assert failed.verdict is Verdict.INCONCLUSIVE


def test_dq_factor_dtype_from_the_layout_table(build):
    evals = check_dq_factor_dtype(build.run([], {"quant_state_layout": build.quant_state(8)}))
    off, on = build.pick(evals, "off"), build.pick(evals, "on")
    assert off.verdict is Verdict.HOLDS and "float32 (32 bits)" in off.measured
    assert on.verdict is Verdict.REFUTED and "uint8 (8-bit)" in on.corrected
    evals = check_dq_factor_dtype(build.run([], {"quant_state_layout": build.quant_state(4)}))
    assert build.pick(evals, "on").verdict is Verdict.HOLDS


def test_dq_factor_dtype_inconclusive_without_the_table_and_not_run_without_a_condition(build):
    assert set(build.verdicts(check_dq_factor_dtype(build.run([])))) == {"inconclusive"}
    only_off = build.quant_state(8)[:1]
    evals = check_dq_factor_dtype(build.run([], {"quant_state_layout": only_off}))
    assert build.pick(evals, "on").verdict is Verdict.NOT_RUN


def _speed_pair(build, slow: float, spread: float = 0.04, key: str = "double_quant"):
    fields = {"double_quant": False} if key == "double_quant" else {"compute_dtype": "fp32"}
    return [
        build.result(THREE, compute_dtype="fp16", **build.gpu(), **build.training(1000.0, spread=spread)),
        build.result(THREE, **{"compute_dtype": "fp16", **fields}, **build.gpu(), **build.training(slow)),
    ]


def test_dq_compute_overhead(build):
    def pair(slow: list[float]):
        on, off = _speed_pair(build, 0.0)
        return build.in_processes(on, [1000.0, 1002.0, 998.0]) + build.in_processes(off, slow)

    (minor,) = check_dq_compute_overhead(build.run(pair([1050.0, 1052.0, 1049.0])))
    assert minor.verdict is Verdict.HOLDS and "+4.8% slower" in minor.measured
    (heavy,) = check_dq_compute_overhead(build.run(pair([1500.0, 1490.0, 1510.0])))
    assert heavy.verdict is Verdict.REFUTED and "33%" in heavy.corrected
    (noisy,) = check_dq_compute_overhead(build.run(pair([1050.0, 1130.0, 1250.0])))
    assert noisy.verdict is Verdict.INCONCLUSIVE and "straddles" in noisy.why
    # One process each: a 3% overhead's interval reaches past 10% at the +-15% noise floor.
    (single,) = check_dq_compute_overhead(build.run(_speed_pair(build, 1030.0)))
    assert single.verdict is Verdict.INCONCLUSIVE
    host = [r.replaced(host_bound=True) for r in pair([1050.0, 1052.0, 1049.0])]
    (left_out,) = check_dq_compute_overhead(build.run(host))
    assert left_out.verdict is Verdict.INCONCLUSIVE and "host-bound" in left_out.why
    (none,) = check_dq_compute_overhead(build.run(_speed_pair(build, 1000.0)[:1]))
    assert none.verdict is Verdict.NOT_RUN


def test_dq_overhead_small_models_only_fall_back_to_the_layout_table_or_are_inconclusive(build):
    tiny = build.result(
        SMALL, **build.params(SMALL), quant_stats_bytes=5_000_000, quantized_params=100_000_000
    )  # 0.4 bits/param: per-tensor constants of a small model
    evals = check_dq_overhead(build.run([tiny]))
    on = build.pick(evals, "on")
    assert on.verdict is Verdict.INCONCLUSIVE and "0.4000 bits" in on.measured and "per-tensor" in on.why
    layout = [r | {"stats_bits_per_param": bits} for r, bits in zip(build.quant_state(8), (0.5001, 0.1290))]
    evals = check_dq_overhead(build.run([tiny], {"quant_state_layout": layout}))
    on, off = build.pick(evals, "on"), build.pick(evals, "off")
    assert on.verdict is Verdict.REFUTED and "0.1290 bits" in on.measured and "quant_state_layout" in on.why
    assert off.verdict is Verdict.HOLDS and on.evidence == ("quant_state_layout",)
    only_table = check_dq_overhead(build.run([], {"quant_state_layout": layout}))
    assert build.verdicts(only_table) == ["holds", "refuted"]
