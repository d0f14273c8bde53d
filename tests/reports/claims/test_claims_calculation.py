"""reports.claims.calculation: the claims of "Memory Calculation Guide", on hand-made rows."""

from __future__ import annotations

from reports.claims import Verdict
from reports.claims.calculation import (
    check_activation_overhead,
    check_adapter_overhead,
    check_formula,
    check_optimizer_overhead,
    nominal_size,
)

EIGHT = "llama-3.1-8b"
THREE = "llama-3.2-3b"


# -- the formula ----------------------------------------------------------------------------------
def test_formula_refuted_with_a_byte_breakdown_and_not_run_sizes(build):
    rows = [build.result(EIGHT, **build.params(EIGHT), **build.weights(EIGHT))]
    evals = check_formula(build.run(rows))
    assert build.verdicts(evals) == ["not_run", "not_run", "refuted", "not_run"]
    eight = build.pick(evals, "8B")
    assert "1.42x formula" in eight.measured and "non-quantized" in eight.why
    assert "~13B" in build.pick(evals, "13B").why


def test_formula_holds_when_bytes_match_params_times_half(build):
    rows = [build.result(THREE, **build.params(THREE), weight_bytes=3_212_749_824 // 2)]
    assert build.pick(check_formula(build.run(rows)), THREE).verdict is Verdict.HOLDS


# -- training overheads ---------------------------------------------------------------------------
def test_adapters_hold_and_refute_per_model(build):
    rows = [
        build.result(THREE, **build.params(THREE), **build.gpu(), **build.memory(2.0, 2.8, 3.0, 4.0)),
        build.result(EIGHT, **build.params(EIGHT), **build.gpu(), **build.memory(5.0, 7.0, 8.0, 9.0)),
    ]
    evals = check_adapter_overhead(build.run(rows))
    assert build.pick(evals, THREE).verdict is Verdict.HOLDS
    eight = build.pick(evals, EIGHT)
    assert eight.verdict is Verdict.REFUTED and "1.00 GiB" in eight.corrected
    assert "the seven projections" in eight.condition


def test_adapters_fall_back_to_params_times_dtype_off_cuda(build):
    rows = [build.result(THREE, device="cpu", **build.params(THREE, "bfloat16"))]
    (only,) = check_adapter_overhead(build.run(rows))
    assert "trainable_params x 2 bytes" in only.measured


def test_adapters_inconclusive_without_allocator_or_dtype_and_not_run_for_small_models(build):
    rows = [build.result(THREE, device="cpu", total_params=3_237_063_680, trainable_params=24_313_856)]
    (only,) = check_adapter_overhead(build.run(rows))
    assert only.verdict is Verdict.INCONCLUSIVE
    small = [build.result("smollm2-135m-instruct", **build.params("smollm2-135m-instruct"))]
    (none,) = check_adapter_overhead(build.run(small))
    assert none.verdict is Verdict.NOT_RUN and "below 2.5B" in none.why


def test_optimizer_overhead_from_optimizer_state_bytes(build):
    rows = [
        build.result(THREE, **build.params(THREE), optimizer_state_bytes=1_500_000_000),
        build.result(EIGHT, optimizer="adamw_8bit", **build.params(EIGHT), optimizer_state_bytes=335_544_320),
    ]
    evals = check_optimizer_overhead(build.run(rows))
    assert build.pick(evals, THREE).verdict is Verdict.HOLDS
    eight = build.pick(evals, "adamw_8bit")
    assert eight.verdict is Verdict.REFUTED and "0.34 GB" in eight.corrected
    assert "41,943,040 trainable params" in eight.measured


def test_optimizer_overhead_inconclusive_without_the_column_and_not_run_without_rows(build):
    (only,) = check_optimizer_overhead(build.run([build.result(THREE, **build.params(THREE))]))
    assert only.verdict is Verdict.INCONCLUSIVE and "optimizer_state_bytes" in only.why
    (none,) = check_optimizer_overhead(build.run([build.result(THREE, quant_type="none")]))
    assert none.verdict is Verdict.NOT_RUN


def _sweep(build, peaks: dict[tuple[int, int], float], status: str = "ok"):
    return [
        build.result(
            THREE,
            families="sweep",
            batch_size=b,
            seq_len=s,
            status=status,
            **build.gpu(),
            **build.memory(2.0, 2.8, 2.9, peak),
        )
        for (b, s), peak in peaks.items()
    ]


def test_activations_hold_when_every_point_is_in_range(build):
    (only,) = check_activation_overhead(build.run(_sweep(build, {(1, 512): 5.0, (4, 2048): 10.0})))
    assert only.verdict is Verdict.HOLDS and "checkpointing on" in only.condition


def test_activations_refuted_with_the_measured_range(build):
    (only,) = check_activation_overhead(build.run(_sweep(build, {(1, 512): 3.2, (4, 2048): 9.5})))
    assert only.verdict is Verdict.REFUTED
    assert "0.30 to 6.60 GiB" in only.corrected and "lowest at b1 s512" in only.measured


def test_activations_inconclusive_and_not_run(build):
    (failed,) = check_activation_overhead(build.run(_sweep(build, {(1, 512): 3.0}, status="oom")))
    assert failed.verdict is Verdict.INCONCLUSIVE
    (none,) = check_activation_overhead(build.run([build.result(THREE)]))
    assert none.verdict is Verdict.NOT_RUN


def test_nominal_size_maps_real_counts_to_the_lesson_examples():
    assert nominal_size(3_212_749_824) == 3
    assert nominal_size(6_738_415_616) == 7
    assert nominal_size(8_030_261_248) == 8
    assert nominal_size(13_015_864_320) == 13
    assert nominal_size(1_235_814_400) is None
