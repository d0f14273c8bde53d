"""reports.claims.model: the claim and evaluation data model, evaluate / evaluate_claims, and how
verdicts become test outcomes."""

from __future__ import annotations

import dataclasses

import pytest

from reports.claims.model import (
    ON_GPU,
    ON_T4,
    Claim,
    Evaluation,
    Verdict,
    claim_outcome,
    claim_verdict,
    deciding_evaluation,
    evaluate,
    evaluate_claims,
    holds,
    inconclusive,
    not_run,
    refuted,
)


def _claim(check, applies_to=None, known: str = "") -> Claim:
    return Claim(
        id="x",
        section="s",
        quote="q",
        measures="m",
        expected="e",
        tolerance=None,
        check=check,
        judged_at="the lesson's point",
        known_doc_error=known,
        applies_to=applies_to,
    )


def test_evaluate_applies_the_profile_predicate(build):
    seen: list[set[str]] = []

    def check(run):
        seen.append(set(run.results["profile"]))
        return [holds("m")]

    run = build.run([build.result(profile="t4"), build.result(profile="h100", batch_size=2)])
    assert evaluate(_claim(check, ON_T4), run)[0].verdict is Verdict.HOLDS
    assert seen == [{"t4"}]
    cpu = build.run([build.result(profile="cpu", device="cpu")])
    (only,) = evaluate(_claim(check, ON_GPU), cpu)
    assert only.verdict is Verdict.NOT_RUN and "cpu" in only.why and "GPU" in only.why
    assert evaluate(_claim(check), build.run([]))[0].verdict is Verdict.NOT_RUN


def test_a_claim_about_one_card_reads_no_row_of_a_multi_card_profile(build):
    seen: list[set[str]] = []

    def check(run):
        seen.append(set(run.results["profile"]))
        return [holds("m")]

    pair = build.run([build.result(profile="t4x2"), build.result(profile="t4x2", batch_size=2)])
    (only,) = evaluate(_claim(check), pair)
    assert only.verdict is Verdict.NOT_RUN and "multi-card" in only.why and "--gpu t4" in only.why
    assert seen == []  # the check never saw the per-rank rows
    mixed = build.run([build.result(profile="t4"), build.result(profile="t4x2", batch_size=2)])
    assert evaluate(_claim(check), mixed)[0].verdict is Verdict.HOLDS and seen == [{"t4"}]
    multi = dataclasses.replace(_claim(check), multi_card=True)
    assert evaluate(multi, pair)[0].verdict is Verdict.HOLDS and seen[-1] == {"t4x2"}


def test_evaluate_claims_reports_a_broken_check_as_inconclusive(build):
    def broken(run):
        raise KeyError("boom")

    out = evaluate_claims((_claim(broken), _claim(lambda run: [holds("fine")])), build.run([build.result()]))
    assert [e.verdict for _, e in out] == [Verdict.INCONCLUSIVE, Verdict.HOLDS]
    assert "KeyError" in out[0][1].why


EV = {
    "holds": holds("1 GB", ("a",)),
    "refuted": refuted("9 GB", "it is 9 GB", ("b",), "cond"),
    "inconclusive": inconclusive("too noisy"),
    "not_run": not_run("no rows"),
}


@pytest.mark.parametrize(
    ("verdicts", "known", "kind", "needle"),
    [
        (("holds",), "", "pass", "1 of 1"),
        (("holds", "not_run"), "", "pass", "1 of 2"),
        (("refuted", "holds"), "", "fail", "it is 9 GB"),
        (("refuted",), "9 GB, not 1", "xfail", "known documentation error: 9 GB, not 1; measured 9 GB"),
        (("not_run",), "", "skip", "no rows"),
        (("inconclusive", "not_run"), "", "skip", "inconclusive: too noisy"),
        (("refuted", "inconclusive"), "known", "xfail", "known documentation error"),
    ],
)
def test_claim_outcome(verdicts, known, kind, needle):
    claim = dataclasses.replace(_claim(lambda run: []), known_doc_error=known)
    got_kind, message = claim_outcome(claim, [EV[v] for v in verdicts])
    assert got_kind == kind
    assert needle in message


def test_refuted_fail_message_names_measured_corrected_and_evidence():
    kind, message = claim_outcome(_claim(lambda run: []), [EV["refuted"]])
    assert kind == "fail"
    assert "measured 9 GB" in message and "corrected: it is 9 GB" in message and "evidence: b" in message


def test_no_check_raises_on_a_full_run(synthetic_run):
    """A check that raises (an invalid Evaluation included) is reported inconclusive with
    "the check raised": none may, on a run that exercises every verdict."""
    from reports.claims import evaluate_all

    results = evaluate_all(synthetic_run)
    assert {e.verdict for _, e in results} == set(Verdict)
    assert [c.id for c, e in results if e.why.startswith("the check raised")] == []


@pytest.mark.parametrize(
    ("verdict", "corrected"),
    [(Verdict.REFUTED, ""), (Verdict.HOLDS, "it is 9 GB"), (Verdict.NOT_RUN, "it is 9 GB")],
)
def test_an_evaluation_with_a_correction_on_the_wrong_verdict_is_refused(verdict, corrected):
    with pytest.raises(ValueError, match="corrected statement"):
        Evaluation(verdict, "9 GB", corrected, (), "cond", "why")


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        (("holds", "refuted"), "refuted"),  # wrong under one condition it covers: refuted, counted once
        (("inconclusive", "not_run", "refuted"), "refuted"),
        (("holds", "inconclusive", "not_run"), "holds"),  # the others could not decide
        (("not_run", "inconclusive"), "inconclusive"),
        (("not_run",), "not_run"),
        ((), "not_run"),
    ],
)
def test_one_verdict_per_claim(verdicts, expected):
    evaluations = [EV[v] for v in verdicts]
    assert claim_verdict(evaluations) is Verdict(expected)
    deciding = deciding_evaluation(evaluations)
    assert deciding is None if not verdicts else deciding is EV[expected]


def test_the_claims_test_ends_as_its_one_verdict_says():
    """claim_outcome and claim_verdict are one rule: refuted fails, holds passes, the rest skip."""
    kind_of = {"refuted": "fail", "holds": "pass", "inconclusive": "skip", "not_run": "skip"}
    claim = _claim(lambda run: [])
    for a in EV:
        for b in EV:
            evaluations = [EV[a], EV[b]]
            kind, _ = claim_outcome(claim, evaluations)
            assert kind == kind_of[claim_verdict(evaluations).value], (a, b)


def test_evaluate_names_the_points_of_the_evidence_unless_the_check_did(build):
    rows = [build.result(batch_size=4, seq_len=2048), build.result(batch_size=1, seq_len=512, status="oom")]
    run = build.run(rows)
    ids = tuple(run.results["case_id"])
    (auto,) = evaluate(_claim(lambda r: [holds("m", ids)]), run)
    assert auto.points == "llama-3.2-3b b1 s512 (oom), b4 s2048"  # by batch, then length
    (own,) = evaluate(_claim(lambda r: [holds("m", ids, points="at the check's own words")]), run)
    assert own.points == "at the check's own words"
    (none,) = evaluate(_claim(lambda r: [not_run("no rows")]), run)
    assert none.points == ""
