"""Losses and perplexities compared like for like: the rule every claim that compares them uses.

**Same steps, same tokens** (`mismatch`). Rows compared by their training losses or by their
held-out perplexity after training must have trained the same number of optimizer steps over the
same tokens per step. The rows a claim pairs stand at the same point (equal on every case field
but the one compared), and a case on text trains a fixed plan (`Case.fixed_steps`), so rows of one
run agree; rows whose pacing added steps (adaptive measuring, a profiler window: runs made before
text cases had a fixed plan) may not, and then the comparison is inconclusive and names the counts:
"bf16 trained 36 steps x 8,192 tokens, fp16 32 steps x 8,192 tokens: not compared". A row that
stopped at a non-finite loss ran only up to it: it is compared with a finite row that trained at
least as far (that row went through the step where the other failed).

**A statistic one batch cannot swing** (`last_losses`): the mean of the last `LAST_K` training
losses. Every step trains on a new batch of text, and one batch's loss differs from the next by up
to ~10% at the end of a run (the real model, 30 steps, b4 s512 on an H200: 2.50 to 2.76 within the
last 8) and by ~20% over a run (`reports.nan`), far more than the 2% the bf16-quality claim resolves:
a "final loss" is mostly its batch. The two rows of a pair trained on the same batches in the same
order (same seed, data and shape; the first rule makes the steps the same), so the mean over the
same last K steps compares the rows on equal text, and a batch on which one row alone spikes moves
it by 1/K of that spike: with K = 8, one batch would have to differ by 16% between the rows to
move the mean by 2%. K = 8 fits the text families' 20 (CPU) and 30 (GPU) steps while staying in
the last part of the curve. Held-out perplexity (`ppl_after`, over up to 16 held-out windows) is
such a statistic already: the perplexity claims read it, under the first rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.rows import fval, is_nan_run

LAST_K = 8
"""Training losses averaged at the end of a run (see the module docstring for why 8)."""


@dataclass(frozen=True)
class Trained:
    """What a row trained: optimizer steps (every step whose loss it recorded, warm-up and profiled
    steps included) and tokens per step."""

    steps: int
    tokens_per_step: int
    nonfinite: bool
    """It stopped at a non-finite loss: its last step is the one that failed."""

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    def text(self) -> str:
        """ "36 steps x 8,192 tokens", with " (stopped at a non-finite loss)" where it did."""
        stopped = " (stopped at a non-finite loss)" if self.nonfinite else ""
        return f"{self.steps} steps x {self.tokens_per_step:,} tokens{stopped}"


def losses_of(row: pd.Series) -> list[float]:
    """The row's per-step training losses ([] when it recorded none)."""
    value = row.get("losses")
    if not isinstance(value, (list, tuple, np.ndarray)):  # absent, or NaN in a frame column
        return []
    return [float(x) for x in value]


def trained(row: pd.Series) -> Trained:
    """Steps and tokens per step of one row; tokens per step from the row (the child records it),
    else from its case fields (batch x length x accumulation x ranks)."""
    per_step = fval(row, "tokens_per_step")
    if per_step is None:
        per_step = 1.0
        for col in ("batch_size", "seq_len", "grad_accum", "num_gpus"):
            per_step *= fval(row, col) or 1.0
    return Trained(len(losses_of(row)), int(per_step), bool(is_nan_run(row)))


def trained_tokens(row: pd.Series) -> int:
    """Tokens the row trained on: tokens per optimizer step x steps run."""
    return trained(row).tokens


def mismatch(rows: Sequence[tuple[str, pd.Series]]) -> str | None:
    """None when the named rows trained alike; otherwise why they are not compared, naming each
    row's steps and tokens per step.

    Alike: equal tokens per step; every row that ran to its end trained the same number of steps;
    a row that stopped at a non-finite loss trained no more steps than any row that ran to its end.
    """
    seen = [(name, trained(row)) for name, row in rows]
    finished = {t.steps for _, t in seen if not t.nonfinite}
    failed_at = max((t.steps for _, t in seen if t.nonfinite), default=0)
    alike = (
        len({t.tokens_per_step for _, t in seen}) <= 1
        and len(finished) <= 1
        and all(failed_at <= steps for steps in finished)
    )
    if alike:
        return None
    (name, first), *others = seen
    return ", ".join([f"{name} trained {first.text()}", *(f"{n} {t.text()}" for n, t in others)]) + (
        ": not compared"
    )


@dataclass(frozen=True)
class LossWindow:
    """The mean of a row's last training losses and the steps (1-based) it covers."""

    mean: float
    first_step: int
    last_step: int

    @property
    def size(self) -> int:
        return self.last_step - self.first_step + 1

    def text(self) -> str:
        """ "mean of the last 8 training losses, steps 23-30, same batches" (the batches of a pair
        that `mismatch` passed are the same)."""
        return (
            f"mean of the last {self.size} training losses, steps {self.first_step}-{self.last_step},"
            " same batches"
        )


def last_losses(row: pd.Series, k: int = LAST_K) -> LossWindow | None:
    """The mean of the row's last `k` training losses; None when it recorded fewer than `k`
    losses or one of them is not finite (then the mean is no statistic of the row's end)."""
    if k < 1:
        raise ValueError(f"k={k} must be a positive number of steps")
    losses = losses_of(row)
    if len(losses) < k:
        return None
    window = losses[-k:]
    if not all(math.isfinite(x) for x in window):
        return None
    return LossWindow(sum(window) / k, len(losses) - k + 1, len(losses))
