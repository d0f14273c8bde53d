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


H200_NEED = "needed (measured uncapped on NVIDIA H200)"


def _budget_point_oom(build, need_peak: float | None):
    """The sweep's b4 s2048 point run out of memory under a T4's cap; `need_peak`: the training
    peak its uncapped rerun measured (None: no rerun), over a LoRA stage at 2.9 GiB."""
    need = {**build.needed(need_peak, need_peak + 1.0), "needed_lora_alloc_gib": 2.9} if need_peak else {}
    fields = {"lora_alloc_gib": 2.9, "memory_cap_gib": 14.49, **need}
    return build.result(
        THREE, families="sweep", batch_size=4, seq_len=2048, status="oom", **build.gpu(), **fields
    )


def test_activations_judge_an_oom_point_by_what_it_needed_uncapped(build):
    rows = [*_sweep(build, {(1, 512): 4.8, (1, 2048): 7.5}), _budget_point_oom(build, 18.36)]
    (only,) = check_activation_overhead(build.run(rows))
    assert only.verdict is Verdict.REFUTED
    assert f"highest at b4 s2048, {H200_NEED}" in only.measured and "over 3 points" in only.measured
    assert f"b4 s2048, {H200_NEED}: 15.46 GiB" in only.corrected
    assert only.points == f"llama-3.2-3b b1 s512, b1 s2048, b4 s2048: {H200_NEED}"


def test_activations_give_one_verdict_whether_the_budget_point_fit_or_was_rerun_uncapped(build):
    """The same points, one run under a cap the b4 s2048 point exceeds (rerun uncapped), one on a
    GPU it fits: the same verdict on the same range, not one decided by what a profile completed."""
    capped = [*_sweep(build, {(1, 512): 4.8, (1, 2048): 7.5}), _budget_point_oom(build, 18.36)]
    fits = _sweep(build, {(1, 512): 4.8, (1, 2048): 7.5, (4, 2048): 18.36})
    (a,) = check_activation_overhead(build.run(capped))
    (b,) = check_activation_overhead(build.run(fits))
    assert a.verdict is b.verdict is Verdict.REFUTED
    assert (
        a.measured.split(" over ")[0]
        == b.measured.split(" over ")[0]
        == "1.90 GiB (2.04 GB) to 15.46 GiB (16.60 GB)"
    )
    # With its OOM point dropped, the capped run could not refute the range.
    dropped = [r for r in capped if r.status == "ok"]
    (c,) = check_activation_overhead(build.run(dropped))
    assert c.verdict is not Verdict.REFUTED


def test_activations_an_unmeasured_oom_point_keeps_the_range_from_holding(build):
    rows = [*_sweep(build, {(1, 512): 4.8, (1, 2048): 7.5}), _budget_point_oom(build, None)]
    (only,) = check_activation_overhead(build.run(rows))
    assert only.verdict is Verdict.INCONCLUSIVE
    assert "llama-3.2-3b b4 s2048 ran out of memory (no uncapped rerun measured it)" in only.why
    assert "no figure: llama-3.2-3b b4 s2048" in only.points
    # A measured point outside the range still refutes it.
    rows = [*_sweep(build, {(1, 512): 4.8, (1, 2048): 12.0}), _budget_point_oom(build, None)]
    (refuted_,) = check_activation_overhead(build.run(rows))
    assert refuted_.verdict is Verdict.REFUTED


def test_activations_hold_only_at_the_lessons_budget_point(build):
    (only,) = check_activation_overhead(build.run(_sweep(build, {(1, 512): 5.0, (4, 512): 7.0})))
    assert only.verdict is Verdict.INCONCLUSIVE and "T4 budget point b4 s2048 is not among them" in only.why


def test_optimizer_overhead_reads_an_oom_rows_uncapped_states(build):
    eight = {"optimizer": "adamw_8bit", **build.params(EIGHT), **build.gpu()}
    row = build.result(EIGHT, status="oom", **eight, **build.needed(92.0, 95.0))
    (only,) = check_optimizer_overhead(build.run([row]))
    assert only.verdict is Verdict.REFUTED and "40.00 MB" in only.measured
    assert only.points == f"llama-3.1-8b b1 s512: {H200_NEED}"


def test_nominal_size_maps_real_counts_to_the_lesson_examples():
    assert nominal_size(3_212_749_824) == 3
    assert nominal_size(6_738_415_616) == 7
    assert nominal_size(8_030_261_248) == 8
    assert nominal_size(13_015_864_320) == 13
    assert nominal_size(1_235_814_400) is None
