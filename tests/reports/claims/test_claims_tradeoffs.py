"""reports.claims.tradeoffs: the claims of "QLoRA vs LoRA Trade-offs", on hand-made rows."""

from __future__ import annotations

from reports.claims import Verdict, claim_by_id, evaluate
from reports.claims.tradeoffs import (
    check_a100_compat,
    check_t4_compat,
    check_tradeoff_memory_7b,
    check_tradeoff_quality,
)

EIGHT = "llama-3.1-8b"
THREE = "llama-3.2-3b"
BASE_8B = 8_030_261_248


def test_tradeoff_memory_reuses_the_weights_check_for_16_and_4_bit(build):
    rows = [build.result(EIGHT, quant_type="none", **build.params(EIGHT), weight_bytes=2 * BASE_8B)]
    evals = check_tradeoff_memory_7b(build.run(rows))
    assert [e.condition.split(" ")[0] for e in evals] == ["FP16", "INT4"]
    assert build.verdicts(evals) == ["holds", "not_run"]


def test_tradeoff_memory_refuted_and_inconclusive(build):
    rows = [
        build.result(EIGHT, quant_type="none", status="oom"),
        build.result(EIGHT, **build.params(EIGHT), **build.weights(EIGHT)),
    ]
    evals = check_tradeoff_memory_7b(build.run(rows))
    assert build.verdicts(evals) == ["inconclusive", "inconclusive"]  # 16-bit oom; 4-bit not a 7B model


SMALL = "smollm2-135m-instruct"


# -- QLoRA vs LoRA quality --------------------------------------------------------------------------
def _ppl(build, quant: str, after: float, steps: int = 30):
    # batch 4 x seq 512 x 30 steps = 61,440 tokens: enough training to judge fine-tuned quality.
    return build.result(
        SMALL,
        families="quality",
        quant_type=quant,
        data="text",
        compute_dtype="fp16",
        ppl_after=after,
        batch_size=4,
        seq_len=512,
        tokens_per_step=2048,
        losses=[3.0] * steps,
    )


def test_tradeoff_quality(build):
    (slight,) = check_tradeoff_quality(build.run([_ppl(build, "nf4", 17.2), _ppl(build, "none", 16.6)]))
    assert slight.verdict is Verdict.HOLDS and "+3.61%" in slight.measured
    (large,) = check_tradeoff_quality(build.run([_ppl(build, "nf4", 20.0), _ppl(build, "none", 16.0)]))
    assert large.verdict is Verdict.REFUTED and "not slightly" in large.corrected
    (better,) = check_tradeoff_quality(build.run([_ppl(build, "nf4", 15.0), _ppl(build, "none", 16.0)]))
    assert better.verdict is Verdict.REFUTED and "lower perplexity" in better.corrected
    (tie,) = check_tradeoff_quality(build.run([_ppl(build, "nf4", 16.05), _ppl(build, "none", 16.0)]))
    assert tie.verdict is Verdict.INCONCLUSIVE
    assert check_tradeoff_quality(build.run([_ppl(build, "nf4", 16.0)]))[0].verdict is Verdict.NOT_RUN
    # A 50% gap after 2,048 tokens is still the untrained quantization gap: no verdict.
    (short,) = check_tradeoff_quality(build.run([_ppl(build, "nf4", 24.0, 1), _ppl(build, "none", 16.0, 1)]))
    assert short.verdict is Verdict.INCONCLUSIVE and "too little" in short.why


# -- compatibility ----------------------------------------------------------------------------------
def _compat(build, model: str, quant: str, status: str, profile: str = "t4"):
    params = build.params(model) if status == "ok" and model in build.shapes else {}
    return build.result(model, families="compat", quant_type=quant, status=status, profile=profile, **params)


def test_t4_compat_holds_when_lora_stops_at_3b_and_qlora_reaches_8b(build):
    rows = [
        _compat(build, THREE, "none", "ok"),
        _compat(build, EIGHT, "none", "oom"),
        _compat(build, THREE, "nf4", "ok"),
        _compat(build, EIGHT, "nf4", "ok"),
    ]
    evals = check_t4_compat(build.run(rows))
    assert build.verdicts(evals) == ["holds", "holds"]
    assert build.pick(evals, "16-bit").measured == "llama-3.2-3b ok, llama-3.1-8b oom"


def test_t4_compat_refuted(build):
    rows = [
        _compat(build, THREE, "none", "ok"),
        _compat(build, EIGHT, "none", "ok"),
        _compat(build, THREE, "nf4", "ok"),
        _compat(build, EIGHT, "nf4", "oom"),
    ]
    evals = check_t4_compat(build.run(rows))
    assert "also fits llama-3.1-8b" in build.pick(evals, "16-bit").corrected
    assert "llama-3.1-8b" in build.pick(evals, "QLoRA").corrected
    assert build.verdicts(evals) == ["refuted", "refuted"]


def test_t4_compat_inconclusive_and_not_run(build):
    rows = [_compat(build, THREE, "none", "ok"), _compat(build, THREE, "nf4", "timeout")]
    evals = check_t4_compat(build.run(rows))
    assert build.verdicts(evals) == ["inconclusive", "inconclusive"]
    assert "no larger model" in build.pick(evals, "16-bit").why
    assert build.verdicts(check_t4_compat(build.run([build.result(THREE)]))) == ["not_run", "not_run"]


def test_a100_compat(build):
    rows = [
        _compat(build, THREE, "nf4", "ok", "a100-80gb"),
        _compat(build, EIGHT, "nf4", "ok", "a100-80gb"),
        _compat(build, EIGHT, "none", "ok", "a100-80gb"),
    ]
    evals = check_a100_compat(build.run(rows))
    assert build.verdicts(evals) == ["not_run", "inconclusive"]
    assert "70B" in evals[0].why and "includes ~70B" in evals[1].why
    rows.append(_compat(build, "llama-2-13b", "nf4", "oom", "a100-80gb"))
    evals = check_a100_compat(build.run(rows))
    assert evals[1].verdict is Verdict.REFUTED and "llama-2-13b" in evals[1].corrected
    big = [_compat(build, "llama-2-70b", "none", "oom", "a100-80gb")]
    assert check_a100_compat(build.run(big))[0].verdict is Verdict.REFUTED
    on_a100 = evaluate(claim_by_id("a100-compat"), build.run(rows[:1]))
    assert build.verdicts(on_a100) == ["not_run", "inconclusive"]
    t4 = build.run([_compat(build, THREE, "nf4", "ok")])
    assert evaluate(claim_by_id("a100-compat"), t4)[0].verdict is Verdict.NOT_RUN


def test_t4_compat_inconclusive_without_small_or_8b_class_models(build):
    rows = [_compat(build, EIGHT, "none", "oom"), _compat(build, THREE, "nf4", "ok")]
    evals = check_t4_compat(build.run(rows))
    assert "below 3.6B" in build.pick(evals, "16-bit").why
    assert "no 8B-class model" in build.pick(evals, "QLoRA").why


def test_a100_compat_holds_when_70b_ran(build):
    rows = [
        _compat(build, "llama-2-70b", "none", "ok", "a100-80gb"),
        _compat(build, "llama-2-70b", "nf4", "ok", "a100-80gb"),
    ]
    assert build.verdicts(check_a100_compat(build.run(rows))) == ["holds", "holds"]


def test_a100_compat_judges_each_a100_profile_apart_and_labels_computed_rows(build):
    computed = 137_953_296_896
    rows = [
        _compat(build, "llama-2-70b", "nf4", "oom", "a100-40gb"),
        build.result(
            "llama-2-70b", quant_type="none", status="oom", families="compat", profile="a100-40gb",
            computed_weight_bytes=computed,
        ),
        _compat(build, "llama-2-70b", "nf4", "ok", "a100-80gb"),
        build.result(
            "llama-2-70b", quant_type="none", status="oom", families="compat", profile="a100-80gb",
            computed_weight_bytes=computed,
        ),
    ]  # fmt: skip
    evals = check_a100_compat(build.run(rows))
    assert [e.condition for e in evals] == [
        "16-bit LoRA: Up to 70B (a100-40gb)",
        "QLoRA: All sizes (a100-40gb)",
        "16-bit LoRA: Up to 70B (a100-80gb)",
        "QLoRA: All sizes (a100-80gb)",
    ]
    assert build.verdicts(evals) == ["refuted", "refuted", "refuted", "holds"]
    assert "computed, not measured: 16-bit weights 128.5 GiB" in evals[0].measured
    # A 16-bit 70B row that neither loaded nor was judged (e.g. no checkpoint) decides nothing.
    rows[3] = _compat(build, "llama-2-70b", "none", "missing_model", "a100-80gb")
    assert check_a100_compat(build.run(rows))[2].verdict is Verdict.INCONCLUSIVE


def test_tradeoff_quality_needs_rows_trained_alike(build):
    (paced,) = check_tradeoff_quality(build.run([_ppl(build, "nf4", 17.2, 33), _ppl(build, "none", 16.6)]))
    assert paced.verdict is Verdict.INCONCLUSIVE
    assert paced.why == "nf4+dq trained 33 steps x 2,048 tokens, 16-bit 30 steps x 2,048 tokens: not compared"
