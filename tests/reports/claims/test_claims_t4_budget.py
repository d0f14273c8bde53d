"""reports.claims.t4_budget: the claims of "T4 Budget (15GB VRAM)", on hand-made rows."""

from __future__ import annotations

from reports.claims import Verdict, claim_by_id, evaluate
from reports.claims.calculation import check_adapter_overhead
from reports.claims.t4_budget import check_t4_budget

EIGHT = "llama-3.1-8b"
THREE = "llama-3.2-3b"


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
    evals = check_t4_budget(build.run([row]))
    assert build.pick(evals, "fits").verdict is Verdict.HOLDS
    for component in ("8B model", "LoRA adapters", "Activations", "Total"):
        assert build.pick(evals, component).verdict is Verdict.HOLDS, component
    assert build.pick(evals, "Optimizer").verdict is Verdict.INCONCLUSIVE  # no optimizer_state_bytes
    assert build.pick(evals, "CUDA overhead").verdict is Verdict.REFUTED  # 12.0 - 11.0 GiB = 1.0
    assert build.pick(evals, "Available buffer").verdict is Verdict.REFUTED  # 15 - 12.0 GiB = 3.0


def test_budget_refuted_when_the_setting_runs_out_of_memory(build):
    row = _ladder0(
        build, "oom", **build.weights(EIGHT), load_alloc_gib=5.3, prepare_alloc_gib=7.2, lora_alloc_gib=7.36
    )
    evals = check_t4_budget(build.run([row]))
    fits = build.pick(evals, "fits")
    assert fits.verdict is Verdict.REFUTED and "runs out of memory" in fits.corrected
    assert build.pick(evals, "8B model").verdict is Verdict.REFUTED  # 5.70 GB measured
    activations = build.pick(evals, "Activations")
    assert activations.verdict is Verdict.INCONCLUSIVE and "truncated" in activations.why


def test_budget_inconclusive_on_a_crash_and_not_run_without_the_row(build):
    evals = check_t4_budget(build.run([_ladder0(build, "crashed", reason="segfault")]))
    assert build.pick(evals, "fits").verdict is Verdict.INCONCLUSIVE
    (none,) = check_t4_budget(build.run([build.result(EIGHT)]))
    assert none.verdict is Verdict.NOT_RUN


def test_budget_applies_to_t4_only(build):
    run = build.run([build.result(EIGHT, families="ladder:0", profile="h100", **build.gpu(False))])
    (only,) = evaluate(claim_by_id("t4-budget-8b"), run)
    assert only.verdict is Verdict.NOT_RUN and "profile t4" in only.why


def test_budget_reads_optimizer_states_of_a_trained_row_and_adapters_from_trainable_bytes(build):
    row = _ladder0(build, **build.memory(5.3, 7.2, 7.5, 12.0), optimizer_state_bytes=600_000_000)
    optimizer = build.pick(check_t4_budget(build.run([row])), "Optimizer")
    assert optimizer.verdict is Verdict.HOLDS and "0.60 GB (optimizer_state_bytes)" in optimizer.measured
    cpu = build.result(THREE, device="cpu", **build.params(THREE), trainable_bytes=97_255_424)
    (adapters,) = check_adapter_overhead(build.run([cpu]))
    assert "(trainable_bytes)" in adapters.measured and "0.09 GiB" in adapters.measured


def test_budget_of_an_oom_reads_what_it_needed_uncapped_and_by_how_much_it_misses(build):
    row = _ladder0(
        build,
        "oom",
        **build.weights(EIGHT),
        load_alloc_gib=5.3,
        prepare_alloc_gib=7.2,
        lora_alloc_gib=7.36,
        **build.needed(16.5, 18.1),
    )
    evals = check_t4_budget(build.run([row]))
    fits = build.pick(evals, "fits")
    assert fits.verdict is Verdict.REFUTED
    assert "needs 18.10 GiB" in fits.measured and "misses the T4's 15.0 GiB by 3.10 GiB" in fits.measured
    label = "needed (measured uncapped on NVIDIA H200)"
    for component in ("Optimizer", "Activations", "CUDA overhead", "Total", "Available buffer"):
        evaluation = build.pick(evals, component)
        assert evaluation.verdict in (Verdict.HOLDS, Verdict.REFUTED), component
        assert label in evaluation.measured, component
    assert build.pick(evals, "Optimizer").verdict is Verdict.REFUTED  # 0.04 GB, not 0.6
    assert "-3.10 GiB" in build.pick(evals, "Available buffer").measured
    assert label not in build.pick(evals, "8B model").measured  # the capped run measured its load
    # Deliberately broken: a rerun that ran out of memory even uncapped gives no training figures.
    row.needed.needed_status = "oom"
    evals = check_t4_budget(build.run([row]))
    assert build.pick(evals, "Activations").verdict is Verdict.INCONCLUSIVE
    assert "misses" not in build.pick(evals, "fits").measured
