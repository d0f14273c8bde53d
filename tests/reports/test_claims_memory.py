"""Memory claims: the 7B table, 4x, the formula, training overheads, the 3B load, the T4 budget,
fitting on the T4, the OOM ladder and checkpointing. Each claim's verdicts on hand-made rows."""

from __future__ import annotations

import pytest

from reports import claims as c

EIGHT = "llama-3.1-8b"
THREE = "llama-3.2-3b"
BASE_8B = 8_030_261_248


def claim(claim_id: str) -> c.Claim:
    return next(x for x in c.CLAIMS if x.id == claim_id)


# -- the 7B table: weights ------------------------------------------------------------------------
def test_weights_holds_when_bytes_per_param_scale_to_the_lesson(build):
    rows = [
        build.result(EIGHT, quant_type="none", **build.params(EIGHT), weight_bytes=2 * BASE_8B),
        build.result(EIGHT, **build.params(EIGHT), weight_bytes=BASE_8B // 2),
    ]
    evals = c.check_weights_7b(build.run(rows))
    # 16-bit bytes per parameter scale to any size; 4-bit ones only from a 7B model.
    assert build.verdicts(evals) == ["not_run", "holds", "not_run", "inconclusive"]
    assert "not a 7B model" in build.pick(evals, "INT4").why
    fp16 = build.pick(evals, "FP16 on")
    assert "2.000 bytes/param" in fp16.measured and "14.00 GB" in fp16.measured
    assert "no FP32" in build.pick(evals, "FP32").why and "8-bit" in build.pick(evals, "INT8").why


def test_weights_refuted_with_the_measured_per_param_size(build):
    seven = "mistral-7b"
    rows = [build.result(seven, **build.params(seven), **build.weights(seven))]
    int4 = build.pick(c.check_weights_7b(build.run(rows)), "INT4")
    assert int4.verdict is c.Verdict.REFUTED
    assert "bytes/param" in int4.measured and seven in int4.evidence[0]
    assert "GB" in int4.corrected
    scaled = build.pick(
        c.check_weights_7b(
            build.run([build.result(seven, **build.params(seven), weight_bytes=3_600_000_000)])
        ),
        "INT4",
    )
    assert scaled.verdict is c.Verdict.HOLDS


def test_weights_inconclusive_when_the_16bit_row_failed_at_load(build):
    rows = [build.result(EIGHT, quant_type="none", status="oom"), build.result(EIGHT, **build.params(EIGHT))]
    fp16 = build.pick(c.check_weights_7b(build.run(rows)), "FP16")
    assert fp16.verdict is c.Verdict.INCONCLUSIVE and "1 oom" in fp16.why


def test_weights_not_run_without_a_7_8b_shape(build):
    rows = [build.result(THREE, **build.params(THREE), **build.weights(THREE))]
    evals = c.check_weights_7b(build.run(rows))
    assert build.verdicts(evals) == ["not_run"] * 4


def test_tradeoff_memory_reuses_the_weights_check_for_16_and_4_bit(build):
    rows = [build.result(EIGHT, quant_type="none", **build.params(EIGHT), weight_bytes=2 * BASE_8B)]
    evals = c.check_tradeoff_memory_7b(build.run(rows))
    assert [e.condition.split(" ")[0] for e in evals] == ["FP16", "INT4"]
    assert build.verdicts(evals) == ["holds", "not_run"]


# -- the 7B table: totals with training -----------------------------------------------------------
def _eight_trained(build, peak: float, **fields):
    return build.result(
        EIGHT, **build.params(EIGHT), **build.gpu(), **build.memory(5.3, 7.2, 7.36, peak), **fields
    )


def test_training_total_holds_when_the_lesson_value_is_within_the_range(build):
    rows = [_eight_trained(build, 7.5), _eight_trained(build, 11.0, seq_len=2048)]
    int4 = build.pick(c.check_training_total_7b(build.run(rows)), "INT4")
    assert int4.verdict is c.Verdict.HOLDS
    assert "device" in int4.measured and "not full fine-tuning" in int4.condition


def test_training_total_refuted_when_every_setting_is_far_off(build):
    rows = [_eight_trained(build, 30.0)]
    int4 = build.pick(c.check_training_total_7b(build.run(rows)), "INT4")
    assert int4.verdict is c.Verdict.REFUTED and "33.2 GB" in int4.corrected


def test_training_total_inconclusive_when_nothing_trained_and_not_run_without_rows(build):
    rows = [build.result(EIGHT, status="oom", **build.params(EIGHT), **build.gpu())]
    evals = c.check_training_total_7b(build.run(rows))
    assert build.pick(evals, "INT4").verdict is c.Verdict.INCONCLUSIVE
    assert build.pick(evals, "FP16").verdict is c.Verdict.NOT_RUN


def test_training_total_applies_to_gpu_profiles_only(build):
    run = build.run([build.result(EIGHT, profile="cpu", device="cpu", **build.params(EIGHT))])
    (only,) = c.evaluate(claim("mem7b-training-total"), run)
    assert only.verdict is c.Verdict.NOT_RUN and "cpu" in only.why


# -- cut memory by 4x -----------------------------------------------------------------------------
def test_cut_4x_refuted_with_whole_model_and_linear_ratios(build):
    rows = [
        build.result(THREE, quant_type="none", **build.params(THREE), **build.weights(THREE, "none")),
        build.result(THREE, **build.params(THREE), **build.weights(THREE)),
    ]
    (only,) = c.check_cut_4x(build.run(rows))
    assert only.verdict is c.Verdict.REFUTED
    assert "2.87x (whole model)" in only.measured and "linear layers alone: 3.88x" in only.measured
    assert "2.87x, not 4x" in only.corrected


def test_cut_4x_holds_at_four(build):
    rows = [
        build.result(THREE, quant_type="none", weight_bytes=4_000_000),
        build.result(THREE, weight_bytes=1_020_000),
    ]
    (only,) = c.check_cut_4x(build.run(rows))
    assert only.verdict is c.Verdict.HOLDS and "3.92x" in only.measured


def test_cut_4x_inconclusive_and_not_run(build):
    no_ref = [build.result(THREE, weight_bytes=1), build.result(EIGHT, quant_type="none", weight_bytes=2)]
    (only,) = c.check_cut_4x(build.run(no_ref))
    assert only.verdict is c.Verdict.INCONCLUSIVE and "no 16-bit row of llama-3.2-3b" in only.why
    (none,) = c.check_cut_4x(build.run([build.result(THREE, quant_type="none", weight_bytes=2)]))
    assert none.verdict is c.Verdict.NOT_RUN


# -- the formula ----------------------------------------------------------------------------------
def test_formula_refuted_with_a_byte_breakdown_and_not_run_sizes(build):
    rows = [build.result(EIGHT, **build.params(EIGHT), **build.weights(EIGHT))]
    evals = c.check_formula(build.run(rows))
    assert build.verdicts(evals) == ["not_run", "not_run", "refuted", "not_run"]
    eight = build.pick(evals, "8B")
    assert "1.42x formula" in eight.measured and "non-quantized" in eight.why
    assert "~13B" in build.pick(evals, "13B").why


def test_formula_holds_when_bytes_match_params_times_half(build):
    rows = [build.result(THREE, **build.params(THREE), weight_bytes=3_212_749_824 // 2)]
    assert build.pick(c.check_formula(build.run(rows)), THREE).verdict is c.Verdict.HOLDS


# -- training overheads ---------------------------------------------------------------------------
def test_adapters_hold_and_refute_per_model(build):
    rows = [
        build.result(THREE, **build.params(THREE), **build.gpu(), **build.memory(2.0, 2.8, 3.0, 4.0)),
        build.result(EIGHT, **build.params(EIGHT), **build.gpu(), **build.memory(5.0, 7.0, 8.0, 9.0)),
    ]
    evals = c.check_adapter_overhead(build.run(rows))
    assert build.pick(evals, THREE).verdict is c.Verdict.HOLDS
    eight = build.pick(evals, EIGHT)
    assert eight.verdict is c.Verdict.REFUTED and "1.00 GiB" in eight.corrected
    assert "the seven projections" in eight.condition


def test_adapters_fall_back_to_params_times_dtype_off_cuda(build):
    rows = [build.result(THREE, device="cpu", **build.params(THREE, "bfloat16"))]
    (only,) = c.check_adapter_overhead(build.run(rows))
    assert "trainable_params x 2 bytes" in only.measured


def test_adapters_inconclusive_without_allocator_or_dtype_and_not_run_for_small_models(build):
    rows = [build.result(THREE, device="cpu", total_params=3_237_063_680, trainable_params=24_313_856)]
    (only,) = c.check_adapter_overhead(build.run(rows))
    assert only.verdict is c.Verdict.INCONCLUSIVE
    small = [build.result("smollm2-135m-instruct", **build.params("smollm2-135m-instruct"))]
    (none,) = c.check_adapter_overhead(build.run(small))
    assert none.verdict is c.Verdict.NOT_RUN and "below 2.5B" in none.why


def test_optimizer_overhead_from_optimizer_state_bytes(build):
    rows = [
        build.result(THREE, **build.params(THREE), optimizer_state_bytes=1_500_000_000),
        build.result(EIGHT, optimizer="adamw_8bit", **build.params(EIGHT), optimizer_state_bytes=335_544_320),
    ]
    evals = c.check_optimizer_overhead(build.run(rows))
    assert build.pick(evals, THREE).verdict is c.Verdict.HOLDS
    eight = build.pick(evals, "adamw_8bit")
    assert eight.verdict is c.Verdict.REFUTED and "0.34 GB" in eight.corrected
    assert "41,943,040 trainable params" in eight.measured


def test_optimizer_overhead_inconclusive_without_the_column_and_not_run_without_rows(build):
    (only,) = c.check_optimizer_overhead(build.run([build.result(THREE, **build.params(THREE))]))
    assert only.verdict is c.Verdict.INCONCLUSIVE and "optimizer_state_bytes" in only.why
    (none,) = c.check_optimizer_overhead(build.run([build.result(THREE, quant_type="none")]))
    assert none.verdict is c.Verdict.NOT_RUN


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
    (only,) = c.check_activation_overhead(build.run(_sweep(build, {(1, 512): 5.0, (4, 2048): 10.0})))
    assert only.verdict is c.Verdict.HOLDS and "checkpointing on" in only.condition


def test_activations_refuted_with_the_measured_range(build):
    (only,) = c.check_activation_overhead(build.run(_sweep(build, {(1, 512): 3.2, (4, 2048): 9.5})))
    assert only.verdict is c.Verdict.REFUTED
    assert "0.30 to 6.60 GiB" in only.corrected and "lowest at b1 s512" in only.measured


def test_activations_inconclusive_and_not_run(build):
    (failed,) = c.check_activation_overhead(build.run(_sweep(build, {(1, 512): 3.0}, status="oom")))
    assert failed.verdict is c.Verdict.INCONCLUSIVE
    (none,) = c.check_activation_overhead(build.run([build.result(THREE)]))
    assert none.verdict is c.Verdict.NOT_RUN


# -- the T4 budget ---------------------------------------------------------------------------------
def _ladder0(build, status: str = "ok", **fields):
    return build.result(
        EIGHT,
        families="ladder:0",
        status=status,
        batch_size=4,
        seq_len=2048,
        gradient_checkpointing=False,
        optimizer="adamw_8bit",
        **build.params(EIGHT),
        **build.gpu(),
        **fields,
    )


def test_budget_holds_component_by_component_when_the_lesson_numbers_are_met(build):
    gib = 1e9 / 2**30  # the lesson's GB as GiB
    row = _ladder0(
        build,
        weight_bytes=int(4.2e9),
        load_alloc_gib=4.0,
        prepare_alloc_gib=4.2,
        lora_alloc_gib=4.5,
        peak_alloc_gib=10.3,
        peak_reserved_gib=11.0,
        nvml_base_gib=0.5,
        nvml_peak_gib=0.5 + 12.9 * gib,
    )
    evals = c.check_t4_budget(build.run([row]))
    assert build.pick(evals, "fits").verdict is c.Verdict.HOLDS
    for component in ("8B model", "LoRA adapters", "Activations", "Total"):
        assert build.pick(evals, component).verdict is c.Verdict.HOLDS, component
    assert build.pick(evals, "Optimizer").verdict is c.Verdict.INCONCLUSIVE  # no optimizer_state_bytes
    assert build.pick(evals, "CUDA overhead").verdict is c.Verdict.REFUTED  # 12.0 - 11.0 GiB = 1.0
    assert build.pick(evals, "Available buffer").verdict is c.Verdict.REFUTED  # 15 - 12.0 GiB = 3.0


def test_budget_refuted_when_the_setting_runs_out_of_memory(build):
    row = _ladder0(
        build, "oom", **build.weights(EIGHT), load_alloc_gib=5.3, prepare_alloc_gib=7.2, lora_alloc_gib=7.36
    )
    evals = c.check_t4_budget(build.run([row]))
    fits = build.pick(evals, "fits")
    assert fits.verdict is c.Verdict.REFUTED and "runs out of memory" in fits.corrected
    assert build.pick(evals, "8B model").verdict is c.Verdict.REFUTED  # 5.70 GB measured
    activations = build.pick(evals, "Activations")
    assert activations.verdict is c.Verdict.INCONCLUSIVE and "truncated" in activations.why


def test_budget_inconclusive_on_a_crash_and_not_run_without_the_row(build):
    evals = c.check_t4_budget(build.run([_ladder0(build, "crashed", reason="segfault")]))
    assert build.pick(evals, "fits").verdict is c.Verdict.INCONCLUSIVE
    (none,) = c.check_t4_budget(build.run([build.result(EIGHT)]))
    assert none.verdict is c.Verdict.NOT_RUN


def test_budget_applies_to_t4_only(build):
    run = build.run([build.result(EIGHT, families="ladder:0", profile="h100", **build.gpu(False))])
    (only,) = c.evaluate(claim("t4-budget-8b"), run)
    assert only.verdict is c.Verdict.NOT_RUN and "profile t4" in only.why


# -- the 3B model on the T4 -------------------------------------------------------------------------
def _three_loaded(build, alloc: float, reserved: float, **fields):
    fields = {"compute_dtype": "fp16", **fields}
    return build.result(
        THREE,
        **build.params(THREE),
        **build.gpu(),
        load_alloc_gib=alloc,
        load_reserved_gib=reserved,
        **fields,
    )


def test_3b_load_holds_and_refutes_allocated_and_reserved(build):
    evals = c.check_3b_load(build.run([_three_loaded(build, 2.80, 3.6)]))
    assert build.pick(evals, "allocated").verdict is c.Verdict.HOLDS
    reserved = build.pick(evals, "reserved")
    assert reserved.verdict is c.Verdict.REFUTED and "3.60 GiB" in reserved.corrected


def test_3b_load_uses_the_lessons_compute_dtype(build):
    rows = [_three_loaded(build, 2.8, 3.1), _three_loaded(build, 4.0, 4.2, compute_dtype="fp32")]
    evals = c.check_3b_load(build.run(rows))
    assert len(evals) == 2 and all("fp16" in e.condition for e in evals)
    assert build.verdicts(evals) == ["holds", "holds"]


def test_3b_load_inconclusive_not_run_and_gpu_only(build):
    (failed,) = c.check_3b_load(build.run([build.result(THREE, status="crashed", **build.gpu())]))
    assert failed.verdict is c.Verdict.INCONCLUSIVE
    (none,) = c.check_3b_load(build.run([build.result(EIGHT, **build.gpu())]))
    assert none.verdict is c.Verdict.NOT_RUN
    cpu = build.run(
        [build.result(THREE, profile="cpu", device="cpu", load_alloc_gib=3.0, load_reserved_gib=3.0)]
    )
    assert c.evaluate(claim("t4-3b-load"), cpu)[0].verdict is c.Verdict.NOT_RUN


def test_3b_headroom(build):
    evals = c.check_3b_headroom(build.run([_three_loaded(build, 2.9, 3.0)]))
    assert build.verdicts(evals) == ["holds", "holds"]
    assert "12.00 GiB" in build.pick(evals, "leaving").measured
    evals = c.check_3b_headroom(build.run([_three_loaded(build, 2.07, 2.17)]))
    assert build.pick(evals, "~3GB").verdict is c.Verdict.REFUTED
    assert build.pick(evals, "leaving").verdict is c.Verdict.HOLDS  # 12.83 GiB is within 15%
    evals = c.check_3b_headroom(build.run([_three_loaded(build, 6.0, 7.0)]))
    assert build.pick(evals, "leaving").verdict is c.Verdict.REFUTED
    assert c.check_3b_headroom(build.run([build.result(EIGHT)]))[0].verdict is c.Verdict.NOT_RUN


# -- fitting on the T4 ------------------------------------------------------------------------------
def _compat_8b(build, status: str = "ok", peak: float | None = 8.0):
    memory = build.memory(5.3, 7.2, 7.36, peak) if peak else {}
    return build.result(
        EIGHT, families="compat", status=status, **build.params(EIGHT), **build.gpu(), **memory
    )


def test_t4_fits_7b(build):
    (fits,) = c.check_t4_fits_7b(build.run([_compat_8b(build)]))
    assert fits.verdict is c.Verdict.HOLDS and "left" in fits.measured
    (tight,) = c.check_t4_fits_7b(build.run([_compat_8b(build, peak=13.8)]))
    assert tight.verdict is c.Verdict.REFUTED and "only" in tight.corrected
    (oom,) = c.check_t4_fits_7b(build.run([_compat_8b(build, "oom", None)]))
    assert oom.verdict is c.Verdict.REFUTED
    (crashed,) = c.check_t4_fits_7b(build.run([_compat_8b(build, "timeout", None)]))
    assert crashed.verdict is c.Verdict.INCONCLUSIVE
    (none,) = c.check_t4_fits_7b(build.run([build.result(THREE, families="compat")]))
    assert none.verdict is c.Verdict.NOT_RUN


# -- the OOM ladder and checkpointing ---------------------------------------------------------------
LADDER = [
    {"batch_size": 4},
    {"batch_size": 2, "grad_accum": 2},
    {"batch_size": 1, "grad_accum": 4},
    {"batch_size": 1, "grad_accum": 4, "seq_len": 1024},
    {"batch_size": 1, "grad_accum": 4, "seq_len": 1024, "gradient_checkpointing": True},
]


def _ladder(build, outcomes: list[tuple[str, float | None]]):
    rows = []
    for k, (status, peak) in enumerate(outcomes):
        fields = {"seq_len": 2048, "gradient_checkpointing": False, "optimizer": "adamw_8bit", **LADDER[k]}
        memory = build.memory(5.3, 7.2, 7.36, peak) if peak else {}
        rows.append(
            build.result(EIGHT, families=f"ladder:{k}", status=status, **build.gpu(), **fields, **memory)
        )
    return rows


def test_ladder_each_step_gets_its_own_verdict(build):
    rows = _ladder(build, [("oom", None), ("oom", None), ("ok", 13.0), ("ok", 10.0), ("ok", 10.5)])
    evals = c.check_oom_ladder(build.run(rows))
    assert build.verdicts(evals) == ["inconclusive", "holds", "holds", "refuted"]
    assert "batch_size 4 -> 2" in evals[0].condition
    assert "gradient_checkpointing False -> True" in evals[3].condition
    assert "10.00 -> 10.50 GiB" in evals[3].measured


def test_ladder_refuted_when_a_step_runs_out_of_memory_and_not_run_when_missing(build):
    rows = _ladder(build, [("ok", 12.0), ("oom", None)])
    evals = c.check_oom_ladder(build.run(rows))
    assert build.verdicts(evals) == ["refuted", "not_run", "not_run", "not_run"]
    assert "ladder:2" in evals[1].why


def test_gc_reduces_activations(build):
    base = {"families": "gc", **build.gpu()}
    on = build.result(THREE, **base, **build.memory(2.0, 2.8, 2.9, 3.6), **build.training(1800.0))
    off = build.result(THREE, gradient_checkpointing=False, **base, **build.memory(2.0, 2.8, 2.9, 5.2))
    (only,) = c.check_gc_activations(build.run([on, off]))
    assert only.verdict is c.Verdict.HOLDS and "0.70 GiB" in only.measured
    worse = build.result(THREE, gradient_checkpointing=False, **base, **build.memory(2.0, 2.8, 2.9, 3.0))
    assert c.check_gc_activations(build.run([on, worse]))[0].verdict is c.Verdict.REFUTED
    oom = build.result(THREE, gradient_checkpointing=False, status="oom", **base)
    assert c.check_gc_activations(build.run([on, oom]))[0].verdict is c.Verdict.HOLDS


def test_gc_inconclusive_and_not_run(build):
    base = {"families": "gc", **build.gpu()}
    on = build.result(THREE, status="oom", **base)
    off = build.result(THREE, gradient_checkpointing=False, status="oom", **base)
    assert c.check_gc_activations(build.run([on, off]))[0].verdict is c.Verdict.INCONCLUSIVE
    odd = build.result(THREE, **base, **build.memory(2.0, 2.8, 2.9, 2.5))
    ok_off = build.result(THREE, gradient_checkpointing=False, **base, **build.memory(2.0, 2.8, 2.9, 5.0))
    (inconsistent,) = c.check_gc_activations(build.run([odd, ok_off]))
    assert inconsistent.verdict is c.Verdict.INCONCLUSIVE and "inconsistent" in inconsistent.why
    assert (
        c.check_gc_activations(build.run([build.result(THREE, **build.gpu())]))[0].verdict
        is c.Verdict.NOT_RUN
    )


@pytest.mark.parametrize("claim_id", ["oom-ladder", "gc-activations", "overhead-activations"])
def test_allocator_claims_do_not_apply_to_the_cpu_profile(build, claim_id):
    run = build.run([build.result(THREE, profile="cpu", device="cpu", families="sweep,gc,ladder:0")])
    (only,) = c.evaluate(claim(claim_id), run)
    assert only.verdict is c.Verdict.NOT_RUN


def test_3b_load_not_run_without_the_lessons_compute_dtype(build):
    (only,) = c.check_3b_load(build.run([_three_loaded(build, 2.8, 3.1, compute_dtype="fp32")]))
    assert only.verdict is c.Verdict.NOT_RUN and "fp32" in only.why


def test_t4_fits_inconclusive_without_a_peak(build):
    (only,) = c.check_t4_fits_7b(build.run([_compat_8b(build, "ok", None)]))
    assert only.verdict is c.Verdict.INCONCLUSIVE and "no peak" in only.why


def test_ladder_and_gc_without_peaks_are_inconclusive(build):
    rows = _ladder(build, [("ok", None), ("ok", None)])
    assert c.check_oom_ladder(build.run(rows))[0].verdict is c.Verdict.INCONCLUSIVE
    base = {"families": "gc", **build.gpu()}
    on, off = build.result(THREE, **base), build.result(THREE, gradient_checkpointing=False, **base)
    (only,) = c.check_gc_activations(build.run([on, off]))
    assert only.verdict is c.Verdict.INCONCLUSIVE and "missing" in only.why
    crashed = build.result(THREE, status="crashed", **base)
    (none,) = c.check_gc_activations(build.run([crashed]))
    assert none.verdict is c.Verdict.INCONCLUSIVE and "1 crashed" in none.why


def test_cut_4x_is_judged_on_the_lessons_model_sizes(build):
    rows = [
        build.result("tiny", quant_type="none", weight_bytes=1_000_000),
        build.result("tiny", weight_bytes=500_000),
    ]
    (only,) = c.check_cut_4x(build.run(rows))
    assert only.verdict is c.Verdict.NOT_RUN and "not judged: tiny" in only.why


def test_3b_headroom_inconclusive_when_the_3b_rows_failed(build):
    (only,) = c.check_3b_headroom(build.run([build.result(THREE, status="crashed", **build.gpu())]))
    assert only.verdict is c.Verdict.INCONCLUSIVE and "1 crashed" in only.why


def test_tradeoff_memory_refuted_and_inconclusive(build):
    rows = [
        build.result(EIGHT, quant_type="none", status="oom"),
        build.result(EIGHT, **build.params(EIGHT), **build.weights(EIGHT)),
    ]
    evals = c.check_tradeoff_memory_7b(build.run(rows))
    assert build.verdicts(evals) == ["inconclusive", "inconclusive"]  # 16-bit oom; 4-bit not a 7B model


def test_budget_reads_optimizer_states_of_a_trained_row_and_adapters_from_trainable_bytes(build):
    row = _ladder0(build, **build.memory(5.3, 7.2, 7.5, 12.0), optimizer_state_bytes=600_000_000)
    optimizer = build.pick(c.check_t4_budget(build.run([row])), "Optimizer")
    assert optimizer.verdict is c.Verdict.HOLDS and "0.60 GB (optimizer_state_bytes)" in optimizer.measured
    cpu = build.result(THREE, device="cpu", **build.params(THREE), trainable_bytes=97_255_424)
    (adapters,) = c.check_adapter_overhead(build.run([cpu]))
    assert "(trainable_bytes)" in adapters.measured and "0.09 GiB" in adapters.measured
