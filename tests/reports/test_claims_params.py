"""Parameter, speed and compatibility claims: print_trainable_parameters, the adapter dtype, the
99% reduction, QLoRA vs LoRA speed and quality, T4 and A100 compatibility."""

from __future__ import annotations

from reports import claims as c

THREE = "llama-3.2-3b"
EIGHT = "llama-3.1-8b"
SMALL = "smollm2-135m-instruct"


def claim(claim_id: str) -> c.Claim:
    return next(x for x in c.CLAIMS if x.id == claim_id)


# -- print_trainable_parameters -----------------------------------------------------------------
def test_print_trainable_refuted_with_the_config_the_lesson_numbers_fit(build):
    evals = c.check_print_trainable(build.run([build.result(THREE, **build.params(THREE))]))
    assert build.verdicts(evals) == ["refuted", "refuted", "refuted"]
    trainable = build.pick(evals, "trainable params")
    assert "24,313,856" in trainable.measured and "agrees" in trainable.why
    assert "r=16 on q+k+v+o of llama-3.2-1b" in trainable.corrected
    assert "3,210,341,376" in build.pick(evals, "all params").corrected
    assert "0.1060%" in build.pick(evals, "trainable%").why


def test_print_trainable_holds_on_the_lessons_numbers_and_flags_a_count_mismatch(build):
    row = build.result(THREE, total_params=3_213_749_248, trainable_params=3_407_872)
    evals = c.check_print_trainable(build.run([row]))
    assert build.verdicts(evals) == ["holds", "holds", "refuted"]  # 0.1060%, not the printed 0.1061%
    assert "DISAGREES" in build.pick(evals, "trainable params").why


def test_print_trainable_ignores_other_configs_and_fails_cleanly(build):
    other = build.result(THREE, lora_r=8, **build.params(THREE))
    assert c.check_print_trainable(build.run([other]))[0].verdict is c.Verdict.NOT_RUN
    crashed = build.result(THREE, status="crashed")
    assert c.check_print_trainable(build.run([crashed]))[0].verdict is c.Verdict.INCONCLUSIVE


# -- adapter dtype --------------------------------------------------------------------------------
def test_adapter_dtype_per_prepare_condition(build):
    rows = [
        build.result(THREE, **build.params(THREE, "float32")),
        build.result(THREE, prepare_kbit=False, **build.params(THREE, "bfloat16")),
    ]
    evals = c.check_adapter_dtype(build.run(rows))
    on = build.pick(evals, "prepare_kbit on")
    assert on.verdict is c.Verdict.REFUTED and "float32" in on.corrected
    assert build.pick(evals, "prepare_kbit off").verdict is c.Verdict.HOLDS
    assert c.check_adapter_dtype(build.run([build.result(THREE)]))[0].verdict is c.Verdict.INCONCLUSIVE
    assert c.check_adapter_dtype(build.run([]))[0].verdict is c.Verdict.NOT_RUN


# -- 99% fewer trainable parameters ---------------------------------------------------------------
def test_lora_99pct(build):
    rows = [
        build.result(THREE, **build.params(THREE)),
        build.result(EIGHT, lora_r=512, total_params=8_700_000_000, trainable_params=670_000_000),
        build.result(SMALL, **build.params(SMALL)),
    ]
    evals = c.check_lora_99(build.run(rows))
    assert [e.condition.split(",")[0] for e in evals] == [THREE, EIGHT]
    assert build.pick(evals, THREE).verdict is c.Verdict.HOLDS
    eight = build.pick(evals, EIGHT)
    assert eight.verdict is c.Verdict.REFUTED and "92.3%" in eight.corrected
    assert SMALL in eight.why  # the small model is named as not judged
    (small,) = c.check_lora_99(build.run([build.result(SMALL, **build.params(SMALL))]))
    assert small.verdict is c.Verdict.NOT_RUN
    (failed,) = c.check_lora_99(build.run([build.result(THREE, status="crashed", **build.params(THREE))]))
    assert failed.verdict is c.Verdict.INCONCLUSIVE


# -- QLoRA vs LoRA speed ----------------------------------------------------------------------------
def _speed(build, quant: str, tps: float, spread: float = 0.04, **fields):
    return build.result(
        THREE,
        quant_type=quant,
        compute_dtype="fp16",
        **build.gpu(),
        **build.training(tps, spread=spread),
        **fields,
    )


def test_qlora_slower_per_point_and_overall(build):
    rows = [
        _speed(build, "nf4", 850.0),
        _speed(build, "none", 1000.0),
        _speed(build, "nf4", 500.0, seq_len=2048),
        _speed(build, "none", 1000.0, seq_len=2048),
    ]
    evals = c.check_qlora_slower(build.run(rows))
    assert build.pick(evals, "s512").verdict is c.Verdict.HOLDS
    far = build.pick(evals, "s2048")
    assert far.verdict is c.Verdict.REFUTED and "+50%" in far.corrected
    overall = build.pick(evals, "overall")
    assert overall.verdict is c.Verdict.REFUTED and "+15.0% to +50.0%" in overall.measured


def test_qlora_slower_within_noise_of_the_range_is_inconclusive(build):
    # +1% slower: below the 5% bound by less than the noise (the 15% floor between processes).
    rows = [_speed(build, "nf4", 990.0, spread=0.30), _speed(build, "none", 1000.0, spread=0.30)]
    point, overall = c.check_qlora_slower(build.run(rows))
    assert point.verdict is c.Verdict.INCONCLUSIVE and "noise" in point.why
    assert overall.verdict is c.Verdict.INCONCLUSIVE
    # Beyond the range by more than the noise floor (15% between processes) is a refutation.
    far = [_speed(build, "nf4", 550.0, spread=0.02), _speed(build, "none", 1000.0, spread=0.02)]
    assert build.verdicts(c.check_qlora_slower(build.run(far))) == ["refuted", "refuted"]


def test_qlora_slower_names_the_prepare_condition_and_needs_a_reference(build):
    rows = [_speed(build, "nf4", 880.0, prepare_kbit=False), _speed(build, "none", 1000.0)]
    evals = c.check_qlora_slower(build.run(rows))
    assert "prepare_kbit off" in evals[0].condition
    assert build.verdicts(evals) == ["holds", "holds"]
    (none,) = c.check_qlora_slower(build.run([_speed(build, "nf4", 880.0)]))
    assert none.verdict is c.Verdict.NOT_RUN
    cpu = build.run([build.result(THREE, profile="cpu", device="cpu")])
    assert c.evaluate(claim("qlora-slower"), cpu)[0].verdict is c.Verdict.NOT_RUN


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
    (slight,) = c.check_tradeoff_quality(build.run([_ppl(build, "nf4", 17.2), _ppl(build, "none", 16.6)]))
    assert slight.verdict is c.Verdict.HOLDS and "+3.61%" in slight.measured
    (large,) = c.check_tradeoff_quality(build.run([_ppl(build, "nf4", 20.0), _ppl(build, "none", 16.0)]))
    assert large.verdict is c.Verdict.REFUTED and "not slightly" in large.corrected
    (better,) = c.check_tradeoff_quality(build.run([_ppl(build, "nf4", 15.0), _ppl(build, "none", 16.0)]))
    assert better.verdict is c.Verdict.REFUTED and "lower perplexity" in better.corrected
    (tie,) = c.check_tradeoff_quality(build.run([_ppl(build, "nf4", 16.05), _ppl(build, "none", 16.0)]))
    assert tie.verdict is c.Verdict.INCONCLUSIVE
    assert c.check_tradeoff_quality(build.run([_ppl(build, "nf4", 16.0)]))[0].verdict is c.Verdict.NOT_RUN
    # A 50% gap after 2,048 tokens is still the untrained quantization gap: no verdict.
    (short,) = c.check_tradeoff_quality(
        build.run([_ppl(build, "nf4", 24.0, 1), _ppl(build, "none", 16.0, 1)])
    )
    assert short.verdict is c.Verdict.INCONCLUSIVE and "too little" in short.why


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
    evals = c.check_t4_compat(build.run(rows))
    assert build.verdicts(evals) == ["holds", "holds"]
    assert build.pick(evals, "16-bit").measured == "llama-3.2-3b ok, llama-3.1-8b oom"


def test_t4_compat_refuted(build):
    rows = [
        _compat(build, THREE, "none", "ok"),
        _compat(build, EIGHT, "none", "ok"),
        _compat(build, THREE, "nf4", "ok"),
        _compat(build, EIGHT, "nf4", "oom"),
    ]
    evals = c.check_t4_compat(build.run(rows))
    assert "also fits llama-3.1-8b" in build.pick(evals, "16-bit").corrected
    assert "llama-3.1-8b" in build.pick(evals, "QLoRA").corrected
    assert build.verdicts(evals) == ["refuted", "refuted"]


def test_t4_compat_inconclusive_and_not_run(build):
    rows = [_compat(build, THREE, "none", "ok"), _compat(build, THREE, "nf4", "timeout")]
    evals = c.check_t4_compat(build.run(rows))
    assert build.verdicts(evals) == ["inconclusive", "inconclusive"]
    assert "no larger model" in build.pick(evals, "16-bit").why
    assert build.verdicts(c.check_t4_compat(build.run([build.result(THREE)]))) == ["not_run", "not_run"]


def test_a100_compat(build):
    rows = [
        _compat(build, THREE, "nf4", "ok", "a100-80gb"),
        _compat(build, EIGHT, "nf4", "ok", "a100-80gb"),
        _compat(build, EIGHT, "none", "ok", "a100-80gb"),
    ]
    evals = c.check_a100_compat(build.run(rows))
    assert build.verdicts(evals) == ["not_run", "inconclusive"]
    assert "70B" in evals[0].why and "includes ~70B" in evals[1].why
    rows.append(_compat(build, "llama-2-13b", "nf4", "oom", "a100-80gb"))
    evals = c.check_a100_compat(build.run(rows))
    assert evals[1].verdict is c.Verdict.REFUTED and "llama-2-13b" in evals[1].corrected
    big = [_compat(build, "llama-2-70b", "none", "oom", "a100-80gb")]
    assert c.check_a100_compat(build.run(big))[0].verdict is c.Verdict.REFUTED
    on_a100 = c.evaluate(claim("a100-compat"), build.run(rows[:1]))
    assert build.verdicts(on_a100) == ["not_run", "inconclusive"]
    t4 = build.run([_compat(build, THREE, "nf4", "ok")])
    assert c.evaluate(claim("a100-compat"), t4)[0].verdict is c.Verdict.NOT_RUN


def test_print_trainable_share_holds_when_it_prints_as_the_lesson(build):
    row = build.result(THREE, total_params=1_000_000, trainable_params=1_061)
    assert build.pick(c.check_print_trainable(build.run([row])), "trainable%").verdict is c.Verdict.HOLDS


def test_t4_compat_inconclusive_without_small_or_8b_class_models(build):
    rows = [_compat(build, EIGHT, "none", "oom"), _compat(build, THREE, "nf4", "ok")]
    evals = c.check_t4_compat(build.run(rows))
    assert "below 3.6B" in build.pick(evals, "16-bit").why
    assert "no 8B-class model" in build.pick(evals, "QLoRA").why


def test_a100_compat_holds_when_70b_ran(build):
    rows = [
        _compat(build, "llama-2-70b", "none", "ok", "a100-80gb"),
        _compat(build, "llama-2-70b", "nf4", "ok", "a100-80gb"),
    ]
    assert build.verdicts(c.check_a100_compat(build.run(rows))) == ["holds", "holds"]


def test_qlora_slower_inconclusive_when_no_row_ran(build):
    rows = [_speed(build, "nf4", 850.0), _speed(build, "none", 1000.0)]
    for row in rows:
        row.status = "timeout"
    (only,) = c.check_qlora_slower(build.run(rows))
    assert only.verdict is c.Verdict.INCONCLUSIVE and "2 timeout" in only.why
