"""reports.claims: the data model, the shared selectors, evaluate / evaluate_all / claims_frame,
and how verdicts become test outcomes."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from reports import claims as c
from reports.claims import CLAIMS, Claim, Evaluation, Verdict


def _claim(check, applies_to=None, known: str = "") -> Claim:
    return Claim(
        id="x",
        section="s",
        quote="q",
        measures="m",
        expected="e",
        tolerance=None,
        check=check,
        known_doc_error=known,
        applies_to=applies_to,
    )


def test_claim_ids_are_unique_and_fields_filled():
    ids = [claim.id for claim in CLAIMS]
    assert len(ids) == len(set(ids))
    for claim in CLAIMS:
        assert claim.quote and claim.section and claim.measures and claim.expected, claim.id
    # Known documentation errors come from one reviewed registry and name the run that showed them.
    from reports.known_errors import KNOWN_DOC_ERRORS

    for claim in CLAIMS:
        assert claim.known_doc_error == KNOWN_DOC_ERRORS.get(claim.id, "")
    for text in KNOWN_DOC_ERRORS.values():
        assert "reports/reference/" in text or "code table" in text or "QuantState" in text, text


def test_known_errors_are_refuted_by_the_committed_reference_runs():
    """Every registered error is refuted in at least one committed reference run: a registry
    entry whose evidence is gone must be retired, not kept."""
    from pathlib import Path

    from reports.claims import evaluate_all
    from reports.frame import load_run
    from reports.known_errors import KNOWN_DOC_ERRORS

    root = Path(__file__).resolve().parents[2] / "reports" / "reference"
    refuted = set()
    for run_dir in (root / "t4-default-on-h200", root / "h200-smoke"):
        for claim, evaluation in evaluate_all(load_run(run_dir)):
            if evaluation.verdict.value == "refuted":
                refuted.add(claim.id)
    assert set(KNOWN_DOC_ERRORS) <= refuted, set(KNOWN_DOC_ERRORS) - refuted


def test_every_brief_topic_has_a_claim():
    ids = {claim.id for claim in CLAIMS}
    assert {
        "mem7b-weights", "mem7b-training-total", "cut-4x", "nf4-quality", "fp4-uniform", "nf4-near-zero",
        "dq-overhead-bytes", "dq-factor-dtype", "dq-compute-overhead", "dtype-speed", "bf16-quality",
        "t4-no-bf16", "t4-3b-load", "t4-3b-headroom", "formula-examples", "overhead-adapters",
        "overhead-optimizer", "overhead-activations", "t4-budget-8b", "print-trainable-3b", "adapter-dtype",
        "qlora-slower", "tradeoff-memory-7b", "t4-compat", "a100-compat", "oom-ladder", "gc-activations",
        "nan-lr", "nan-bf16", "lora-99pct", "t4-fits-7b",
    } <= ids  # fmt: skip


def test_family_rows_matches_exact_tags_and_prefixes(build):
    run = build.run(
        [
            build.result(families="factorial,gc"),
            build.result(families="ladder:2", batch_size=2),
            build.result(families="ladder:10", batch_size=3),
            build.result(families="gcx", batch_size=4),
        ]
    )
    df = c.frame(run)
    assert list(c.family_rows(df, "gc")["batch_size"]) == [1]
    assert list(c.family_rows(df, "ladder:2")["batch_size"]) == [2]
    assert sorted(c.family_rows(df, "ladder:")["batch_size"]) == [2, 3]
    assert c.family_rows(df, "sweep").empty


def test_frame_adds_missing_columns_to_an_empty_run(build):
    df = c.frame(build.run([]))
    assert {"model", "quant_type", "families", "weight_bytes"} <= set(df.columns)
    assert c.family_rows(df, "sweep").empty


def test_select_distinguishes_absent_failed_and_unmeasured_rows(build):
    df = c.frame(build.run([build.result(status="crashed"), build.result(batch_size=2)]))
    assert c.select(df.iloc[0:0], "x").verdict is Verdict.NOT_RUN
    failed = c.select(df[df["status"] == "crashed"], "x")
    assert failed.verdict is Verdict.INCONCLUSIVE and "1 crashed" in failed.why
    unmeasured = c.select(df, "x", ("weight_bytes",))
    assert unmeasured.verdict is Verdict.INCONCLUSIVE and "weight_bytes" in unmeasured.why
    df.loc[df["batch_size"] == 2, "weight_bytes"] = 10
    rows = c.select(df, "x", ("weight_bytes",))
    assert isinstance(rows, pd.DataFrame) and list(rows["batch_size"]) == [2]


def test_pairs_match_rows_equal_on_every_other_point_field(build):
    df = c.frame(
        build.run(
            [
                build.result(double_quant=True),
                build.result(double_quant=False),
                build.result(double_quant=False, seq_len=1024),
            ]
        )
    )
    on, off = df[df["double_quant"]], df[~df["double_quant"]]
    found = c.pairs(on, off, vary=("double_quant",))
    assert [(int(a["seq_len"]), int(b["seq_len"])) for a, b in found] == [(512, 512)]
    assert c.pairs(on, off, vary=()) == []


def test_model_sizes_prefer_measured_counts_over_the_name(build):
    df = c.frame(
        build.run(
            [
                build.result("llama-3.1-8b", **build.params("llama-3.1-8b")),
                build.result("llama-2-13b", quant_type="none", status="oom"),
            ]
        )
    )
    sizes = c.model_sizes(df)
    assert sizes["llama-3.1-8b"] == (8_030_261_248, "measured")
    assert sizes["llama-2-13b"] == (13e9, "name")


def test_lesson_sized_keeps_3b_and_up_and_names_the_rest(build):
    df = c.frame(
        build.run(
            [
                build.result(**build.params("llama-3.2-3b")),
                build.result("smollm2-135m-instruct", **build.params("smollm2-135m-instruct")),
            ]
        )
    )
    kept, note = c.lesson_sized(df)
    assert list(kept["model"]) == ["llama-3.2-3b"]
    assert "smollm2-135m-instruct" in note


def test_code_stats_fold_signed_zero_and_measure_spacing(build):
    fp4 = c.code_stats(build.fp4_codes)
    assert fp4.levels == 15 and fp4.near_zero == 11 and fp4.gap_cv > 0.5
    uniform = c.code_stats([-1 + 2 * i / 15 for i in range(16)])
    assert uniform.levels == 16 and uniform.gap_cv < 1e-6 and uniform.near_zero == 8


def test_lora_param_count_hand_count_and_derived_configs():
    # 28 layers x 16 x ((3072+3072) + (3072+1024) x 2 + (3072+3072) + (3072+8192) x 2 + (8192+3072))
    assert c.lora_param_count("llama-3.2-3b", 16, c.LESSON_TARGET_MODULES) == 24_313_856
    assert c.lora_param_count("llama-3.2-1b", 16, ("q_proj", "k_proj", "v_proj", "o_proj")) == 3_407_872
    found = c.configs_giving(3_407_872)
    assert "r=16 on q+k+v+o of llama-3.2-1b" in found and "r=8 on q+v of llama-3.1-8b" in found
    assert not any("llama-3.2-3b" in f for f in found)


def test_nominal_size_maps_real_counts_to_the_lesson_examples():
    assert c.nominal_size(3_212_749_824) == 3
    assert c.nominal_size(6_738_415_616) == 7
    assert c.nominal_size(8_030_261_248) == 8
    assert c.nominal_size(13_015_864_320) == 13
    assert c.nominal_size(1_235_814_400) is None


def test_evaluate_applies_the_profile_predicate(build):
    seen: list[set[str]] = []

    def check(run):
        seen.append(set(run.results["profile"]))
        return [c.holds("m")]

    run = build.run([build.result(profile="t4"), build.result(profile="h100", batch_size=2)])
    assert c.evaluate(_claim(check, c.ON_T4), run)[0].verdict is Verdict.HOLDS
    assert seen == [{"t4"}]
    cpu = build.run([build.result(profile="cpu", device="cpu")])
    (only,) = c.evaluate(_claim(check, c.ON_GPU), cpu)
    assert only.verdict is Verdict.NOT_RUN and "cpu" in only.why and "GPU" in only.why
    assert c.evaluate(_claim(check), build.run([]))[0].verdict is Verdict.NOT_RUN


def test_evaluate_all_reports_a_broken_check_as_inconclusive(build, monkeypatch):
    def broken(run):
        raise KeyError("boom")

    monkeypatch.setattr(c, "CLAIMS", (_claim(broken), _claim(lambda run: [c.holds("fine")])))
    out = c.evaluate_all(build.run([build.result()]))
    assert [e.verdict for _, e in out] == [Verdict.INCONCLUSIVE, Verdict.HOLDS]
    assert "KeyError" in out[0][1].why


def test_claims_frame_has_one_row_per_evaluation(synthetic_run):
    frame = c.claims_frame(synthetic_run)
    assert list(frame.columns) == list(c.CLAIMS_FRAME_COLUMNS)
    assert len(frame) == len(c.evaluate_all(synthetic_run))
    assert set(frame["verdict"]) <= {v.value for v in Verdict}
    assert set(frame["id"]) == {claim.id for claim in CLAIMS}
    refuted = frame[frame["verdict"] == "refuted"]
    assert (refuted["corrected"] != "").all()
    assert (frame[frame["verdict"] != "refuted"]["corrected"] == "").all()


EV = {
    "holds": c.holds("1 GB", ("a",)),
    "refuted": c.refuted("9 GB", "it is 9 GB", ("b",), "cond"),
    "inconclusive": c.inconclusive("too noisy"),
    "not_run": c.not_run("no rows"),
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
    got_kind, message = c.claim_outcome(claim, [EV[v] for v in verdicts])
    assert got_kind == kind
    assert needle in message


def test_refuted_fail_message_names_measured_corrected_and_evidence():
    kind, message = c.claim_outcome(_claim(lambda run: []), [EV["refuted"]])
    assert kind == "fail"
    assert "measured 9 GB" in message and "corrected: it is 9 GB" in message and "evidence: b" in message


def test_evaluation_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        EV["holds"].verdict = Verdict.REFUTED  # type: ignore[misc]
    assert isinstance(EV["holds"], Evaluation)
