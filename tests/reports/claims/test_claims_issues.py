"""reports.claims.issues: the claims of "Common Issues and Solutions", on hand-made rows."""

from __future__ import annotations

from reports.claims import Verdict, claim_by_id, evaluate
from reports.claims.issues import (
    check_gc_activations,
    check_nan_bf16,
    check_nan_lr,
    check_oom_ladder,
    check_qlora_slower,
)

EIGHT = "llama-3.1-8b"
THREE = "llama-3.2-3b"
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
    evals = check_oom_ladder(build.run(rows))
    assert build.verdicts(evals) == ["inconclusive", "holds", "holds", "refuted"]
    assert "batch_size 4 -> 2" in evals[0].condition
    assert "gradient_checkpointing False -> True" in evals[3].condition
    assert "10.00 -> 10.50 GiB" in evals[3].measured


def test_ladder_refuted_when_a_step_runs_out_of_memory_and_not_run_when_missing(build):
    rows = _ladder(build, [("ok", 12.0), ("oom", None)])
    evals = check_oom_ladder(build.run(rows))
    assert build.verdicts(evals) == ["refuted", "not_run", "not_run", "not_run"]
    assert "ladder:2" in evals[1].why


def test_gc_reduces_activations(build):
    base = {"families": "gc", **build.gpu()}
    on = build.result(THREE, **base, **build.memory(2.0, 2.8, 2.9, 3.6), **build.training(1800.0))
    off = build.result(THREE, gradient_checkpointing=False, **base, **build.memory(2.0, 2.8, 2.9, 5.2))
    (only,) = check_gc_activations(build.run([on, off]))
    assert only.verdict is Verdict.HOLDS and "0.70 GiB" in only.measured
    worse = build.result(THREE, gradient_checkpointing=False, **base, **build.memory(2.0, 2.8, 2.9, 3.0))
    assert check_gc_activations(build.run([on, worse]))[0].verdict is Verdict.REFUTED
    oom = build.result(THREE, gradient_checkpointing=False, status="oom", **base)
    assert check_gc_activations(build.run([on, oom]))[0].verdict is Verdict.HOLDS


def test_gc_compares_an_oom_point_by_what_it_needed_uncapped(build):
    base = {"families": "gc", **build.gpu()}
    on = build.result(EIGHT, **base, **build.memory(5.3, 7.2, 7.36, 10.6))
    off = build.result(EIGHT, gradient_checkpointing=False, status="oom", **base, **build.needed(19.2, 20.6))
    (only,) = check_gc_activations(build.run([on, off]))
    assert only.verdict is Verdict.HOLDS
    assert "3.24 GiB (3.48 GB) with vs 11.84 GiB (12.71 GB) without" in only.measured
    assert "without: needed (measured uncapped on NVIDIA H200)" in only.measured
    assert only.points == "llama-3.1-8b b1 s512, b1 s512 nogc: needed (measured uncapped on NVIDIA H200)"
    # An uncapped need that still shows no saving refutes, as a measured row would.
    worse = build.result(
        EIGHT, gradient_checkpointing=False, status="oom", **base, **build.needed(10.0, 11.0)
    )
    assert check_gc_activations(build.run([on, worse]))[0].verdict is Verdict.REFUTED


def test_gc_inconclusive_and_not_run(build):
    base = {"families": "gc", **build.gpu()}
    on = build.result(THREE, status="oom", **base)
    off = build.result(THREE, gradient_checkpointing=False, status="oom", **base)
    assert check_gc_activations(build.run([on, off]))[0].verdict is Verdict.INCONCLUSIVE
    odd = build.result(THREE, **base, **build.memory(2.0, 2.8, 2.9, 2.5))
    ok_off = build.result(THREE, gradient_checkpointing=False, **base, **build.memory(2.0, 2.8, 2.9, 5.0))
    (inconsistent,) = check_gc_activations(build.run([odd, ok_off]))
    assert inconsistent.verdict is Verdict.INCONCLUSIVE and "inconsistent" in inconsistent.why
    assert check_gc_activations(build.run([build.result(THREE, **build.gpu())]))[0].verdict is Verdict.NOT_RUN


def test_ladder_and_gc_without_peaks_are_inconclusive(build):
    rows = _ladder(build, [("ok", None), ("ok", None)])
    assert check_oom_ladder(build.run(rows))[0].verdict is Verdict.INCONCLUSIVE
    base = {"families": "gc", **build.gpu()}
    on, off = build.result(THREE, **base), build.result(THREE, gradient_checkpointing=False, **base)
    (only,) = check_gc_activations(build.run([on, off]))
    assert only.verdict is Verdict.INCONCLUSIVE and "missing" in only.why
    crashed = build.result(THREE, status="crashed", **base)
    (none,) = check_gc_activations(build.run([crashed]))
    assert none.verdict is Verdict.INCONCLUSIVE and "1 crashed" in none.why


# -- QLoRA vs LoRA speed ----------------------------------------------------------------------------
def _speed(build, quant: str, tps: float, spread: float = 0.04, **fields):
    return build.result(
        THREE,
        quant_type=quant,
        compute_dtype="fp16",
        **build.gpu(),
        **build.training(tps, spread=spread),
        **fields,
    )


def test_qlora_slower_per_point_and_overall(build):
    rows = [
        *build.in_processes(_speed(build, "nf4", 0), [850.0, 852.0, 848.0]),
        *build.in_processes(_speed(build, "none", 0), [1000.0, 1003.0, 998.0]),
        *build.in_processes(_speed(build, "nf4", 0, seq_len=2048), [500.0, 505.0, 497.0]),
        *build.in_processes(_speed(build, "none", 0, seq_len=2048), [1000.0, 990.0, 1004.0]),
    ]
    evals = check_qlora_slower(build.run(rows))
    near = build.pick(evals, "s512")
    assert near.verdict is Verdict.HOLDS and "over 3 and 3 processes" in near.measured
    far = build.pick(evals, "s2048")
    assert far.verdict is Verdict.REFUTED and "+50%" in far.corrected
    overall = build.pick(evals, "overall")
    assert overall.verdict is Verdict.REFUTED and "+15.0% to +50.0%" in overall.measured


def test_qlora_slower_decides_on_the_interval_not_the_point(build):
    # 15% slower, inside 10-20%, but one process each: +-15% noise, so the interval straddles.
    rows = [_speed(build, "nf4", 850.0), _speed(build, "none", 1000.0)]
    point, overall = check_qlora_slower(build.run(rows))
    assert point.verdict is Verdict.INCONCLUSIVE and "straddles" in point.why
    assert "one process each" in point.measured and overall.verdict is Verdict.INCONCLUSIVE
    # 15% slower in three processes each, but with a wide spread between them: still straddles.
    wide = [
        *build.in_processes(_speed(build, "nf4", 0), [700.0, 850.0, 990.0]),
        *build.in_processes(_speed(build, "none", 0), [1000.0, 1000.0, 1000.0]),
    ]
    assert build.verdicts(check_qlora_slower(build.run(wide))) == ["inconclusive", "inconclusive"]
    # Beyond the range by more than the noise floor (15% between processes) is a refutation.
    far = [_speed(build, "nf4", 550.0, spread=0.02), _speed(build, "none", 1000.0, spread=0.02)]
    assert build.verdicts(check_qlora_slower(build.run(far))) == ["refuted", "refuted"]


def test_qlora_slower_leaves_host_bound_points_out(build):
    bound = [
        *build.in_processes(_speed(build, "nf4", 0, host_bound=False), [850.0, 851.0, 849.0]),
        *build.in_processes(_speed(build, "none", 0, host_bound=False), [1000.0, 1001.0, 999.0]),
    ]
    host = [
        *build.in_processes(_speed(build, "nf4", 0, seq_len=2048, host_bound=True), [500.0, 500.0, 501.0]),
        *build.in_processes(_speed(build, "none", 0, seq_len=2048, host_bound=False), [1000.0] * 3),
    ]
    point, overall = check_qlora_slower(build.run(bound + host))
    assert point.verdict is Verdict.HOLDS and "s512" in point.condition
    assert overall.verdict is Verdict.HOLDS and "host-bound, not judged on speed" in overall.why
    assert "s2048" in overall.why
    (only,) = check_qlora_slower(build.run(host))
    assert only.verdict is Verdict.INCONCLUSIVE and "host-bound" in only.measured


def test_qlora_slower_names_the_prepare_condition_and_needs_a_reference(build):
    rows = [
        *build.in_processes(_speed(build, "nf4", 0, prepare_kbit=False), [880.0, 881.0, 879.0]),
        *build.in_processes(_speed(build, "none", 0), [1000.0, 1000.0, 1001.0]),
    ]
    evals = check_qlora_slower(build.run(rows))
    assert "prepare_kbit off" in evals[0].condition
    assert build.verdicts(evals) == ["holds", "holds"]
    (none,) = check_qlora_slower(build.run([_speed(build, "nf4", 880.0)]))
    assert none.verdict is Verdict.NOT_RUN
    cpu = build.run([build.result(THREE, profile="cpu", device="cpu")])
    assert evaluate(claim_by_id("qlora-slower"), cpu)[0].verdict is Verdict.NOT_RUN


def test_qlora_slower_inconclusive_when_no_row_ran(build):
    rows = [_speed(build, "nf4", 850.0), _speed(build, "none", 1000.0)]
    for row in rows:
        row.status = "timeout"
    (only,) = check_qlora_slower(build.run(rows))
    assert only.verdict is Verdict.INCONCLUSIVE and "2 timeout" in only.why


# -- the NaN advice ---------------------------------------------------------------------------------
def _grid(build, engine="loop", **finals):
    """Rows of the nan family: `fp16_0p1=None` is fp16 at lr 0.1 non-finite at step 1, a number
    its final loss (the first is 3.0)."""
    rows = []
    for key, final in finals.items():
        dtype, lr = key.split("_")
        row = build.stability(dtype, float(lr.replace("p", ".")), final, engine=engine)
        row.families = "nan"
        rows.append(row)
    return rows


def test_nan_lr_holds_or_refuted_per_engine_with_the_step(build):
    loop = _grid(build, fp16_0p0001=2.5, fp16_0p1=None, fp16_1=None)
    trainer = _grid(build, "trainer", fp16_0p0001=None, fp16_0p1=None)
    evals = check_nan_lr(build.run(loop + trainer))
    held, bad = build.pick(evals, "loop"), build.pick(evals, "trainer")
    assert held.verdict is Verdict.HOLDS and "lr 0.1" in held.condition  # the lowest failing rate
    assert "lr 0.1: non-finite at step 1" in held.measured and "lr 0.0001: fine" in held.measured
    assert bad.verdict is Verdict.REFUTED and "non-finite at step 1" in bad.corrected
    (diverging,) = check_nan_lr(build.run(_grid(build, fp16_0p0001=4.5, fp16_0p1=None)))
    assert diverging.verdict is Verdict.REFUTED and "diverging" in diverging.corrected


def test_nan_lr_inconclusive_when_the_grid_never_failed_and_not_run(build):
    assert check_nan_lr(build.run([build.result(THREE)]))[0].verdict is Verdict.NOT_RUN
    (untested,) = check_nan_lr(build.run(_grid(build, fp16_0p0001=2.5, fp16_1=2.4)))
    assert untested.verdict is Verdict.INCONCLUSIVE and "never reached a failure" in untested.why
    assert "up to lr 1" in untested.why
    (no_low,) = check_nan_lr(build.run(_grid(build, fp16_0p1=None)))
    assert no_low.verdict is Verdict.INCONCLUSIVE and "1e-4" in no_low.why


def test_nan_bf16_at_the_failure_point(build):
    (ok,) = check_nan_bf16(build.run(_grid(build, fp16_0p1=None, bf16_0p1=2.8)))
    assert ok.verdict is Verdict.HOLDS and "fp16 non-finite at step 1; bf16 fine" in ok.measured
    (bad,) = check_nan_bf16(build.run(_grid(build, fp16_0p1=None, bf16_0p1=None)))
    assert bad.verdict is Verdict.REFUTED and "bf16 at lr 0.1 was non-finite at step 1" in bad.corrected
    (diverging,) = check_nan_bf16(build.run(_grid(build, fp16_0p1=None, bf16_0p1=9.0)))
    assert diverging.verdict is Verdict.REFUTED and "finite but diverging" in diverging.corrected
    (untested,) = check_nan_bf16(build.run(_grid(build, fp16_0p1=2.9, bf16_0p1=2.8)))
    assert untested.verdict is Verdict.INCONCLUSIVE and "never reached a failure" in untested.why
    (missing,) = check_nan_bf16(build.run(_grid(build, fp16_0p1=None)))
    assert missing.verdict is Verdict.INCONCLUSIVE and "no bf16 row" in missing.why
    assert check_nan_bf16(build.run([]))[0].verdict is Verdict.NOT_RUN


def test_a_remedy_that_stopped_before_the_failing_step_is_not_compared(build):
    rows = _grid(build, fp16_0p1=None, bf16_0p1=2.8, fp16_0p0001=2.5)
    failure = rows[0]
    failure.training.losses, failure.training.first_nonfinite_step = [3.0] * 14 + [float("nan")], 14
    for check in (check_nan_bf16, check_nan_lr):
        (only,) = check(build.run(rows))  # the remedies trained 10 steps; fp16 failed at the 15th
        assert only.verdict is Verdict.INCONCLUSIVE, check
        assert "trained 10 steps x 128 tokens" in only.why and "15 steps" in only.why
        assert only.why.endswith(": not compared")
    failure.training.losses, failure.training.first_nonfinite_step = [3.0] * 9 + [float("nan")], 9
    assert check_nan_bf16(build.run(rows))[0].verdict is Verdict.HOLDS  # went through step 10


# -- the ladder with what each OOM needed ----------------------------------------------
H200 = "NVIDIA H200"


def _ladder_with_need(build, peaks: list[tuple[str, float]]):
    """Ladder rows: ("oom", needed peak) or ("ok", capped peak)."""
    rows = _ladder(build, [(status, peak if status == "ok" else None) for status, peak in peaks])
    for row, (status, peak) in zip(rows, peaks):
        row.hardware.memory_cap_gib = 14.49
        if status == "oom":
            row.set_fields(build.needed(peak, peak + 1.0))
    return rows


def test_ladder_compares_what_each_oom_needed_and_decides_every_step(build):
    rows = _ladder_with_need(build, [("oom", 21.0), ("oom", 17.5), ("oom", 16.0), ("oom", 15.2), ("ok", 9.0)])
    evals = check_oom_ladder(build.run(rows))
    assert build.verdicts(evals) == ["holds"] * 4
    assert "peak alloc 21.00 -> 17.50 GiB" in evals[0].measured
    assert f"ladder:0 needed (measured uncapped on {H200})" in evals[0].measured
    assert "peak alloc 15.20 -> 9.00 GiB" in evals[3].measured
    assert "ladder:3 needed" in evals[3].measured and "ladder:4 needed" not in evals[3].measured


def test_ladder_refuted_when_a_needed_peak_rises(build):
    # Deliberately broken: step 2 needs more than step 1.
    rows = _ladder_with_need(build, [("oom", 21.0), ("oom", 17.5), ("oom", 18.5), ("oom", 15.2), ("ok", 9.0)])
    evals = check_oom_ladder(build.run(rows))
    assert build.verdicts(evals) == ["holds", "refuted", "holds", "holds"]
    assert "raised peak memory" in evals[1].corrected


def test_ladder_needed_of_an_oom_even_uncapped_is_no_peak(build):
    rows = _ladder_with_need(build, [("oom", 21.0), ("oom", 17.5)])
    rows[1].needed.needed_status = "oom"  # even the host could not hold it: its peak is truncated
    assert check_oom_ladder(build.run(rows))[0].verdict is Verdict.INCONCLUSIVE
