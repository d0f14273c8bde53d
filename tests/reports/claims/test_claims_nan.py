"""The NaN outcome classifier and table: synthetic rows for each outcome, and real rows trained
here on the CPU (bitsandbytes' real 4-bit kernels) that go non-finite or never update."""

from __future__ import annotations

import math

import pytest
import torch

from qlora_core.cases.case import Case
from qlora_core.engines import loop as loop_engine
from qlora_core.engines import run_training
from qlora_core.engines.data import synthetic_batches
from qlora_core.engines.pacing import plan_steps
from qlora_core.measurement.result import Result
from qlora_core.models import SHAPES, load
from qlora_core.models.resolve import resolve_model
from reports.claims.nan import DIVERGE_MARGIN, Outcome, classify, nan_rows, nan_table, outcome_text

TEXT = {"data": "text", "batch_size": 2, "seq_len": 64}


def row(build, losses, status="ok", **fields):
    result = build.result(
        "smollm2-135m-instruct", families="nan", status=status, losses=losses, **TEXT, **fields
    )
    return build.run([result]).results.iloc[0]


def test_each_outcome_from_its_numbers(build):
    nan = row(build, [3.0, float("nan")], status="nan", first_nonfinite_step=1, scaler_skipped_steps=1)
    found = classify(nan)
    assert (found.outcome, found.step) == (Outcome.NON_FINITE, 1)
    assert outcome_text(nan) == "non-finite at step 1 (1 of 2 steps skipped by the scaler)"
    skipped = row(build, [3.0, 3.0, 3.0], scaler_skipped_steps=3)
    assert classify(skipped).outcome is Outcome.NO_UPDATE
    partly = row(build, [3.0, 3.0, 2.5], scaler_skipped_steps=2)
    assert classify(partly).outcome is Outcome.FINE  # one step updated, and the loss fell
    # A spike that only partly comes back ends above the start: diverging.
    spike = row(build, [5.0, 4.2, 115.0, 57.0, 20.0, 12.0, 11.0, 11.5])
    assert classify(spike).outcome is Outcome.DIVERGING
    assert "loss 5 -> 11.5" in outcome_text(spike)
    edge = 3.0 * (1 + DIVERGE_MARGIN)
    assert classify(row(build, [3.0, 2.0, edge * 0.99, edge * 0.99])).outcome is Outcome.FINE
    assert classify(row(build, [3.0, 2.0, edge * 1.01, edge * 1.01])).outcome is Outcome.DIVERGING
    assert classify(row(build, [3.0, 2.0, float("inf")])).outcome is Outcome.DIVERGING


def test_rows_without_an_outcome(build):
    assert classify(row(build, [], status="oom")) is None
    assert outcome_text(row(build, [], status="oom")) == "oom (no outcome)"
    with pytest.raises(ValueError, match="recorded no losses"):
        classify(row(build, [], status="ok"))


def test_table_and_rows_cover_both_families_once(build):
    stab, high, twin = (
        build.stability("fp16", 1e-4, 2.5),
        build.stability("fp16", 1e-1, None),
        build.stability("bf16", 1e-1, 3.9),
    )
    stab.families, high.families, twin.families = "stability,nan", "nan", "nan"
    run = build.run([stab, high, twin])
    assert len(nan_rows(run.results)) == 3
    text = nan_table(run)
    assert "| loop | 0.1 | non-finite at step 1 | finite but diverging (loss 3 -> 3.9) |" in text
    assert "| loop | 0.0001 | fine (loss 3 -> 2.5) | not run |" in text
    assert "not run (no nan or stability rows" in nan_table(build.run([build.result()]))


# -- real rows: the tiny shape on bitsandbytes' CPU kernels, trained as the child trains ------------
def _train_row(build, case: Case):
    resolved = resolve_model(case.model, device="cpu")
    torch.manual_seed(case.seed)
    model = load.add_lora(load.prepare(load.load_model(case, resolved.path, "cpu"), case), case)
    plan = plan_steps(case, "cpu", adaptive=False)
    batches = synthetic_batches(
        SHAPES[case.model].vocab_size, case.batch_size, case.seq_len, plan.max_total_steps, 0
    )
    stats = run_training(model, case, batches, "cpu", None, plan)
    result = Result.for_case(case, "cpu", families="nan")
    result.status = "nan" if stats.diverged else "ok"
    result.set_fields(stats.result_fields())
    return build.run([result]).results.iloc[0]


REAL = Case("tiny", batch_size=2, seq_len=64, compute_dtype="fp16", warmup_steps=0, measured_steps=4)


@pytest.mark.slow
def test_a_real_fp16_run_at_a_huge_rate_is_non_finite_at_its_step(build):
    real = _train_row(build, REAL.replace(lr=1e5))
    found = classify(real)
    assert found.outcome is Outcome.NON_FINITE and found.step == int(real["first_nonfinite_step"])
    assert math.isnan(real["losses"][found.step])


@pytest.mark.slow
def test_a_real_fp16_run_whose_scaler_skips_every_step_is_no_update(build, monkeypatch):
    # From a loss scale of 2**100 the scaled gradients overflow at every one of four steps.
    monkeypatch.setattr(loop_engine, "GRAD_SCALER_INIT_SCALE", 2.0**100)
    real = _train_row(build, REAL.replace(lr=1e-3))
    assert real["status"] == "ok" and real["scaler_skipped_steps"] == len(real["losses"]) == 4
    assert classify(real).outcome is Outcome.NO_UPDATE
