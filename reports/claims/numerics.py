"""Losses and perplexities compared like for like: the rule every claim that compares them uses.

`mismatch` makes a comparison of rows of different steps or tokens per step inconclusive, naming
the counts; `last_losses` is the mean of the last `LAST_K` training losses, a statistic one batch
cannot swing. See docs/matrix.md#numerics-compared-like-for-like.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.run.rows import fval, is_nan_run

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
