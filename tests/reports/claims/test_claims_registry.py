"""reports.claims: CLAIMS assembled from the section modules in the lesson's order, the known
documentation errors applied once, and how claims apply to profiles."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from reports.claims import CLAIMS, SECTIONS, Verdict, claim_by_id, evaluate, evaluate_all, with_known_errors
from reports.claims.known_errors import KNOWN_DOC_ERRORS
from reports.claims.model import ON_A100, ON_T4, Claim
from reports.run.frame import load_run

REFERENCE = Path(__file__).resolve().parents[3] / "reports" / "reference"
# The lesson's order of the claims (one per checked statement), as claims.md lists them.
LESSON_ORDER = (
    "lora-99pct", "cut-4x", "mem7b-weights", "mem7b-training-total", "t4-fits-7b", "fp4-uniform",
    "nf4-near-zero", "nf4-quality", "dq-overhead-bytes", "dq-factor-dtype", "dq-compute-overhead",
    "dtype-speed", "bf16-quality", "t4-no-bf16", "t4-3b-load", "t4-3b-headroom", "formula-examples",
    "overhead-adapters", "overhead-optimizer", "overhead-activations", "t4-budget-8b", "print-trainable-3b",
    "adapter-dtype", "oom-ladder", "gc-activations", "qlora-slower", "nan-lr", "nan-bf16",
    "tradeoff-memory-7b", "tradeoff-quality", "t4-compat", "a100-compat",
)  # fmt: skip

THREE = "llama-3.2-3b"


@pytest.mark.parametrize("claim_id", ["oom-ladder", "gc-activations", "overhead-activations"])
def test_allocator_claims_do_not_apply_to_the_cpu_profile(build, claim_id):
    run = build.run([build.result(THREE, profile="cpu", device="cpu", families="sweep,gc,ladder:0")])
    (only,) = evaluate(claim_by_id(claim_id), run)
    assert only.verdict is Verdict.NOT_RUN


def test_claims_are_the_sections_claims_in_the_lessons_order():
    assert tuple(c.id for c in CLAIMS) == LESSON_ORDER
    assert [c.id for c in CLAIMS] == [c.id for section in SECTIONS for c in section.CLAIMS]
    for section in SECTIONS:
        assert all(c.section == section.SECTION for c in section.CLAIMS[:1]), section.__name__


def test_claim_fields_filled_and_known_errors_attached_once():
    for claim in CLAIMS:
        assert claim.quote and claim.section and claim.measures and claim.expected, claim.id
        assert claim.known_doc_error == KNOWN_DOC_ERRORS.get(claim.id, "")
    # Known documentation errors come from one reviewed registry and name the run that showed them.
    for text in KNOWN_DOC_ERRORS.values():
        assert "reports/reference/" in text or "code table" in text or "QuantState" in text, text
    # The section modules' own entries carry none: the registry applies them, once.
    assert all(not c.known_doc_error for section in SECTIONS for c in section.CLAIMS)


def test_a_known_error_naming_no_claim_is_refused():
    with pytest.raises(ValueError, match="do not exist: \\['no-such-claim'\\]"):
        with_known_errors(CLAIMS, {"no-such-claim": "wrong"})


def test_claim_by_id_names_the_known_ids():
    assert claim_by_id("cut-4x").quote == "you immediately cut memory by 4x"
    with pytest.raises(KeyError, match="lora-99pct"):
        claim_by_id("cut-5x")


def test_known_errors_are_refuted_by_the_committed_reference_runs():
    """Every registered error is refuted in at least one committed reference run: a registry
    entry whose evidence is gone must be retired, not kept."""
    refuted = set()
    for run_dir in (REFERENCE / "t4-default-on-h200", REFERENCE / "h200-smoke", REFERENCE / "70b/a100-80gb"):
        for claim, evaluation in evaluate_all(load_run(run_dir)):
            if evaluation.verdict is Verdict.REFUTED:
                refuted.add(claim.id)
    assert set(KNOWN_DOC_ERRORS) <= refuted, set(KNOWN_DOC_ERRORS) - refuted


def test_every_claim_states_the_lessons_settings_it_is_judged_at():
    """judged_at is the claim's context from the lesson: present on every claim, and a claim about
    one profile says which."""
    for claim in CLAIMS:
        assert len(claim.judged_at.strip()) > 20, claim.id
    for claim in CLAIMS:
        if claim.applies_to is ON_T4:
            assert "T4 only" in claim.judged_at, claim.id
        if claim.applies_to is ON_A100:
            assert "A100 profiles only" in claim.judged_at, claim.id
    judged = claim_by_id("overhead-activations").judged_at
    assert "b4 s2048" in judged and "uncapped" in judged


def test_a_claim_without_judged_at_cannot_be_built():
    with pytest.raises(ValueError, match="'lora-99pct' states no judged_at"):
        dataclasses.replace(CLAIMS[0], judged_at="  ")
    fields = {f.name: getattr(CLAIMS[0], f.name) for f in dataclasses.fields(Claim) if f.name != "judged_at"}
    with pytest.raises(TypeError, match="judged_at"):
        Claim(**fields)


def test_every_verdict_with_evidence_names_its_points(synthetic_run):
    for claim, evaluation in evaluate_all(synthetic_run):
        if evaluation.evidence:
            assert evaluation.points, (claim.id, evaluation.condition)
