"""The gate's rule per metric: one case that is ok on both sides, judged metric by metric (kernel
time, tokens/s with significance and "too noisy to gate", memory, loss) against `Thresholds`;
each comparison names its rule and its evidence.
See docs/gate.md#the-gate and docs/gate.md#what-else-fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from reports.gate.baseline import CASE_SIDE_BY_SIDE, MEMORY_METRICS, SPEED_METRICS
from reports.gate.thresholds import Thresholds
from reports.run.stats import mann_whitney_greater

PASS, FAIL, NOT_COMPARED = "pass", "fail", "n/a"
TOO_NOISY, NOISY_ALLOWED = "too noisy to gate", "too noisy to gate (allowed)"
FAILING_VERDICTS = frozenset({FAIL, TOO_NOISY})
NOISE_LIMIT_MULTIPLE = 2.0  # noise beyond twice the minimum effect cannot be gated on tokens/s
MWU_MIN_REPEATS = 3  # fewer on a side: the intervals decide (as asv does)
_REL_EPS = 1e-9  # a change exactly at its limit passes; this absorbs float rounding of that boundary
_MIB_IN_GIB = 1024


@dataclass
class MetricComparison:
    """One case x metric judgement."""

    case_id: str
    metric: str
    baseline: float | None
    current: float | None
    change_pct: float | None
    """(current - baseline) / |baseline| x 100; None where either is missing or baseline is 0."""
    limit: str
    """The allowed change as people read it, e.g. "-7.0% and significant (p < 0.05)"."""
    verdict: str
    """pass, fail, n/a (not compared), too noisy to gate (fails), too noisy to gate (allowed)."""
    why: str
    rule: str = ""
    """Which rule decided, e.g. "Mann-Whitney U (5 vs 5 repeats)" or "kernel time (host-bound)"."""
    evidence: str = ""
    """What the rule saw beside the change: a p-value, the two intervals, the noise."""

    @property
    def fails(self) -> bool:
        return self.verdict in FAILING_VERDICTS


def compare_metric(
    case_id: str,
    metric: str,
    base: dict[str, Any],
    run: dict[str, Any],
    thresholds: Thresholds,
    allow_noisy: bool = False,
) -> MetricComparison:
    """Judge one gated metric of a case that is ok on both sides."""
    b, c = base.get(metric), run.get(metric)
    unmeasured = _side_by_side_without(metric, base, run)
    if unmeasured is not None:
        return MetricComparison(case_id, metric, b, c, None, "", NOT_COMPARED, unmeasured, "side by side")
    if metric == "tokens_per_s":
        return _compare_speed(case_id, base, run, thresholds, allow_noisy)
    if metric == "kernel_ms_per_step":
        pct = thresholds.kernel_ms_rise_pct
        allowed, limit, rule = _pct_of(b, pct), f"+{pct:.1f}%", "kernel time (stable across processes)"
    elif metric in MEMORY_METRICS:
        allowed, limit = memory_limit(thresholds, b)
        rule = "memory"
    elif metric == "final_loss":
        allowed, limit = _pct_of(b, thresholds.final_loss_rise_pct), f"+{thresholds.final_loss_rise_pct:.1f}%"
        rule = "loss"
    else:
        raise ValueError(f"{metric!r} is not a gated metric")
    one_sided = _one_sided(case_id, metric, b, c, limit, rule)
    if one_sided is not None:
        return one_sided
    assert b is not None and c is not None
    change = _change_pct(b, c)
    if c - b > allowed + _REL_EPS * max(abs(b), 1.0):  # only a rise harms
        why = f"{_describe_harm(metric, b, c, change)}, beyond the limit {limit}"
        return MetricComparison(case_id, metric, b, c, change, limit, FAIL, why, rule)
    return MetricComparison(case_id, metric, b, c, change, limit, PASS, "within the limit", rule)


def _compare_speed(
    case_id: str, base: dict[str, Any], run: dict[str, Any], th: Thresholds, allow_noisy: bool
) -> MetricComparison:
    b, c = base.get("tokens_per_s"), run.get("tokens_per_s")
    minimum = th.tokens_per_s_drop_pct
    limit = f"-{minimum:.1f}% and significant"
    host_bound = [side for side, entry in (("baseline", base), ("this run", run)) if entry.get("host_bound")]
    kernel_measured = base.get("kernel_ms_per_step") is not None and run.get("kernel_ms_per_step") is not None
    if host_bound and kernel_measured:
        busy = run.get("gpu_busy") if run.get("gpu_busy") is not None else base.get("gpu_busy")
        busy_text = f", GPU busy {busy:.0%}" if busy is not None else ""
        return MetricComparison(
            case_id,
            "tokens_per_s",
            b,
            c,
            _change_pct(b, c) if b is not None and c is not None else None,
            "-",
            NOT_COMPARED,
            f"host-bound ({' and '.join(host_bound)}{busy_text}): its wall time is the host's;"
            " kernel_ms_per_step decides",
            "kernel time (host-bound)",
        )
    one_sided = _one_sided(case_id, "tokens_per_s", b, c, limit, "tokens/s")
    if one_sided is not None:
        return one_sided
    assert b is not None and c is not None
    change = _change_pct(b, c)
    noise_pct, noise_text = max(_noise(base, "baseline"), _noise(run, "this run"), key=lambda n: n[0])
    if noise_pct > NOISE_LIMIT_MULTIPLE * minimum:
        verdict = NOISY_ALLOWED if allow_noisy else TOO_NOISY
        why = (
            f"noise ±{noise_pct:.1f}% ({noise_text}) needs a limit over {NOISE_LIMIT_MULTIPLE:g} x"
            f" {minimum:g}%: repeat it more (--repeat N), make it device-bound, or gate kernel time"
        )
        return MetricComparison(
            case_id, "tokens_per_s", b, c, change, limit, verdict, why, TOO_NOISY, noise_text
        )
    rule, evidence, significant = _significance(base, run, b, c, th.speed_alpha)
    drop_pct = -change if change is not None else 0.0
    if drop_pct <= minimum + _REL_EPS:
        return MetricComparison(
            case_id, "tokens_per_s", b, c, change, limit, PASS, "within the minimum effect", rule, evidence
        )
    harm = _describe_harm("tokens_per_s", b, c, change)
    if significant:
        why = f"{harm}: beyond the minimum effect {minimum:g}% and significant"
        return MetricComparison(case_id, "tokens_per_s", b, c, change, limit, FAIL, why, rule, evidence)
    why = f"{harm}: beyond the minimum effect but not significant over the repeats"
    return MetricComparison(case_id, "tokens_per_s", b, c, change, limit, PASS, why, rule, evidence)


def _significance(
    base: dict[str, Any], run: dict[str, Any], b: float, c: float, alpha: float
) -> tuple[str, str, bool]:
    """(rule, evidence, significant) for a drop of tokens/s from `b` to `c`."""
    base_values = base.get("tokens_per_s_repeats") or [b]
    run_values = run.get("tokens_per_s_repeats") or [c]
    counts = f"{len(base_values)} vs {len(run_values)} repeats"
    n, m = len(base_values), len(run_values)
    # The smallest exact p-value is 1 / C(n + m, n): with 3 vs 3 it is 0.05, never below alpha.
    if min(n, m) >= MWU_MIN_REPEATS and 1 / math.comb(n + m, n) < alpha:
        test = mann_whitney_greater(base_values, run_values)
        return (
            f"Mann-Whitney U ({counts})",
            f"p = {test.p:.3g} ({test.method}), alpha {alpha:g}",
            test.p < alpha,
        )
    if n == 1 and m == 1:
        return "minimum effect alone (1 repeat each: no significance test)", "", True
    base_ci, run_ci = _interval(base, b), _interval(run, c)
    evidence = f"95% CI baseline {_span(base_ci)}, this run {_span(run_ci)}"
    return f"95% CI overlap ({counts})", evidence, run_ci[1] < base_ci[0]


def _interval(entry: dict[str, Any], value: float) -> tuple[float, float]:
    """A side's 95% interval of the median tokens/s; a single repeat is its one value."""
    low, high = entry.get("tokens_per_s_ci_low"), entry.get("tokens_per_s_ci_high")
    return (low, high) if low is not None and high is not None else (value, value)


def _noise(entry: dict[str, Any], side: str) -> tuple[float, str]:
    """A side's noise in % of its tokens/s, and where it comes from (0 when not measured)."""
    value = entry.get("tokens_per_s")
    low, high = entry.get("tokens_per_s_ci_low"), entry.get("tokens_per_s_ci_high")
    if value and low is not None and high is not None:
        source = f"{side}: 95% CI half-width over {entry.get('repeats')} repeats"
        return 100 * (high - low) / 2 / value, source
    spread = entry.get("step_ms_rel_iqr")
    if spread is not None:
        return 100 * spread, f"{side}: within-run relative IQR of step times, 1 repeat"
    return 0.0, f"{side}: noise not measured"


SIDE_BY_SIDE_UNMEASURED: tuple[str, ...] = SPEED_METRICS
"""What a side-by-side row does not measure (`qlora_core.process.side_by_side`)."""


def _side_by_side_without(metric: str, base: dict[str, Any], run: dict[str, Any]) -> str | None:
    """Why `metric` cannot be compared when a side lacks it because it ran side by side; None
    otherwise (compared, or judged one-sided as any other missing metric)."""
    if metric not in SIDE_BY_SIDE_UNMEASURED:
        return None
    sides = [
        f"{name} ran it side by side with {entry[CASE_SIDE_BY_SIDE] - 1} other case(s)"
        for name, entry in (("the baseline", base), ("this run", run))
        if entry.get(metric) is None and entry.get(CASE_SIDE_BY_SIDE)
    ]
    return f"not compared: {' and '.join(sides)}, which measures no speed" if sides else None


def _one_sided(
    case_id: str, metric: str, b: float | None, c: float | None, limit: str, rule: str
) -> MetricComparison | None:
    """The judgement when a side did not measure the metric; None when both did."""
    if b is None and c is None:
        return MetricComparison(
            case_id, metric, b, c, None, limit, NOT_COMPARED, "not measured on either side", rule
        )
    if c is None:
        why = f"was measured ({fmt(metric, b)}), now missing"
        return MetricComparison(case_id, metric, b, c, None, limit, FAIL, why, rule)
    if b is None:
        why = f"was not measured in the baseline, now is ({fmt(metric, c)}); regenerate the baseline"
        return MetricComparison(case_id, metric, b, c, None, limit, FAIL, why, rule)
    return None


def memory_limit(thresholds: Thresholds, base_gib: float | None) -> tuple[float, str]:
    """Allowed rise of a memory metric in GiB: max(pct of the baseline, the MiB floor)."""
    allowed = max(_pct_of(base_gib, thresholds.memory_rise_pct), thresholds.memory_rise_min_mib / _MIB_IN_GIB)
    text = (
        f"+{allowed * _MIB_IN_GIB:.0f} MiB "
        f"(max of {thresholds.memory_rise_pct:g}% and {thresholds.memory_rise_min_mib:g} MiB)"
    )
    return allowed, text


def _pct_of(base: float | None, pct: float) -> float:
    return abs(base) * pct / 100 if base is not None else 0.0


def _change_pct(base: float, current: float) -> float | None:
    return (current - base) / abs(base) * 100 if base != 0 else None


def _describe_harm(metric: str, base: float, current: float, change_pct: float | None) -> str:
    """E.g. "dropped 10.0% (1,000.0 -> 900.0 tok/s)" or "rose 512 MiB, 5.0% (10.000 -> 10.500 GiB)"."""
    direction = "dropped" if metric == "tokens_per_s" else "rose"
    size = f"{abs(change_pct):.1f}%" if change_pct is not None else "from 0"
    if metric in MEMORY_METRICS:
        size = f"{abs(current - base) * _MIB_IN_GIB:.0f} MiB, {size}"
    return f"{direction} {size} ({fmt(metric, base)} -> {fmt(metric, current)})"


def _span(interval: tuple[float, float]) -> str:
    return f"[{interval[0]:,.1f}, {interval[1]:,.1f}]"


def fmt(metric: str, value: float | None) -> str:
    """A metric value with its unit; "-" when not measured."""
    if value is None:
        return "-"
    if metric == "tokens_per_s":
        return f"{value:,.1f} tok/s"
    if metric == "kernel_ms_per_step":
        return f"{value:.2f} ms"
    if metric.endswith("_gib"):
        return f"{value:.3f} GiB"
    return f"{value:.4f}"
