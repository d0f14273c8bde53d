"""check_outcome: which recorded outcomes a bench test xfails (findings) and which fail it; the
end screen's claim lines."""

from __future__ import annotations

import pytest

from qlora_core.cases.case import Case
from qlora_core.measurement.result import Result
from qlora_plugin.hooks import (
    _CLAIMS_KEY,
    _REPORTS_KEY,
    GATE_LINES_KEY,
    check_outcome,
    claims_lines,
    end_screen,
    names_line,
)

CASE = Case("tiny", compute_dtype="fp16", engine="sft")
# The row of the t4 profile's fp16 sft case, as the child words it (engines.hf, outcomes).
SFT_FP16_REASON = (
    "training: fp16's gradient scaler cannot unscale bf16 gradients (bf16 trainable parameters under"
    " fp16): NotImplementedError: TRL's SFTTrainer cast the trainable parameters float32 -> bfloat16 at"
    " init (trl/trainer/sft_trainer.py casts a quantized model's trainable parameters to bfloat16 whatever"
    " fp16/bf16 say); then \"_amp_foreach_non_finite_check_and_unscale_cuda\" not implemented for 'BFloat16'"
)


def row(status: str, reason: str = "") -> Result:
    result = Result.for_case(CASE, "t4")
    result.status, result.reason = status, reason
    return result


def test_ok_passes():
    check_outcome(row("ok"))


@pytest.mark.parametrize("status", ["oom", "nan", "unsupported"])
def test_a_finding_is_a_recorded_outcome_with_its_whole_reason(status: str):
    with pytest.raises(pytest.xfail.Exception) as outcome:
        check_outcome(row(status, SFT_FP16_REASON))
    assert str(outcome.value) == f"{status} (recorded outcome): {SFT_FP16_REASON}"


@pytest.mark.parametrize("status", ["crashed", "timeout", "cuda_error", "missing_model", "config_error"])
def test_what_the_suite_could_not_measure_fails(status: str):
    with pytest.raises(pytest.fail.Exception, match=f"^{status}: why"):
        check_outcome(row(status, "why"))


# -- the end screen -------------------------------------------------------------------------------
def test_names_line_counts_the_names_that_do_not_fit():
    names = [f"claim-{i}" for i in range(20)]
    line = names_line("    refuted: ", names, 60)
    assert len(line) <= 60 and line.startswith("    refuted: claim-0, claim-1")
    shown = line.split(": ", 1)[1].split(" (+")[0].split(", ")
    assert line.endswith(f"(+{20 - len(shown)} more)")
    assert names_line("    refuted: ", names[:2], 60) == "    refuted: claim-0, claim-1"
    assert names_line("x: ", ["a-very-long-claim-id"], 10) == "x: a-very-long-claim-id"  # one name is kept


def test_claims_lines_count_each_claim_once_and_name_the_refuted_and_inconclusive():
    from reports.claims import CLAIMS
    from reports.claims.model import holds, inconclusive, not_run, refuted
    from reports.render import ClaimSummary

    wrong = refuted("9 GB", "it is 9 GB")
    by_claim = [
        [holds("1"), wrong, holds("2")],  # held twice and refuted once: one refuted claim
        [holds("1"), holds("2")],
        [inconclusive("noisy"), not_run("no rows")],
        [not_run("no rows")],
    ]
    summaries = [ClaimSummary(claim, evaluations) for claim, evaluations in zip(CLAIMS, by_claim)]
    lines = claims_lines(summaries)
    assert (
        lines[0]
        == "  claims: 4, each counted once (8 evaluations): 1 hold, 1 refuted, 1 inconclusive, 1 not run"
    )
    known = "*" if CLAIMS[0].known_doc_error else ""
    assert lines[1] == f"    refuted: {CLAIMS[0].id}{known}"
    assert lines[2] == f"    inconclusive: {CLAIMS[2].id}"


def test_the_end_screen_puts_the_gate_and_the_report_paths_last(tmp_path):
    from types import SimpleNamespace

    from reports.claims import CLAIMS
    from reports.claims.model import holds
    from reports.render import ClaimSummary
    from reports.run.completeness import Incompleteness

    config = SimpleNamespace(stash=pytest.Stash())
    config.stash[_CLAIMS_KEY] = [ClaimSummary(CLAIMS[1], [holds("1")])]
    config.stash[_REPORTS_KEY] = {"claims": tmp_path / "claims.md", "tables": tmp_path / "tables.md"}
    gate = [
        "gate: PASS: no regressions (3 metric checks made)",
        "  speed not compared: baseline from a, run on b",
    ]
    config.stash[GATE_LINES_KEY] = gate
    missing = Incompleteness(2, 2, ("tiny-a",), (), 1, f"pytest bench --resume {tmp_path}")
    bench = SimpleNamespace(
        options=SimpleNamespace(baseline=tmp_path / "base.json"),
        summary_lines=lambda: ["qlora-bench: 1 cases on profile cpu: 1 ok", f"  run folder: {tmp_path}"],
        incompleteness=lambda: missing,
    )
    lines = end_screen(bench, config, width=80)
    assert lines[1] == f"{' qlora-bench ':=^80}" and len(lines[1]) == 80
    assert lines[2:] == [
        "qlora-bench: 1 cases on profile cpu: 1 ok",
        f"  run folder: {tmp_path}",
        f"  incomplete: 1 of 2 cases missing (tiny-a); complete it with: pytest bench --resume {tmp_path}",
        "  claims: 1, each counted once (1 evaluations): 1 hold, 0 refuted, 0 inconclusive, 0 not run",
        "  gate: PASS: no regressions (3 metric checks made)",
        "    speed not compared: baseline from a, run on b",
        f"  claims.md: {tmp_path / 'claims.md'}",
        f"  tables.md: {tmp_path / 'tables.md'}",
    ]
    bench.incompleteness = lambda: None  # complete: no incomplete line
    assert not any("incomplete" in line for line in end_screen(bench, config, width=80))
    del config.stash[GATE_LINES_KEY]  # gated, but the gate's test did not run: said so
    assert "  gate: not run (its test was deselected or did not run)" in end_screen(bench, config, width=80)
    bench.options.baseline = None  # not gated: no gate line
    assert not any(line.startswith("  gate:") for line in end_screen(bench, config, width=80))
