"""reports.claims.compute_dtype: the claims of "Compute Data Type", on hand-made rows."""

from __future__ import annotations

import dataclasses

from qlora_core.cases.gpus import PROFILES
from reports.claims import Verdict, claim_by_id, evaluate
from reports.claims.compute_dtype import check_bf16_quality, check_dtype_speed, check_t4_bf16

THREE = "llama-3.2-3b"


# -- compute dtype ----------------------------------------------------------------------------------
def test_dtype_speed(build):
    def row(dtype: str, tps: float):
        return build.result(THREE, compute_dtype=dtype, **build.gpu(), **build.training(tps))

    evals = check_dtype_speed(build.run([row("fp16", 1000.0), row("bf16", 1100.0), row("fp32", 400.0)]))
    assert build.verdicts(evals) == ["holds", "holds"]
    assert "fp32 at 0.400x" in build.pick(evals, "fp32 vs fp16").measured
    # Not slower even allowing the cross-process noise floor (fp32 at 1.2x): refuted.
    evals = check_dtype_speed(build.run([row("fp16", 1000.0), row("fp32", 1200.0)]))
    assert build.verdicts(evals) == ["refuted", "not_run"]
    assert "not 'Slow'" in evals[0].corrected
    evals = check_dtype_speed(build.run([row("fp16", 1000.0), row("fp32", 1000.0)]))
    assert build.verdicts(evals) == ["inconclusive", "not_run"]
    evals = check_dtype_speed(build.run([row("fp16", 1000.0), row("fp32", 950.0)]))
    assert build.verdicts(evals)[0] == "inconclusive"
    # 5% slower in three processes each, tightly: the whole interval above 0.9, refuted.
    close = build.in_processes(row("fp16", 0), [1000.0, 1001.0, 999.0])
    close += build.in_processes(row("fp32", 0), [950.0, 951.0, 949.0])
    assert build.verdicts(check_dtype_speed(build.run(close)))[0] == "refuted"
    host = [r.replaced(host_bound=True) for r in close]
    (left_out, _) = check_dtype_speed(build.run(host))
    assert left_out.verdict.value == "inconclusive" and "host-bound" in left_out.measured
    assert build.verdicts(check_dtype_speed(build.run([row("fp16", 1000.0)]))) == ["not_run"]


def test_bf16_quality_per_learning_rate(build):
    rows = [
        build.stability("fp16", 1e-4, 2.90),
        build.stability("bf16", 1e-4, 2.80),
        build.stability("fp16", 2e-4, 2.80),
        build.stability("bf16", 2e-4, 2.81),
        build.stability("fp16", 1e-3, None),
        build.stability("bf16", 1e-3, 2.70),
    ]
    evals = check_bf16_quality(build.run(rows))
    assert build.verdicts(evals) == ["holds", "inconclusive", "holds"]
    assert "fp16 NaN at step 1" in build.pick(evals, "lr 0.001").measured


def test_bf16_quality_refuted(build):
    worse = [build.stability("fp16", 1e-4, 2.5), build.stability("bf16", 1e-4, 2.9)]
    assert check_bf16_quality(build.run(worse))[0].verdict is Verdict.REFUTED
    nan = [build.stability("fp16", 1e-4, 2.5), build.stability("bf16", 1e-4, None)]
    (only,) = check_bf16_quality(build.run(nan))
    assert only.verdict is Verdict.REFUTED and "bf16 went NaN" in only.corrected


def test_bf16_quality_not_run_and_inconclusive(build):
    assert check_bf16_quality(build.run([build.result(THREE)]))[0].verdict is Verdict.NOT_RUN
    crashed = build.stability("fp16", 1e-4, 2.5)
    crashed.status = "crashed"
    (only,) = check_bf16_quality(build.run([crashed]))
    assert only.verdict is Verdict.INCONCLUSIVE and "1 crashed" in only.why


# -- bf16 on the T4 -----------------------------------------------------------------------------------
def _t4(build, dtype: str, status: str = "ok", emulated: bool = True, tps: float = 1000.0):
    return build.result(
        THREE, compute_dtype=dtype, status=status, **build.gpu(emulated), **build.training(tps)
    )


def test_t4_bf16_emulated_is_a_datasheet_fact_plus_inconclusive_runs(build):
    evals = check_t4_bf16(build.run([_t4(build, "bf16"), _t4(build, "fp16")]))
    hardware = build.pick(evals, "hardware")
    assert hardware.verdict is Verdict.HOLDS and "datasheet" in hardware.why and "7.5" in hardware.measured
    runs = build.pick(evals, "bf16 runs")
    assert runs.verdict is Verdict.INCONCLUSIVE and "NVIDIA H200" in runs.why
    assert build.pick(evals, "speed").verdict is Verdict.INCONCLUSIVE


def test_t4_bf16_on_a_real_t4(build):
    rows = [_t4(build, "bf16", emulated=False, tps=300.0), _t4(build, "fp16", emulated=False)]
    evals = check_t4_bf16(build.run(rows))
    hardware = build.pick(evals, "hardware")
    assert hardware.verdict is Verdict.HOLDS and "bf16_native = [False]" in hardware.measured
    runs = build.pick(evals, "bf16 runs")
    assert runs.verdict is Verdict.REFUTED and "runs on it" in runs.corrected
    assert build.pick(evals, "speed").verdict is Verdict.HOLDS
    rows = [_t4(build, "bf16", "unsupported", emulated=False), _t4(build, "fp16", emulated=False)]
    evals = check_t4_bf16(build.run(rows))
    assert build.pick(evals, "bf16 runs").verdict is Verdict.HOLDS
    assert build.pick(evals, "speed").verdict is Verdict.NOT_RUN


def test_t4_bf16_without_bf16_rows_and_on_other_profiles(build):
    evals = check_t4_bf16(build.run([_t4(build, "fp16", emulated=False)]))
    assert build.pick(evals, "bf16 runs").verdict is Verdict.NOT_RUN
    run = build.run([build.result(THREE, profile="a100-80gb", **build.gpu(False))])
    assert evaluate(claim_by_id("t4-no-bf16"), run)[0].verdict is Verdict.NOT_RUN


def test_t4_bf16_real_gpu_reporting_native_bf16_refutes_and_registry_decides_when_emulated(
    build, monkeypatch
):
    row = _t4(build, "fp16", emulated=False)
    row.hardware.bf16_native = True
    evals = check_t4_bf16(build.run([row]))
    assert build.pick(evals, "hardware").verdict is Verdict.REFUTED
    fake = dataclasses.replace(PROFILES["t4"], capability=(8, 0))
    monkeypatch.setitem(PROFILES, "t4", fake)
    evals = check_t4_bf16(build.run([_t4(build, "fp16")]))
    assert build.pick(evals, "hardware").verdict is Verdict.REFUTED


def test_t4_bf16_real_gpu_edge_outcomes(build):
    rows = [_t4(build, "bf16", "timeout", emulated=False), _t4(build, "fp16", emulated=False)]
    assert build.pick(check_t4_bf16(build.run(rows)), "bf16 runs").verdict is Verdict.INCONCLUSIVE
    rows = [_t4(build, "bf16", emulated=False, tps=980.0), _t4(build, "fp16", emulated=False)]
    speed = build.pick(check_t4_bf16(build.run(rows)), "speed")
    assert speed.verdict is Verdict.INCONCLUSIVE and "0.98x" in speed.measured


def test_bf16_quality_both_nan_or_unmeasured_is_inconclusive(build):
    both = [build.stability("fp16", 1e-3, None), build.stability("bf16", 1e-3, None)]
    assert check_bf16_quality(build.run(both))[0].verdict is Verdict.INCONCLUSIVE
    # Four steps each: alike, but too short for the mean of the last 8 losses.
    rows = [build.stability("fp16", 1e-4, 2.9), build.stability("bf16", 1e-4, 2.5)]
    for row in rows:
        row.training.losses = row.training.losses[:4]
    (only,) = check_bf16_quality(build.run(rows))
    assert only.verdict is Verdict.INCONCLUSIVE and "fewer than 8 finite training losses" in only.why


def _paced(build, dtype: str, losses: list[float]):
    """A stability row at lr 1e-4 that trained `losses` (one per step), as an adaptive pacing
    might have run it: 8,192 tokens a step (b4 s2048)."""
    row = build.stability(dtype, 1e-4, 2.0, batch_size=4, seq_len=2048, tokens_per_step=8192)
    row.training.losses, row.training.final_loss = losses, losses[-1]
    return row


# The lesson's fp16/bf16 pair as a real H100 run paced it: the same batches, so the same losses
# step for step up to 0.1%, but bf16 measured 36 steps, fp16 32, and the batch of step 36 was a
# harder one. Read at different steps, the final losses differ by 2.7% ("refuted").
CURVE = [3.0 - 0.02 * i for i in range(32)]
HARD_BATCHES = [2.70, 2.68, 2.69, 2.6458]


def test_bf16_quality_rows_of_different_steps_are_not_compared_and_name_the_counts(build):
    rows = [_paced(build, "fp16", CURVE), _paced(build, "bf16", [x * 1.001 for x in CURVE] + HARD_BATCHES)]
    (only,) = check_bf16_quality(build.run(rows))
    assert only.verdict is Verdict.INCONCLUSIVE
    assert only.why == "bf16 trained 36 steps x 8,192 tokens, fp16 32 steps x 8,192 tokens: not compared"
    # The same rows cut to the same 32 steps compare: 0.1% apart, within the claim's 2%.
    rows[1].training.losses = rows[1].training.losses[:32]
    (alike,) = check_bf16_quality(build.run(rows))
    assert alike.verdict is Verdict.INCONCLUSIVE and "no difference beyond it" in alike.why
    assert "mean of the last 8 training losses, steps 25-32, same batches" in alike.why


def test_bf16_quality_one_batch_cannot_swing_the_verdict_eight_can(build):
    same = [3.0 - 0.02 * i for i in range(30)]
    spike = [*same[:-1], same[-1] * 1.12]  # fp16 alone 12% worse on the last batch
    (one,) = check_bf16_quality(build.run([_paced(build, "fp16", spike), _paced(build, "bf16", same)]))
    assert one.verdict is Verdict.INCONCLUSIVE  # the final loss alone would have said "holds"
    worse = same[:-8] + [x * 1.03 for x in same[-8:]]  # fp16 3% worse over the whole window
    (eight,) = check_bf16_quality(build.run([_paced(build, "fp16", worse), _paced(build, "bf16", same)]))
    assert eight.verdict is Verdict.HOLDS and "steps 23-30" in eight.measured


def test_bf16_quality_nan_at_a_step_the_other_row_never_reached_is_not_compared(build):
    fp16 = build.stability("fp16", 1e-3, None)
    fp16.training.losses = [3.0] * 12 + [float("nan")]
    fp16.training.first_nonfinite_step = 12
    short = build.stability("bf16", 1e-3, 2.7)  # finite, but only through step 10
    (only,) = check_bf16_quality(build.run([fp16, short]))
    assert only.verdict is Verdict.INCONCLUSIVE
    assert "bf16 trained 10 steps" in only.why and "fp16 13 steps" in only.why
    assert "(stopped at a non-finite loss)" in only.why
    short.training.losses = [3.0] + [2.7] * 29  # through step 30: it went past fp16's failure
    assert check_bf16_quality(build.run([fp16, short]))[0].verdict is Verdict.HOLDS
