"""reports.claims.numerics: losses compared like for like (same steps and tokens; the mean of the last
losses), on rows built through the real Case / Result schema."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from reports.claims.numerics import LAST_K, last_losses, mismatch, trained, trained_tokens

SMALL = "smollm2-135m-instruct"
NAN = float("nan")


def _row(build, losses: list[float], **fields) -> pd.Series:
    """One text row of the real model (b2 s64: 128 tokens a step) as the frame holds it."""
    result = build.result(SMALL, families="stability", data="text", batch_size=2, seq_len=64, **fields)
    result.training.losses = losses
    if any(not math.isfinite(x) for x in losses):
        result.status = "nan"
        result.training.first_nonfinite_step = next(i for i, x in enumerate(losses) if not math.isfinite(x))
    return build.run([result]).results.iloc[0]


def test_trained_counts_every_recorded_step_and_takes_tokens_from_the_row_or_its_case(build):
    recorded = _row(build, [3.0] * 30, tokens_per_step=2048)
    assert (trained(recorded).steps, trained(recorded).tokens_per_step) == (30, 2048)
    assert trained_tokens(recorded) == 61_440
    # A row without the recorded figure: batch x length x accumulation x ranks of its case.
    assert trained(_row(build, [3.0] * 4, grad_accum=2)).tokens_per_step == 2 * 64 * 2
    assert trained(_row(build, [])).steps == 0


def test_rows_of_equal_steps_and_tokens_are_alike(build):
    assert mismatch([("fp16", _row(build, [3.0] * 30)), ("bf16", _row(build, [2.9] * 30))]) is None


def test_different_steps_are_named_row_by_row(build):
    rows = [("bf16", _row(build, [3.0] * 36, tokens_per_step=8192))]
    rows.append(("fp16", _row(build, [3.0] * 32, tokens_per_step=8192)))
    named = "bf16 trained 36 steps x 8,192 tokens, fp16 32 steps x 8,192 tokens: not compared"
    assert mismatch(rows) == named


def test_different_tokens_per_step_are_a_mismatch_at_equal_steps(build):
    rows = [("a", _row(build, [3.0] * 10)), ("b", _row(build, [3.0] * 10, tokens_per_step=256))]
    assert mismatch(rows) == "a trained 10 steps x 128 tokens, b 10 steps x 256 tokens: not compared"


def test_a_nonfinite_row_is_compared_with_finite_rows_that_went_through_its_failing_step(build):
    failed = ("fp16", _row(build, [3.0] * 14 + [NAN]))  # non-finite at the 15th step
    assert mismatch([failed, ("bf16", _row(build, [3.0] * 30))]) is None
    assert mismatch([failed, ("bf16", _row(build, [3.0] * 15))]) is None
    short = mismatch([failed, ("bf16", _row(build, [3.0] * 10))])
    assert short == (
        "fp16 trained 15 steps x 128 tokens (stopped at a non-finite loss), bf16 10 steps x 128 tokens:"
        " not compared"
    )
    # Two rows that both failed are alike whatever their steps: each failure is its outcome.
    assert mismatch([failed, ("bf16", _row(build, [3.0, NAN]))]) is None


def test_three_rows_must_all_agree(build):
    rows = [(str(n), _row(build, [3.0] * n)) for n in (30, 30)]
    assert mismatch(rows) is None
    assert mismatch([*rows, ("31", _row(build, [3.0] * 31))]) is not None


def test_the_mean_of_the_last_losses_names_its_steps(build):
    losses = [3.0] * 22 + [2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.2, 3.4]
    window = last_losses(_row(build, losses))
    assert window is not None and LAST_K == 8
    assert window.mean == pytest.approx(2.7) and (window.first_step, window.last_step) == (23, 30)
    assert window.text() == "mean of the last 8 training losses, steps 23-30, same batches"
    assert last_losses(_row(build, losses), k=2).mean == pytest.approx(3.3)


def test_one_batch_moves_the_mean_by_an_eighth_of_its_swing(build):
    steady = [2.5] * 30
    swung = [*steady[:-1], 2.5 * 1.16]  # the last batch 16% higher in one row only
    a, b = last_losses(_row(build, steady)), last_losses(_row(build, swung))
    assert a is not None and b is not None
    assert (b.mean - a.mean) / a.mean == pytest.approx(0.02)


def test_no_mean_of_too_few_or_non_finite_losses(build):
    assert last_losses(_row(build, [3.0] * (LAST_K - 1))) is None
    assert last_losses(_row(build, [3.0] * 20 + [NAN])) is None
    assert last_losses(_row(build, [])) is None
    with pytest.raises(ValueError, match="k=0 must be a positive number of steps"):
        last_losses(_row(build, [3.0] * 10), k=0)
