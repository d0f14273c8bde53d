"""reports.run.stats against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

from reports.run.stats import (
    Interval,
    bootstrap_median_ci,
    cv,
    mann_whitney_greater,
    median,
    quantile,
    rel_iqr,
)


def test_median_quantile_rel_iqr_and_cv_by_hand() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([1.0, 2.0, 3.0, 10.0]) == 2.5
    assert median([]) is None
    # [1..5]: q25 at position 1 -> 2, q75 at position 3 -> 4; (4 - 2) / 3.
    assert rel_iqr([5.0, 1.0, 4.0, 2.0, 3.0]) == pytest.approx(2 / 3)
    # positions 0.3 * 3 = 0.9 between 10 and 20: 10 + 0.9 * 10.
    assert quantile([10.0, 20.0, 30.0, 40.0], 0.3) == pytest.approx(19.0)
    with pytest.raises(ValueError, match="within"):
        quantile([1.0], 1.5)
    # mean 2, sample standard deviation 1.
    assert cv([1.0, 2.0, 3.0]) == pytest.approx(0.5)
    # One process says nothing about the noise between processes: None, never 0.
    assert cv([5.0]) is None and rel_iqr([]) is None and cv([-1.0, 1.0]) is None


def test_bootstrap_ci_of_two_values_is_their_range_and_is_deterministic() -> None:
    # Resampling {a, b} twice gives a median of a (1/4), (a+b)/2 (1/2) or b (1/4): the 2.5th and
    # 97.5th percentiles are a and b.
    assert bootstrap_median_ci([100.0, 120.0]) == Interval(100.0, 120.0)
    # One outlier in nine: a resample needs 5 of its 9 draws to hit it (p ~ 0.0006) to move the
    # median there, so the interval stays among the other values.
    values = [1000.0, 1010.0, 990.0, 1500.0, 1005.0, 995.0, 1002.0, 1008.0, 998.0]
    first = bootstrap_median_ci(values)
    assert first == bootstrap_median_ci(list(values))  # seeded: the same interval every time
    assert first is not None and 990.0 <= first.low <= 1002.0 <= first.high <= 1010.0
    assert bootstrap_median_ci([7.0, 7.0, 7.0]) == Interval(7.0, 7.0)
    assert bootstrap_median_ci([7.0]) is None


def test_mann_whitney_exact_p_values_by_hand() -> None:
    # Every x above every y: U = 9, and 1 of the C(6, 3) = 20 orderings is that extreme.
    assert mann_whitney_greater([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]) == (9.0, 0.05, "exact")
    # The reverse: U = 0, and every ordering has U >= 0.
    assert mann_whitney_greater([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]).p == 1.0
    # x = {2, 4}, y = {1, 3}: U = 3; for n = m = 2 the counts of U = 0..4 are 1, 1, 2, 1, 1, so
    # P(U >= 3) = 2 / 6.
    result = mann_whitney_greater([2.0, 4.0], [1.0, 3.0])
    assert result.u == 3.0 and result.p == pytest.approx(1 / 3)


def test_mann_whitney_with_ties_uses_the_corrected_normal_approximation() -> None:
    # x = {2, 2, 3}, y = {1, 2, 2}: U = 2 + 2 + 3 = 7, mean 4.5; four 2s tie: sum(t^3 - t) = 60,
    # variance = 9/12 * (7 - 60 / 30) = 3.75; z = (7 - 4.5 - 0.5) / sqrt(3.75).
    z = 2 / math.sqrt(3.75)
    result = mann_whitney_greater([2.0, 2.0, 3.0], [1.0, 2.0, 2.0])
    assert result.method == "normal" and result.u == 7.0
    assert result.p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert result.p == pytest.approx(0.1509, abs=1e-4)
    assert mann_whitney_greater([1.0, 1.0], [1.0, 1.0]).p == 1.0  # all equal: no evidence
    with pytest.raises(ValueError, match="both sides"):
        mann_whitney_greater([], [1.0])


def test_bootstrap_ratio_ci_by_hand_and_its_limits() -> None:
    from reports.run.stats import Interval, bootstrap_ratio_ci

    # Medians of two resampled values of [8, 10] are 8, 9 or 10; b's is always 10.
    assert bootstrap_ratio_ci([8.0, 10.0], [10.0, 10.0]) == Interval(0.8, 1.0)
    three = bootstrap_ratio_ci([90.0, 91.0, 92.0], [100.0, 101.0, 99.0])
    assert three is not None and three.low <= 91 / 100 <= three.high
    assert three == bootstrap_ratio_ci([90.0, 91.0, 92.0], [100.0, 101.0, 99.0])  # seeded
    assert three.high < 1.0  # 9% slower over three processes each: the interval says so
    assert bootstrap_ratio_ci([1.0], [1.0, 2.0]) is None
